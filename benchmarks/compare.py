"""Every contender on W1, W2, W3 in one run: save, restore and initialization.

    python benchmarks/compare.py [--repeat 3] [--workloads W1,W2,W3] [--dir DIR] [--quick]
                                 [--no-cold] [--no-tf] [--no-write]

Save / restore (from bench_saver.py, see its docstring): varstore `vs.train.Saver`, raw
Orbax `StandardCheckpointer`, NumPy raw I/O (one file per variable, and one file), and
TF1 `tf.compat.v1.train.Saver` (graph mode) when tensorflow is importable; plus its
probes (one 4 KiB variable from 2 GiB, list_variables, async save, checksum cost, peak
RSS of a restore, reading TF's own checkpoint).

Initialization (bench_init.py's contenders): varstore's compiled initializer, Flax NNX
(eager module construction), ONE jitted `jax.random.normal` of the total size (the
limit), and TF1's `global_variables_initializer` (graph build + first run; later runs)
when tensorflow is importable. "first" = a fresh initializer's first call (trace +
compile + run; for TF1 graph construction + first run), "run" = a later call.

Contenders alternate within every repeat; tables show medians and ratios to varstore
from this one run (the machine is shared: compare ratios, not absolute times across
runs). Writes its results between `<!-- compare.py:begin -->` and
`<!-- compare.py:end -->` in benchmarks/RESULTS.md (other sections are kept) and a chart
to benchmarks/results.png (needs matplotlib; skipped with a message without it).
`--quick`: small sizes and 1 repeat, a smoke run of about a minute or two; it prints
only, unless `--write` is given.

Optional dependencies of the benchmarks: pip install tensorflow-cpu matplotlib
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_init  # noqa: E402  (first: sets XLA_FLAGS / JAX_PLATFORMS)
import bench_saver  # noqa: E402
import saver_report  # noqa: E402
from bench_init import _med, _table  # noqa: E402

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "RESULTS.md")
CHART = os.path.join(HERE, "results.png")
BEGIN, END = "<!-- compare.py:begin -->", "<!-- compare.py:end -->"

INIT_FULL = {**bench_init.FULL, "W3": bench_saver.FULL["W3"]}
INIT_QUICK = {**bench_init.QUICK, "W3": bench_saver.QUICK["W3"]}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- TF1 initialization contender (bench_init's first/run interface) -------------------------------
class Tf1Init:
    """`tf.compat.v1.global_variables_initializer()` over variables with
    `random_normal_initializer`, graph mode. first = graph + session + first run."""

    def __init__(self, tf, workload):
        self.tf, self.workload = tf, workload
        self.sess = None

    def first(self, seed):
        tf = self.tf
        n, shape = self.workload
        if self.sess is not None:
            self.sess.close()
            self.sess = None
            gc.collect()
        t0 = time.perf_counter()
        graph = tf.Graph()
        with graph.as_default():
            init = tf.compat.v1.random_normal_initializer(seed=seed)
            for i in range(n):
                tf.compat.v1.get_variable(f"layer{i}/w", shape, tf.float32, initializer=init)
            self.op = tf.compat.v1.global_variables_initializer()
        self.sess = tf.compat.v1.Session(graph=graph)
        self.sess.run(self.op)
        return time.perf_counter() - t0

    def run(self, seed):
        t0 = time.perf_counter()
        self.sess.run(self.op)
        return time.perf_counter() - t0

    def close(self):
        if self.sess is not None:
            self.sess.close()
            self.sess = None


class Prefaulted:
    """A bench_init contender whose calls are each preceded (untimed) by touching and
    freeing `factor` x the workload's size (see bench_saver.PREFAULT)."""

    def __init__(self, contender, nbytes, factor):
        self.contender, self.nbytes = contender, factor * nbytes

    def first(self, seed):
        bench_saver.prefault(self.nbytes)
        return self.contender.first(seed)

    def run(self, seed):
        bench_saver.prefault(self.nbytes)
        return self.contender.run(seed)


def _mem_available():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def run_init(workloads, repeat, quick, tf):
    """{workload: {contender: (first times, run times, compile times)}}."""
    bench_init.LATER_CALLS = 1  # one later call per repeat: W3 calls take seconds each
    sizes = INIT_QUICK if quick else INIT_FULL
    out = {}
    for w in workloads:
        workload = sizes[w]
        nbytes = bench_init._nbytes(workload)
        contenders = {"varstore": bench_init.Varstore(workload),
                      "nnx eager": bench_init.NnxEager(workload)}
        # One normal of the total size needs about 4x it at its peak (BASELINES.md).
        if _mem_available() > 5 * nbytes + (4 << 30):
            contenders["normal (limit)"] = bench_init.Normal(workload)
        else:
            log(f"  {w}: not enough free memory for one normal of {nbytes / 2**30:.1f} GiB; "
                "left out")
        if tf is not None:
            contenders["tf1 initializer"] = Tf1Init(tf, workload)
        # Peaks measured by bench_init: varstore 2.4x the data, one normal 4x, NNX 1.2x.
        factor = {"varstore": 2.5, "normal (limit)": 4.1}
        contenders = {n: Prefaulted(c, nbytes, factor.get(n, 1.3)) for n, c in contenders.items()}
        log(f"== init {w}: {workload[0]} x {workload[1]} ({nbytes / 2**20:.0f} MiB)")
        out[w] = bench_init._measure(contenders, repeat)
        if tf is not None:
            contenders["tf1 initializer"].contender.close()
        del contenders
        gc.collect()
    return out


# -- machine and software ------------------------------------------------------------------------------
def _sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment():
    model = _sh("lscpu | sed -n 's/^Model name: *//p'") or platform.processor()
    repo = os.path.dirname(HERE)
    head = _sh(f"git -C {repo} rev-parse --short HEAD")
    dirty = _sh(f"git -C {repo} status --porcelain -- varstore | wc -l")
    return {
        "nproc": _sh("nproc"),
        "kernel": platform.release(),
        "page_reporting": bench_saver.page_reporting(),
        "disk": " ".join(_sh("df --output=source,fstype / | tail -1").split()) or "unknown",
        "model": model,
        "mem": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "date": _sh("date -u"),
        "load": os.getloadavg(),
        "python": platform.python_version(),
        "versions": {d: _version(d) for d in ["jax", "jaxlib", "orbax-checkpoint", "flax",
                                              "numpy", "tensorstore", "xxhash",
                                              "tensorflow-cpu", "matplotlib"]},
        "git": f"{head} ({dirty} uncommitted changes under varstore/)" if head else "unknown",
    }


# -- report ---------------------------------------------------------------------------------------------
def _cell(t, ref):
    if t is None or t != t:
        return "-"
    return f"{t:.3f} ({t / ref:.2f}x)" if ref and ref == ref else f"{t:.3f}"


def overview(saver_results, init_results):
    """One table per operation: rows contenders, columns workloads, 'median (x varstore)'."""
    ws = [r["workload"] for r in saver_results if "times" in r]
    sums = {r["workload"]: saver_report.summary(r) for r in saver_results if "times" in r}
    cold = any(r.get("cold") for r in saver_results)
    parts = []
    ops = [("save s (durable; tf1 no fsync, as TF saves)", "save"),
           ("warm restore s (a second restore: page cache warm)", "warm")]
    if cold:
        ops.append(("cold restore s (page cache dropped)", "cold"))
    ops.append(("restore right after the save s (first read of the just-written files)",
                "after_save"))
    for title, key in ops:
        rows = []
        names = list(dict.fromkeys(n for w in ws for n in sums[w]))
        if key != "save":  # the tf1 variants differ only in their save
            names = [n for n in names if not n.startswith("tf1 +")]
        for n in names:
            rows.append([n] + [_cell(sums[w].get(n, {}).get(key), sums[w]["varstore"][key])
                               for w in ws])
        parts.append(f"**{title}**, median (ratio to varstore):\n\n"
                     + _table(["contender", *ws], rows))
    if init_results:
        iws = list(init_results)
        for title, idx in [("init first call s (trace + compile + run; tf1: graph + first run)", 0),
                           ("init later call s (run)", 1)]:
            names = list(dict.fromkeys(n for w in iws for n in init_results[w]))
            rows = []
            for n in names:
                cells = []
                for w in iws:
                    r = init_results[w]
                    cells.append(_cell(_med(r[n][idx]), _med(r["varstore"][idx]))
                                 if n in r else "-")
                rows.append([n, *cells])
            parts.append(f"**{title}**, median (ratio to varstore):\n\n"
                         + _table(["contender", *iws], rows))
    return "\n\n".join(parts)


def markdown(env, argv, saver_results, init_results, load_after, elapsed, repeat,
             prefaulted=True):
    v = env["versions"]
    lines = [
        BEGIN,
        "## Save, restore and initialization: every contender (`benchmarks/compare.py`)",
        "",
        "Written by `benchmarks/compare.py`; rerunning it replaces this section only.",
        "",
        f"- Command: `python {' '.join(argv)}` ({repeat} repeats, contenders alternated "
        f"in every repeat; {elapsed / 60:.1f} min).",
        f"- Machine: `nproc` = {env['nproc']}, `lscpu` model \"{env['model']}\", "
        f"{env['mem']} RAM, no GPU; scratch on the root file system ({env['disk']}); "
        f"kernel {env['kernel']}" + (
            f", free page reporting (`page_reporting.page_reporting_order={env['page_reporting']}` "
            "on the kernel command line; measured: idle "
            "free memory goes back to the host, and touching 2 GiB of it again took 3.9-5.0 s "
            "against 0.23 s for memory just freed), "
            "so every timed operation was preceded, untimed, by touching and freeing the "
            "memory it needs (bench_saver.PREFAULT)" if env["page_reporting"] and prefaulted
            else f", free page reporting {'on, NOT compensated (--no-prefault)' if env['page_reporting'] else 'off'}")
        + ".",
        f"- Date: {env['date']} (`date -u`); load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in env['load'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in load_after)} after (a shared machine: other "
        "engineers' tests run on the same cores).",
        f"- Software: Python {env['python']}, jax {v['jax']}, jaxlib {v['jaxlib']}, "
        f"orbax-checkpoint {v['orbax-checkpoint']}, flax {v['flax']}, numpy {v['numpy']}, "
        f"tensorstore {v['tensorstore']}, xxhash {v['xxhash']}, tensorflow-cpu "
        f"{v['tensorflow-cpu']}, matplotlib {v['matplotlib']}; varstore at git {env['git']}.",
        "- Workloads (float32, random): W1 = 20 x (4096, 1638) (512 MiB); W2 = 2,000 x (4096,)"
        " (31 MiB); W3 = 8 x (16384, 4096) (2 GiB; its checkpoints also hold one 4 KiB "
        "variable `small` for the partial-restore probe, not the init). Save = durable (fsync) "
        "for varstore, Orbax and NumPy; TF1 saves without fsync, so `tf1 + fsync` adds the "
        "fsync of its files and `tf1 + meta graph` what TF's default `save` adds. Restores, in "
        "this order after each save: right after the save (the first read of the just-written "
        "files), warm (a second restore), cold = after `echo 3 > /proc/sys/vm/drop_caches` (the "
        "guest's page cache only: on a virtual disk the host may still cache the file). "
        "NumPy restores are bare `readinto`s (no `device_put`): the I/O limit.",
        "",
        *(["**QUICK SMOKE RUN: reduced sizes (see the headings below), 1 repeat; not for "
            "reading.**", ""] if "--quick" in argv else []),
        "### Overview",
        "",
        overview(saver_results, init_results),
        "",
        "![time per workload per contender](results.png)",
        "",
        "### Targets (measured in this run)",
        "",
        saver_report.targets_table(saver_results),
        "",
        "### Details per workload",
        "",
    ]
    for r in saver_results:
        lines.append(saver_report.report(r).replace("### ", "#### "))
    lines.append(END)
    return "\n".join(lines)


def write_results(section):
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(RESULTS, "w") as f:
        f.write(text)


# -- chart ----------------------------------------------------------------------------------------------
def chart(saver_results, init_results, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        log("matplotlib is not installed: no chart (pip install matplotlib)")
        return False
    done = [r for r in saver_results if "times" in r]
    ws = [r["workload"] for r in done]
    size = {r["workload"]: r["nbytes"] for r in done}
    sums = {r["workload"]: saver_report.summary(r) for r in done}
    cold = any(r.get("cold") for r in done)
    panels = [("save (durable, except tf1 (no fsync))", "save"),
              ("restore right after the save", "after_save"),
              ("restore, warm (second read)", "warm")]
    if cold:
        panels.append(("restore, cold (page cache dropped)", "cold"))
    if init_results:
        panels += [("initialization, first call (compile + run)", "init"),
                   ("initialization, later call (run)", "init_run")]
    names = ["varstore", "orbax", "numpy files", "numpy 1 file", "tf1 (no fsync)", "tf1 + fsync",
             "nnx eager", "normal (limit)", "tf1 initializer"]
    colors = dict(zip(names, ["#d62728", "#1f77b4", "#7f7f7f", "#bcbd22", "#ff7f0e", "#8c564b",
                              "#2ca02c", "#17becf", "#e377c2"]))
    ncols = 3 if len(panels) > 4 else 2 if len(panels) > 2 else len(panels)
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols, 4.2 * nrows), squeeze=False)
    handles = {}
    for ax, (title, key) in zip(axes.flat, panels):
        if key.startswith("init"):
            xs = list(init_results)
            idx = 0 if key == "init" else 1
            series = {n: [_med(init_results[w][n][idx]) if n in init_results[w] else None
                          for w in xs] for n in names if any(n in init_results[w] for w in xs)}
        else:
            xs = ws
            series = {}
            for n in names:
                if key != "save" and n == "tf1 + fsync":
                    continue  # same restore as tf1
                vals = [sums[w].get(n, {}).get(key) for w in ws]
                if any(v is not None for v in vals):
                    series[n] = vals
        width = 0.8 / max(len(series), 1)
        for i, (n, vals) in enumerate(series.items()):
            pos = [j + (i - (len(series) - 1) / 2) * width for j in range(len(xs))]
            handles[n] = ax.bar([p for p, v in zip(pos, vals) if v], [v for v in vals if v],
                                width, color=colors.get(n), label=n)
        ax.set_yscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        lo, hi = ax.get_ylim()
        # Label the minor ticks only when the axis spans too few decades to have majors.
        ax.yaxis.set_minor_formatter(plain if hi / lo < 20 else FuncFormatter(lambda v, _: ""))
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels([f"{w}\n{size.get(w, 0) / 2**20:,.0f} MiB" for w in xs])
        ax.set_title(title, fontsize=11)
        ax.set_ylabel("seconds, median (log scale)")
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=9,
               frameon=False)
    fig.suptitle("varstore and its peers: median time per workload, lower is better",
                 fontsize=12)
    fig.tight_layout(rect=(0, 0.08, 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    bench_saver.add_arguments(parser)
    parser.set_defaults(workloads="W1,W2,W3")
    parser.add_argument("--no-init", action="store_true", help="leave out initialization")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not touch RESULTS.md or results.png")
    parser.add_argument("--json", metavar="PATH", help="also dump the raw samples as JSON")
    parser.add_argument("--write", action="store_true",
                        help="write RESULTS.md and results.png even with --quick")
    args = parser.parse_args()
    unknown = set(args.workloads.split(",")) - set(bench_saver.FULL)
    if unknown:
        parser.error(f"--workloads: unknown {sorted(unknown)}; use W1, W2, W3")
    if args.quick and args.repeat == 3:
        args.repeat = 1
    argv = ["benchmarks/compare.py", *sys.argv[1:]]
    start = time.perf_counter()
    env = environment()
    log(f"{env['date']}: load {env['load']}; repeat={args.repeat}")
    jax.block_until_ready(jax.jit(lambda k: jax.random.normal(k, (8,)))(jax.random.key(0)))

    saver_results = bench_saver.run(args)
    tf = None if args.no_tf else bench_saver.import_tf()
    bench_saver.PREFAULT[0] = args.prefault
    init_results = {} if args.no_init else run_init(
        args.workloads.split(","), args.repeat, args.quick, tf)
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - start

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "saver": saver_results, "init": init_results}, f, indent=1)
    section = markdown(env, argv, saver_results, init_results, load_after, elapsed, args.repeat,
                       args.prefault)
    print(section)
    if args.no_write or (args.quick and not args.write):
        log("not writing RESULTS.md / results.png" + (" (--quick; add --write)" if args.quick else ""))
        return
    write_results(section)
    log(f"wrote {RESULTS}")
    if chart(saver_results, init_results, CHART):
        log(f"wrote {CHART}")


if __name__ == "__main__":
    main()
