"""Multi-process save/restore: `vs.train.Saver` in 2 JAX processes against 1, same data.

Both contenders hold the same global arrays -- a workload of bench_saver.py (W1 by
default: 20 float32 variables of (4096, 1638), 512 MiB), every variable sharded along
axis 0 over a mesh of 2 CPU devices, values from `vs.initialize_all_variables()` with
the same key -- and differ only in how many processes hold them:
  1 process     one plain process with 2 CPU devices (no distributed runtime).
  2 processes   `python -m varstore.launch -n 2 --devices-per-process 1`: each process
                holds one device's shard of every variable; they write one checkpoint
                together (process 0 commits it) and each reads back its own shards.

Timed, inside the workers (process start-up, JAX and distributed initialization, the
initialization of the values and a warm-up save/restore of a tiny variable are not):
  save          `Saver(names).save(store, prefix)`, blocking (atomic, fsynced).
  after-save    `.restore(prefix)` onto the same sharding, right after the save.
  warm          a second restore (page cache warm).
Each process syncs with the others (varstore's bounded barrier) right before each timed
operation and reports its seconds as a JSON line on stdout; a step's time is the slowest
process's. Before every timed operation each process touches and frees its share of
1.5x the data size, untimed (PREFAULT in saver_contenders.py; `--no-prefault` skips it).

One launch per contender and repeat, the order rotating between repeats; medians over
repeats; throughput = data size / seconds; the ratio is 2 processes / 1 process of the
throughputs (above 1: two processes are faster). Every timed restore is compared bit
for bit with the values saved (each process its own shards); afterwards the last
checkpoint of each contender is restored by the other (1 process reading the
2-process checkpoint, 2 processes reading the 1-process one), all variables compared.

Run: python benchmarks/saver_multiprocess.py [--workloads W1[,W2,W3]] [--quick]
                                             [--repeat 5] [--dir DIR] [--no-prefault]
     python benchmarks/bench_saver.py --multiprocess ...   (the same, with its options)
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402  (imported, not initialized: workers set their devices first)
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

import varstore as vs  # noqa: E402
from varstore import _ckpt_io  # noqa: E402  (its bounded barrier of all processes)
from varstore.distributed import ENV_COORDINATOR  # noqa: E402
from saver_contenders import (  # noqa: E402
    FULL, PREFAULT, clean, log, nbytes_of, prefault, workload_shapes)

MARK = "SAVER_MP "  # prefix of the workers' result lines
CONTENDERS = {"1 process": (1, 2), "2 processes": (2, 1)}  # name: (processes, devices each)
OPS = ("save", "after_save", "warm")
SHORT = {"save": "save", "after_save": "after-save", "warm": "warm"}
TIMEOUT = 1800  # seconds for one launch


# -- worker side (runs in the launched processes) ---------------------------------------------
def _declare(shapes):
    """The workload's variables, each sharded along axis 0 over all (global) devices."""
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("x",))
    with vs.device(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("x"))):
        for name, shape in shapes.items():
            vs.Variable(vs.random_uniform(shape), name=name)
        vs.Variable(vs.random_uniform((2, 8)), name="warmup")  # first-use costs, untimed


def _same(a, b):
    """Whether two global arrays hold equal bits in the shards this process has."""
    sa = sorted(a.addressable_shards, key=lambda s: s.device.id)
    sb = sorted(b.addressable_shards, key=lambda s: s.device.id)
    return len(sa) == len(sb) and all(
        x.index == y.index and np.array_equal(np.asarray(x.data), np.asarray(y.data))
        for x, y in zip(sa, sb))


def _emit(**fields):
    print(MARK + json.dumps({"process": jax.process_index(), **fields}), flush=True)


def worker(args):
    if ENV_COORDINATOR in os.environ:
        vs.distributed.initialize()
    PREFAULT[0] = args.prefault
    shapes = workload_shapes(args.workload, args.quick)
    need = 1.5 * nbytes_of(shapes) / jax.process_count()
    _declare(shapes)
    store = vs.initialize_all_variables()(jax.random.key(0))
    jax.block_until_ready(list(store.values()))
    names = list(shapes)
    saver = vs.train.Saver(names, max_to_keep=None)

    if args.verify:  # restore other checkpoints, compare every variable
        out = {}
        for prefix in args.verify:
            got = saver.restore(prefix)
            out[prefix] = all(_same(got[n], store[n]) for n in names)
            del got
        return _emit(verified=out)

    warm = vs.train.Saver(["warmup"])
    warm.save(store, os.path.join(args.worker, "warmup", "model.ckpt"))
    warm.restore(os.path.join(args.worker, "warmup", "model.ckpt"))
    prefix = os.path.join(args.worker, "main", "model.ckpt")
    seconds, ok = {}, True
    for op in OPS:
        gc.collect()
        prefault(need)
        _ckpt_io.sync_processes(f"benchmark: before {op}")
        t0 = time.perf_counter()
        if op == "save":
            saver.save(store, prefix)
        else:
            got = saver.restore(prefix)
            jax.block_until_ready(list(got.values()))
        seconds[op] = time.perf_counter() - t0
        if op != "save":
            ok = ok and all(_same(got[n], store[n]) for n in names)
            del got
    _emit(seconds=seconds, ok=ok)


# -- parent side: launches, alternation, report ------------------------------------------------
def _env():
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + ["--xla_force_host_platform_device_count=2"])
    env.pop(ENV_COORDINATOR, None)
    return env


def _launch(contender, wname, quick, prefaulting, worker_args):
    """Runs one contender's processes; [their result dicts], one per process."""
    nproc, devices = CONTENDERS[contender]
    script = [os.path.abspath(__file__), "--workload", wname, *worker_args]
    script += (["--quick"] if quick else []) + ([] if prefaulting else ["--no-prefault"])
    cmd = [sys.executable, *script]
    if nproc > 1:
        cmd = [sys.executable, "-m", "varstore.launch", "-n", str(nproc),
               "--devices-per-process", str(devices), "--timeout", str(TIMEOUT), *script]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT + 60)
    results = [json.loads(line.split(MARK, 1)[1]) for line in r.stdout.splitlines()
               if MARK in line]
    if r.returncode != 0 or len(results) != nproc:
        raise RuntimeError(f"{contender}: exit status {r.returncode}, {len(results)} of {nproc} "
                           f"results:\n{(r.stdout + r.stderr)[-4000:]}")
    return sorted(results, key=lambda x: x["process"])


def _layout(prefix):
    with open(os.path.join(prefix, "varstore_metadata.json")) as f:
        return json.load(f)["layout"]


def measure(wname, quick, repeat, prefaulting, scratch):
    """{"times": {contender: {op: [slowest process's seconds]}}, "per_process": {contender:
    {op: [[seconds of each process]]}}, "ok", "layout", "verified"}."""
    names = list(CONTENDERS)
    res = {"times": {c: {op: [] for op in OPS} for c in names},
           "per_process": {c: {op: [] for op in OPS} for c in names},
           "ok": True}
    dirs = {c: os.path.join(scratch, c.replace(" ", "_")) for c in names}
    for r in range(repeat):
        k = r % len(names)
        for c in names[k:] + names[:k]:
            clean(dirs[c])
            out = _launch(c, wname, quick, prefaulting, ["--worker", dirs[c]])
            for op in OPS:
                res["times"][c][op].append(max(x["seconds"][op] for x in out))
                res["per_process"][c][op].append([x["seconds"][op] for x in out])
            res["ok"] = res["ok"] and all(x["ok"] for x in out)
        log(f"    repeat {r + 1}/{repeat} done")
    prefixes = {c: os.path.join(dirs[c], "main", "model.ckpt") for c in names}
    res["layout"] = {c: _layout(p) for c, p in prefixes.items()}
    res["verified"] = {}
    for reader, written in [("1 process", "2 processes"), ("2 processes", "1 process")]:
        out = _launch(reader, wname, quick, prefaulting, ["--verify", prefixes[written]])
        res["verified"][f"{written} -> {reader}"] = all(
            x["verified"][prefixes[written]] for x in out)
    return res


def _meminfo_gib():
    with open("/proc/meminfo") as f:
        kib = int(next(ln for ln in f if ln.startswith("MemTotal:")).split()[1])
    return kib / 2**20


def report(res):
    from bench_init import _med, _table  # parent only: importing bench_init sets XLA_FLAGS

    mib = res["nbytes"] / 2**20
    med = {c: {op: _med(t[op]) for op in OPS} for c, t in res["times"].items()}
    header = (["contender", "layout"] + [f"{SHORT[op]} s" for op in OPS]
              + [f"{SHORT[op]} MiB/s" for op in OPS])
    body = [[c, res["layout"][c]] + [f"{m[op]:.3f}" for op in OPS]
            + [f"{mib / m[op]:.0f}" for op in OPS] for c, m in med.items()]
    one, two = med["1 process"], med["2 processes"]
    body.append(["2 processes / 1 process (throughput)", ""] + [""] * len(OPS)
                + [f"{one[op] / two[op]:.2f}x" for op in OPS])
    spread = [[c] + [f"{min(t[op]):.3f}-{max(t[op]):.3f}" for op in OPS]
              for c, t in res["times"].items()]
    per = res["per_process"]["2 processes"]
    per_body = [[f"process {i}" + (" (commits)" if i == 0 else "")]
                + [f"{_med([p[i] for p in per[op]]):.3f}" for op in OPS] for i in range(2)]
    lo, hi = res["load"]
    checks = "; ".join(f"{k}: {'equal' if v else '**DIFFERENT**'}" for k, v in res["verified"].items())
    lines = [
        f"### Multi-process {res['workload']}: {res['nvars']:,} variables, {mib:,.1f} MiB, "
        f"sharded along axis 0 over 2 CPU devices (medians of {res['repeat']})\n",
        f"Machine: {os.cpu_count()} CPUs, {_meminfo_gib():.1f} GiB RAM; {res['date']}; load "
        f"average (1 min) {lo:.2f} before, {hi:.2f} after; jax {jax.__version__}, "
        f"orbax-checkpoint {ocp.__version__}, varstore {vs.__version__}; prefault "
        f"{'on' if res['prefault'] else 'off'}.\n",
        _table(header, body), "",
        "Times are the slowest process's, measured inside the processes from a barrier to the "
        "end of the call (start-up and initialization excluded); after-save = the restore right "
        "after the save, warm = a second restore. Spread over the repeats:\n",
        _table(["contender"] + [f"{SHORT[op]} min-max s" for op in OPS], spread), "",
        "2 processes, each process's own time (medians):\n",
        _table(["process"] + [f"{SHORT[op]} s" for op in OPS], per_body), "",
        "- Every timed restore equals the saved values bit for bit (each process its own "
        f"shards): {'yes' if res['ok'] else '**NO**'}. Last checkpoints restored by the other "
        f"contender, every variable compared: {checks}.",
    ]
    return "\n".join(lines) + "\n"


def run_workload(wname, quick, repeat, prefaulting, parent):
    shapes = workload_shapes(wname, quick)
    nbytes = nbytes_of(shapes)
    res = {"workload": wname, "nvars": len(shapes), "nbytes": nbytes, "repeat": repeat,
           "prefault": prefaulting}
    need = 2 * nbytes + (256 << 20)  # the two contenders' last checkpoints + margin
    free = shutil.disk_usage(parent).free
    if free < need:
        res["skipped"] = (f"{wname} skipped: {parent} has {free / 2**30:.1f} GiB free, "
                          f"needs about {need / 2**30:.1f} GiB")
        log(res["skipped"])
        return res
    log(f"== {wname} multi-process: {len(shapes)} variables, {nbytes / 2**20:.1f} MiB")
    scratch = tempfile.mkdtemp(prefix="saver_mp_", dir=parent)
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()[0]
    try:
        res.update(measure(wname, quick, repeat, prefaulting, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res["load"] = (load0, os.getloadavg()[0])
    return res


def run(args):
    """Runs the case on each of `args.workloads`; prints and returns the results."""
    parent = args.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    results = []
    for w in args.workloads.split(","):
        res = run_workload(w, args.quick, args.repeat, args.prefault, parent)
        print("\n" + (res["skipped"] + "\n" if "skipped" in res else report(res)), flush=True)
        results.append(res)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W1", help="comma-separated: W1, W2, W3")
    parser.add_argument("--quick", action="store_true", help="the small version of the workloads")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch parent directory (default: temp dir)")
    parser.add_argument("--no-prefault", dest="prefault", action="store_false",
                        help="do not touch memory before each timed operation")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # worker: its checkpoint directory
    parser.add_argument("--verify", nargs="+", help=argparse.SUPPRESS)  # worker: prefixes to check
    parser.add_argument("--workload", help=argparse.SUPPRESS)  # worker: its workload
    args = parser.parse_args()
    if args.worker or args.verify:
        return worker(args)
    unknown = set(args.workloads.split(",")) - set(FULL)
    if unknown:
        parser.error(f"--workloads: unknown {sorted(unknown)}; use W1, W2, W3")
    run(args)


if __name__ == "__main__":
    main()
