"""Markdown tables and target verdicts for bench_saver.py's results (also used by compare.py).

A result is one workload's dict from `bench_saver.run_workload`: "times" holds, per
contender, lists of seconds for "save" (plus TF1's "fsync" and "meta"), "after_save" (the
restore right after the save), "warm" (a second restore) and "cold" (after dropping the
page cache), and the probes' figures.
"""

from bench_init import _med, _table

RESTORES = {"after_save": "restore right after save", "warm": "warm restore",
            "cold": "cold restore"}
SHORT = {"save": "save", "after_save": "after-save", "warm": "warm", "cold": "cold"}
LEGEND = ("after-save = the restore right after the save (first read of the just-written "
          "files); warm = a second restore (page cache warm); cold = after dropping the page "
          "cache.")


def _f(x, digits=3):
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def _x(a, b):
    return "-" if a is None or b is None or not b or a != a or b != b else f"{a / b:.2f}x"


def keys(res):
    """The measured operations of a result, in table order."""
    return ["save", "after_save", "warm"] + (["cold"] if res["cold"] else [])


def samples(res):
    """{row: {op: [seconds...]}}: the contenders' samples; TF1 gets three rows that differ
    only in their save (as TF saves, + the fsync of its files, + its default meta graph)."""
    out = {}
    for name, t in res["times"].items():
        base = {k: t.get(k, []) for k in keys(res) if k != "save"}
        if name == "tf1":
            out["tf1 (no fsync)"] = {**base, "save": t["save"]}
            out["tf1 + fsync"] = {**base, "save": [a + b for a, b in zip(t["save"], t["fsync"])]}
            out["tf1 + meta graph (TF default, no fsync)"] = {
                **base, "save": [a + b for a, b in zip(t["save"], t["meta"])]}
        else:
            out[name] = {**base, "save": t["save"]}
    return out


def summary(res):
    """{row: {op: median seconds}}."""
    return {n: {k: _med(v) for k, v in ops.items()} for n, ops in samples(res).items()}


def _range(xs):
    return f"{min(xs):.3f}-{max(xs):.3f}" if len(xs) > 1 else "-"


def main_table(res):
    rows, spread = summary(res), samples(res)
    ref = rows["varstore"]
    ks = keys(res)
    header = (["contender"] + [f"{SHORT[k]} s" for k in ks]
              + [f"{SHORT[k]} / varstore" for k in ks])
    body = [[n] + [_f(r[k]) for k in ks] + [_x(r[k], ref[k]) for k in ks] for n, r in rows.items()]
    header2 = ["contender"] + [f"{SHORT[k]} min-max s" for k in ks] + [
        f"{SHORT[k]} disk MiB" for k in ks if k != "save"]
    body2 = []
    for n in rows:
        t = res["times"]["tf1" if n.startswith("tf1") else n]
        body2.append([n] + [_range(spread[n][k]) for k in ks]
                     + [f"{max(t[f'{k}_disk']) / 2**20:.0f}" for k in ks if k != "save"])
    return (_table(header, body) + "\n\n" + LEGEND + " Spread over the repeats, and the most bytes any "
            "restore made the kernel read from storage (/proc/self/io read_bytes; 0 = served "
            "from the page cache):\n\n" + _table(header2, body2))


def vm_table(res):
    """Kernel memory work per restore (machine-wide counters, medians over repeats)."""
    ks = [k for k in keys(res) if k != "save"]
    body = []
    for name, t in res["times"].items():
        row = [name]
        for k in ks:
            vms = t.get(f"{k}_vm", [])
            row += [f"{_med([v.get('compact_stall', 0) for v in vms]):.0f}",
                    f"{_med([v.get('pgscan_direct', 0) for v in vms]) * 4 / 1024:.0f}"]
        body.append(row)
    header = ["contender"] + [h for k in ks for h in (f"{SHORT[k]} compaction stalls",
                                                       f"{SHORT[k]} reclaim MiB")]
    return ("Kernel memory work during each restore (/proc/vmstat deltas, machine-wide, "
            "medians): direct compaction stalls (transparent huge pages allocated while memory "
            "is fragmented) and pages scanned by direct reclaim (allocation while memory is "
            "full).\n\n" + _table(header, body))


STUB = "varstore, checksums stubbed"


def checksum_cost(res):
    """{op: (varstore - stubbed) / varstore} measured end to end, or {} without the stub."""
    rows = summary(res)
    if STUB not in rows:
        return {}
    v, n = rows["varstore"], rows[STUB]
    return {k: (v[k] - n[k]) / v[k] for k in keys(res) if v[k]}


def probes_text(res):
    lines = []
    if res.get("verified"):
        bad = [n for n, ok in res["verified"].items() if not ok]
        lines.append("- Restored values checked bit for bit against the saved ones (first, "
                     "middle and last variable, after the timings): "
                     + ("all equal." if not bad else f"**DIFFERENT for {', '.join(bad)}**."))
    cost = checksum_cost(res)
    if cost:
        lines.append(
            f"- Checksum cost end to end: `{STUB}` is varstore with its XXH3 module "
            "replaced by a stub returning 0 (through the library's `_ckpt_io._xxhash` hook, "
            "for this contender's calls only), alternated with the others; (varstore - "
            "stubbed) / varstore = " + ", ".join(f"{SHORT[k]} {c:+.1%}" for k, c in cost.items())
            + " (negative: within the noise).")
    v = summary(res)["varstore"]
    ck, ck2 = _med(res["checksum"]["one thread"]), _med(res["checksum"]["two threads"])
    parts = [f"{ck / v['save']:.1%} of varstore's save", f"{ck / v['warm']:.1%} of its warm restore"]
    if res["cold"]:
        parts.append(f"{ck / v['cold']:.1%} of its cold restore")
    lines.append(
        f"- Checksum CPU time (varstore has no switch to turn checksums off, so XXH3-64 is timed "
        f"over the same {res['nbytes'] / 2**20:.0f} MiB in this run): {ck:.3f} s on one thread "
        f"= {', '.join(parts)}; {ck2:.3f} s wall on two threads. varstore hashes each 1 MiB "
        "piece in its I/O threads while the piece is in the CPU cache, so this is the CPU time "
        "checksums add, not necessarily wall time.")
    lo, hi = res["load"][0][0], res["load"][-1][0]
    lines.append(f"- Load average (1 min) {lo:.1f} when this workload started, {hi:.1f} when "
                 "it ended.")
    if "async" in res:
        a = res["async"]
        ret, wait, blk = _med(a["return"]), _med(a["wait"]), _med(a["blocking"])
        lines.append(
            f"- Async save (`blocking=False`): returns in {ret:.3f} s = {ret / blk:.1%} of the "
            f"blocking save ({blk:.3f} s, alternated with it); the write then took {wait:.3f} s "
            f"more (return + wait = {(ret + wait) / blk:.2f}x blocking).")
    if "one_variable" in res:
        ov = res["one_variable"]
        readers = {k: x for k, x in ov.items() if isinstance(x, dict)}
        n = len(next(iter(readers.values()))["warm"])
        lines.append(
            f"\nOne variable ({ov['name']!r}, {ov['nbytes']:,} bytes) out of the "
            f"{res['nbytes'] / 2**30:.2f} GiB checkpoint (warm: median of {n}; cold: page cache "
            "dropped before each of 3; varstore's metadata cache cleared before each call):\n")
        hdr = ["reader", "warm s"] + (["cold s"] if res["cold"] else [])
        body = [[k, _f(_med(x["warm"]), 4)] + ([_f(_med(x.get("cold", [])), 4)] if res["cold"]
                                              else []) for k, x in readers.items()]
        lines.append(_table(hdr, body))
    if "listing" in res:
        lines.append(f"\nListing the {res['nvars']:,}-variable checkpoint (median of 5, warm):\n")
        lines.append(_table(["call", "s"], [[k, _f(_med(x), 4)] for k, x in res["listing"].items()]))
    if "tf_checkpoint" in res:
        meds = {k: _med(x) for k, x in res["tf_checkpoint"].items()}
        names = list(meds)  # pairs: (varstore reader, TF reader)
        lines.append(f"\nReading the {res['nbytes'] / 2**20:.0f} MiB checkpoint that TF wrote "
                     f"in this run (warm, median of {res['repeat']}):\n")
        body = [[k, _f(meds[k], 4), _x(meds[k], meds[names[i + 1]]) if i % 2 == 0 else "1.00x"]
                for i, k in enumerate(names)]
        lines.append(_table(["reader", "s", "varstore / TF"], body))
    if res.get("memory"):
        lines.append(f"\nPeak RSS of one restore, fresh subprocess (VmHWM reset, minus VmRSS "
                     f"just before; data {res['nbytes'] / 2**30:.2f} GiB):\n")
        body = []
        for kind, m in res["memory"].items():
            added = (m["peak_kib"] - m["before_kib"]) * 1024
            note = " (its variables, allocated before)" if kind == "tf1" else ""
            body.append([kind + note, f"{m['peak_kib'] / 2**20:.2f}", f"{added / 2**20:.0f}",
                         f"{added / res['nbytes']:.2f}x", f"{m['seconds']:.2f}"])
        lines.append(_table(["restore", "peak RSS GiB", "peak - before MiB", "/ data",
                             "restore s"], body))
    return "\n".join(lines)


def report(res):
    if "skipped" in res:
        return f"### {res['workload']}\n\n{res['skipped']}\n"
    head = (f"### {res['workload']}: {res['nvars']:,} variables, {res['nbytes'] / 2**20:,.1f} MiB"
            f" (medians of {res['repeat']})\n")
    return "\n".join([head, main_table(res), "", vm_table(res), "", probes_text(res), ""])


def _op(k):
    return "save" if k == "save" else RESTORES[k]


def targets(results):
    """[(target, measured, met?)] from one run. Restore targets are judged on the warm
    (second) and cold restores; the restore right after the save is shown in the tables."""
    out = []
    for r in results:
        if "times" not in r:
            continue
        w, rows = r["workload"], summary(r)
        v = rows["varstore"]
        ops = ["save", "warm"] + (["cold"] if r["cold"] else [])
        for k in ops:
            peers = [("tf1 (no fsync)", "TF1")]
            if k == "save":
                peers = [("tf1 (no fsync)", "TF1 (no fsync)"), ("tf1 + fsync", "TF1 + fsync")]
            for row, label in peers:
                if row in rows:
                    p = rows[row][k]
                    out.append((f"{w} {_op(k)} <= {label}",
                                f"{v[k]:.3f} vs {p:.3f} s ({v[k] / p:.2f}x)", v[k] <= p))
        for row in ["numpy files", "numpy 1 file"]:
            for k in ops:
                p = rows[row][k]
                out.append((f"{w} {_op(k)} <= 1.5x {row}",
                            f"{v[k] / p:.2f}x ({v[k]:.3f} vs {p:.3f} s)", v[k] <= 1.5 * p))
        for k in ops:
            o = rows["orbax"][k]
            limit, label = (1 / 3, ">= 3x faster than Orbax") if w == "W2" else (
                1.10, "<= 1.10x raw Orbax")
            out.append((f"{w} {_op(k)} {label}",
                        f"Orbax / varstore = {o / v[k]:.1f}x", v[k] <= limit * o))
        if "async" in r:
            frac = _med(r["async"]["return"]) / _med(r["async"]["blocking"])
            out.append((f"{w} async save return < 10% of blocking", f"{frac:.1%}", frac < 0.10))
        ck = _med(r["checksum"]["one thread"])
        cost = checksum_cost(r)
        for k in ops:
            frac = ck / v[k]
            if k in cost:  # judged end to end; the one-thread XXH3 share shown beside it
                out.append((f"{w} checksum < 10% of {_op(k)}",
                            f"{cost[k]:+.1%} end to end (XXH3 alone, one thread: {frac:.1%})",
                            cost[k] < 0.10))
            else:
                out.append((f"{w} checksum < 10% of {_op(k)}",
                            f"{frac:.1%} (XXH3 {ck:.3f} s, one thread)", frac < 0.10))
        if "one_variable" in r:
            ov = r["one_variable"]
            for k in [k for k in ov if isinstance(ov[k], dict) and k.startswith("varstore")]:
                t = _med(ov[k]["warm"])
                out.append((f"{w} one 4 KiB variable, warm < 0.02 s ({k})", f"{t:.4f} s",
                            t < 0.02))
        if "listing" in r:
            t = _med(r["listing"]["varstore list_variables"])
            out.append((f"{w} list_variables of {r['nvars']:,} < 0.1 s", f"{t:.4f} s", t < 0.1))
        if w == "W3" and "varstore" in r.get("memory", {}):
            m = r["memory"]["varstore"]
            x = (m["peak_kib"] - m["before_kib"]) * 1024 / r["nbytes"]
            out.append((f"{w} restore peak memory <= 1.2x data", f"{x:.2f}x", x <= 1.2))
    return out


def targets_table(results):
    rows = [[t, m, "met" if ok else "**missed**"] for t, m, ok in targets(results)]
    return _table(["target", "measured", "verdict"], rows)
