"""Save/restore benchmark: `vs.train.Saver` against raw Orbax, NumPy raw I/O and TF1's Saver.

Workloads (float32, random values; as in shared/BASELINES.md):
  W1  20 variables of (4096, 1638)           512 MiB
  W2  2,000 variables of (4096,)              31 MiB
  W3  8 variables of (16384, 4096) + "small"  2 GiB + one 4 KiB variable (for the
      partial-restore probe); run only when asked and when the disk has room.

Contenders (saver_contenders.py), alternated within every repeat (the order rotates),
medians over repeats:
  varstore         `vs.train.Saver(names).save(store, prefix)` (blocking: atomic, fsynced)
                   / `.restore(prefix)` onto the default device.
  varstore, checksums stubbed
                   the same with the library's hashing module (`_ckpt_io._xxhash`, a test
                   hook) replaced by a stub for its calls only: the end-to-end checksum cost
                   (`--no-hash-stub` leaves it out).
  orbax            raw `ocp.StandardCheckpointer()` save + `wait_until_finished()` (its
                   defaults: OCDBT, zarr3, zstd) / `restore(path, abstract target)`.
  numpy files      one raw file per variable, write + fsync (files and directory) / readinto
                   preallocated arrays (no device_put: the I/O limit).
  numpy 1 file     all bytes in one file, write + fsync / one readinto.
  tf1              `tf.compat.v1.train.Saver.save(sess, prefix, write_meta_graph=False)` in
                   graph mode / `.restore(sess, prefix)` into the existing variables. TF does
                   not fsync: the fsync of its files (and directory) afterwards is timed on its
                   own and reported as "tf1 + fsync" (the durable figure), and exporting the
                   meta graph (what TF's default `save` adds) as "tf1 + meta graph".
Restores: "after save" = right after the save; "warm" = a second restore (page cache
warm; the first read of just-written files is often much slower on this kind of VM);
"cold" = after `echo 3 > /proc/sys/vm/drop_caches` (root only; skipped with a message
otherwise). Bytes read from storage and kernel memory counters are recorded per restore.
Tables and targets: saver_report.py.

After the timings, each contender's last checkpoint is restored once more and three
variables are compared bit for bit with the saved values.

Probes (see `--help`): one 4 KiB variable out of the 2 GiB W3 checkpoint (varstore partial
restore and `load_variable`, Orbax `PyTreeRestore(partial_restore=True)`, TF
`tf.train.load_variable`); `list_variables` of the 2,000-variable W2 checkpoint; async save
(`blocking=False`) return time vs the blocking save (W1, W3); peak RSS of a restore in a
fresh subprocess (VmHWM minus VmRSS before it; W1 and W3); checksum cost (varstore has no
switch to turn its XXH3 checksums off, so XXH3-64 is timed over the same bytes, one thread,
in the same run, as a fraction of the save and restore); and reading TF's own W1
checkpoint with varstore against TF.

Before every timed operation, memory of the size it needs is touched and freed, untimed
(see PREFAULT below: this project's VMs hand idle free memory back to the host);
`--no-prefault` turns that off.

The module imports bench_init (for its helpers), which gives JAX 8 host CPU devices
for every contender; all arrays here live on device 0.

`--multiprocess` runs, instead of all the above, the 2-process case of saver_multiprocess.py
(see its docstring): varstore's save and restore in 2 JAX processes of 1 CPU device each
against 1 process of 2 devices, same global arrays sharded over the 2 devices, throughput
and ratio; it takes --workloads, --quick, --repeat, --dir and --no-prefault.

Run: python benchmarks/bench_saver.py [--workloads W1,W2[,W3]] [--repeat 3] [--dir DIR]
                                      [--quick] [--no-cold] [--no-tf] [--no-memory]
                                      [--no-prefault] [--no-hash-stub] [--all-probes]
                                      [--multiprocess]
Optional contenders: `pip install tensorflow-cpu` (TF1 rows; skipped when not importable).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_init  # noqa: E402  (sets XLA_FLAGS / JAX_PLATFORMS before JAX is imported)
from bench_init import _status_kib  # noqa: E402

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import xxhash  # noqa: E402

import varstore as vs  # noqa: E402
from varstore import _ckpt_io  # noqa: E402  (only to wait for pending writes)
from saver_contenders import (  # noqa: E402, F401  (FULL, QUICK, ...: used by compare.py)
    ASYNC_WORKLOADS, FULL, MEMORY_WORKLOADS, PREFAULT, QUICK, SMALL, NumpyFiles, NumpyOneFile,
    Orbax, Tf1, Varstore, VarstoreNoHash, can_drop_caches, clean, drop_caches, import_tf,
    clear_metadata_cache, log, make_arrays, nbytes_of, nest, page_reporting, prefault, workload_shapes)
from saver_report import report, targets_table  # noqa: E402
import saver_multiprocess  # noqa: E402

del bench_init  # imported for its environment set-up

# -- the alternating save/restore loop ----------------------------------------------------------
def _disk_read_bytes():
    # Bytes this process (all threads) made the kernel fetch from storage: 0 for a restore
    # served from the page cache. Shows whether a "warm" restore really was warm.
    with open("/proc/self/io") as f:
        return int(next(ln for ln in f if ln.startswith("read_bytes:")).split()[1])


_VM_KEYS = ("compact_stall", "pgscan_direct", "allocstall_normal", "allocstall_movable")


def _vmstat():
    # Machine-wide kernel counters: direct compaction (for transparent huge pages) and
    # direct reclaim, which a restore pays when it allocates while memory is full of
    # page cache. They explain warm restores slower than cold ones (dropping the page
    # cache also frees and defragments memory).
    out = {}
    with open("/proc/vmstat") as f:
        for line in f:
            k, v = line.split()
            if k in _VM_KEYS:
                out[k] = int(v)
    return out


def _restore_counted(c, d):
    before, vm = _disk_read_bytes(), _vmstat()
    seconds = c.restore(d)
    after = _vmstat()
    return seconds, _disk_read_bytes() - before, {k: after[k] - vm[k] for k in after}


def measure(contenders, scratch, repeat, cold, nbytes):
    """{name: {"save", "fsync", "meta", "after_save", "warm", "cold": [seconds...],
    "<restore>_disk": [bytes read from storage...], "<restore>_vm": [vmstat deltas...]}}.

    Every contender saves into a fresh directory, restores right after the save
    ("after_save"), restores again ("warm": page cache warm), then (when `cold`) once more
    after dropping the page cache. The last checkpoint of each is kept for the probes,
    except the NumPy ones (deleted to spare the disk). `nbytes`: the workload's size, for
    `prefault` (1.5x it before each operation: Orbax's restores peak at 1.4-1.9x)."""
    need = 1.5 * nbytes + (64 << 20)
    times = {c.name: {} for c in contenders}
    for r in range(repeat):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            d = os.path.join(scratch, c.name.replace(" ", "_"))
            clean(d)
            gc.collect()
            prefault(need)
            for part, s in c.save(d).items():
                times[c.name].setdefault(part, []).append(s)
            # The first restore after the save is kept apart from a second ("warm") one:
            # without prefaulting, it pays for the memory the save left idle (see PREFAULT).
            for key in ("after_save", "warm"):
                gc.collect()
                prefault(need)
                seconds, disk, vm = _restore_counted(c, d)
                times[c.name].setdefault(key, []).append(seconds)
                times[c.name].setdefault(f"{key}_disk", []).append(disk)
                times[c.name].setdefault(f"{key}_vm", []).append(vm)
            if cold:
                gc.collect()
                drop_caches()
                prefault(need)
                seconds, disk, vm = _restore_counted(c, d)
                times[c.name].setdefault("cold", []).append(seconds)
                times[c.name].setdefault("cold_disk", []).append(disk)
                times[c.name].setdefault("cold_vm", []).append(vm)
            if c.name.startswith("numpy") and r < repeat - 1:
                clean(d)
        log(f"    repeat {r + 1}/{repeat} done")
    return times


def verify(contenders, paths, arrays):
    """{contender: True when what it restores from its last checkpoint equals the saved
    values, bit for bit} (first, middle and last variable; untimed)."""
    names = list(arrays)
    names = list(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))
    out = {}
    for c in contenders:
        try:
            got = c.values(paths[c.name], names)
            out[c.name] = all(np.array_equal(got[n], np.asarray(arrays[n])) for n in names)
        except Exception as e:  # noqa: BLE001 - reported, not fatal to the benchmark
            log(f"  {c.name}: checking the restored values failed: {type(e).__name__}: {e}")
            out[c.name] = False
        if not out[c.name]:
            log(f"  WARNING: {c.name} restored values that differ from the saved ones")
    return out


# -- probes -------------------------------------------------------------------------------------
def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    return time.perf_counter() - t0


def _alternate(fns, n, before=None):
    """Runs the callables of {name: fn} n times each, alternating; {name: [seconds]}."""
    out = {k: [] for k in fns}
    names = list(fns)
    for r in range(n):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if before is not None:
                before()
            out[name].append(_timed(fns[name]))
    return out


def probe_one_variable(paths, name, shape, tf, cold, n=5):
    """One small variable out of a big checkpoint: {label: {"warm": [...], "cold": [...]}}."""
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tgt = nest({name: jax.ShapeDtypeStruct(shape, np.float32, sharding=dev)})
    fns = {}
    if "varstore" in paths:
        one = vs.train.Saver([name])
        p = Varstore.prefix(paths["varstore"])
        fns["varstore Saver([v]).restore"] = lambda: _cleared(lambda: one.restore(p).to_dict())
        fns["varstore load_variable"] = lambda: _cleared(lambda: vs.train.load_variable(p, name))
    if "orbax" in paths:
        op = Orbax.path(paths["orbax"])

        def orbax_partial():
            with ocp.PyTreeCheckpointer() as c:
                return c.restore(op, args=ocp.args.PyTreeRestore(
                    tgt, restore_args=ocp.checkpoint_utils.construct_restore_args(tgt),
                    partial_restore=True))

        fns["orbax partial_restore"] = orbax_partial
    if tf is not None and "tf1" in paths:
        tp = Tf1.prefix(paths["tf1"])
        fns["tf.train.load_variable"] = lambda: tf.train.load_variable(tp, name)
    for fn in fns.values():  # imports and first-use costs out of the figures
        fn()
    res = {k: {"warm": v} for k, v in _alternate(fns, n).items()}
    if cold:
        for k, v in _alternate(fns, 3, before=drop_caches).items():
            res[k]["cold"] = v
    return res


def _cleared(fn):
    clear_metadata_cache()
    return fn()


def probe_listing(paths, tf, n=5):
    fns = {}
    if "varstore" in paths:
        p = Varstore.prefix(paths["varstore"])
        fns["varstore list_variables"] = lambda: _cleared(lambda: vs.train.list_variables(p))
        fns["varstore list_variables (cached)"] = lambda: vs.train.list_variables(p)
    if "orbax" in paths:
        op = Orbax.path(paths["orbax"])
        fns["orbax StandardCheckpointer().metadata"] = lambda: ocp.StandardCheckpointer().metadata(op)
    if tf is not None and "tf1" in paths:
        tp = Tf1.prefix(paths["tf1"])
        fns["tf.train.list_variables"] = lambda: tf.train.list_variables(tp)
    for fn in fns.values():
        fn()
    return _alternate(fns, n)


def probe_async(arrays, scratch, repeat):
    """Saver.save(blocking=False) return time and the wait after it; and blocking saves,
    alternated. {"return": [...], "wait": [...], "blocking": [...]}."""
    store = vs.VarStore(arrays)
    saver = vs.train.Saver(list(arrays), max_to_keep=None)
    d = os.path.join(scratch, "async")
    need = 2.2 * sum(a.nbytes for a in arrays.values())  # host copy + page cache
    out = {"return": [], "wait": [], "blocking": []}
    for _ in range(repeat):
        clean(d)
        gc.collect()
        prefault(need)
        t0 = time.perf_counter()
        saver.save(store, os.path.join(d, "model.ckpt"), blocking=False)
        t1 = time.perf_counter()
        saver.wait_until_finished()
        t2 = time.perf_counter()
        out["return"].append(t1 - t0)
        out["wait"].append(t2 - t1)
        clean(d)
        gc.collect()
        prefault(need)
        t0 = time.perf_counter()
        saver.save(store, os.path.join(d, "model.ckpt"))
        out["blocking"].append(time.perf_counter() - t0)
    clean(d)
    return out


def probe_checksum(arrays, n=3):
    """Seconds for XXH3-64 over every byte of the workload: {"one thread": [...],
    "two threads": [...]} (xxhash releases the GIL; the machine has 2 cores)."""
    from concurrent.futures import ThreadPoolExecutor

    views = [memoryview(np.asarray(a).reshape(-1).view(np.uint8)) for a in arrays.values()]
    pieces = [v[o : o + (32 << 20)] for v in views for o in range(0, len(v), 32 << 20)]
    out = {"one thread": [], "two threads": []}
    with ThreadPoolExecutor(2) as pool:
        for _ in range(n):
            t0 = time.perf_counter()
            for v in views:
                xxhash.xxh3_64_intdigest(v)
            out["one thread"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            list(pool.map(xxhash.xxh3_64_intdigest, pieces))
            out["two threads"].append(time.perf_counter() - t0)
    return out


def probe_tf_checkpoint(tf, tf1, arrays, d, n):
    """varstore reading TF's own checkpoint vs TF reading it; {label: [seconds]}."""
    prefix = Tf1.prefix(d)
    saver = vs.train.Saver(list(arrays))
    first = next(iter(arrays))
    fns = {
        "varstore Saver.restore(tf prefix)": lambda: _cleared(lambda: saver.restore(prefix).to_dict()),
        "tf1 Saver.restore": lambda: tf1.restore(d),
        f"varstore load_variable (one of {len(arrays)})":
            lambda: _cleared(lambda: vs.train.load_variable(prefix, first)),
        f"tf.train.load_variable (one of {len(arrays)})": lambda: tf.train.load_variable(prefix, first),
    }
    for fn in fns.values():
        fn()
    nbytes = sum(a.nbytes for a in arrays.values())
    return _alternate(fns, n, before=lambda: prefault(1.2 * nbytes))


# -- peak memory of a restore, in a fresh subprocess -------------------------------------------
def _reset_peak():
    # Linux >= 4.0: writing 5 resets VmHWM to the current RSS.
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _child(kind, path, wname, quick):
    shapes = workload_shapes(wname, quick)
    jax.block_until_ready(jax.device_put(np.ones(4, np.float32)))
    if kind == "varstore":
        saver = vs.train.Saver(list(shapes))
        fn = lambda: saver.restore(Varstore.prefix(path)).to_dict()  # noqa: E731
    elif kind == "orbax":
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = nest({n: jax.ShapeDtypeStruct(s, np.float32, sharding=dev) for n, s in shapes.items()})
        ckptr = ocp.StandardCheckpointer()
        fn = lambda: ckptr.restore(Orbax.path(path), target)  # noqa: E731
    elif kind == "numpy files":
        out = {}

        def fn():
            for i, (n, s) in enumerate(shapes.items()):
                b = np.empty(s, np.float32)
                with open(os.path.join(path, str(i)), "rb", buffering=0) as f:
                    f.readinto(memoryview(b.reshape(-1).view(np.uint8)))
                out[n] = b
            return out
    else:  # tf1: variables allocated (zeros) before the baseline, restored into
        tf = import_tf()
        graph = tf.Graph()
        with graph.as_default():
            tvars = [tf.compat.v1.get_variable(n, s, tf.float32,
                                               initializer=tf.compat.v1.zeros_initializer())
                     for n, s in shapes.items()]
            saver = tf.compat.v1.train.Saver(tvars)
        sess = tf.compat.v1.Session(graph=graph)
        sess.run([v.initializer for v in tvars])

        def fn():
            with graph.as_default():
                saver.restore(sess, Tf1.prefix(path))
    gc.collect()
    prefault(1.5 * nbytes_of(shapes))
    _reset_peak()
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree.leaves(out))
    seconds = time.perf_counter() - t0
    print(json.dumps({"before_kib": before, "peak_kib": _status_kib("VmHWM"),
                      "after_kib": _status_kib("VmRSS"), "seconds": seconds}))


def peak_rss(kind, path, wname, quick):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, path, "--workloads", wname]
    cmd += [] if PREFAULT[0] else ["--no-prefault"]
    r = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
    if r.returncode != 0:
        log(f"  peak-RSS child {kind} failed ({r.returncode}): {r.stderr[-2000:]}")
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- one workload, everything -----------------------------------------------------------------------
def run_workload(wname, args, tf, scratch):
    shapes = workload_shapes(wname, args.quick)
    nbytes = nbytes_of(shapes)
    res = {"workload": wname, "nvars": len(shapes), "nbytes": nbytes, "repeat": args.repeat,
           "cold": args.cold}
    need = 7 * nbytes + (1 << 30)  # varstore x2, orbax, tf1, numpy x2, async + margin
    free = shutil.disk_usage(scratch).free
    if free < need:
        msg = (f"{wname} skipped: {scratch} has {free / 2**30:.1f} GiB free, "
               f"needs about {need / 2**30:.1f} GiB")
        log(msg)
        res["skipped"] = msg
        return res
    log(f"== {wname}: {len(shapes)} variables, {nbytes / 2**20:.1f} MiB")
    res["load"] = [os.getloadavg()]
    arrays = make_arrays(shapes)
    wdir = os.path.join(scratch, wname)
    os.makedirs(wdir)
    contenders = [Varstore(arrays), Orbax(arrays), NumpyFiles(arrays), NumpyOneFile(arrays)]
    if args.hash_stub and VarstoreNoHash.available():
        contenders.insert(1, VarstoreNoHash(arrays))
    elif args.hash_stub:
        log("  varstore._ckpt_io._xxhash is gone: no checksums-stubbed contender")
    tf1 = None
    if tf is not None:
        t0 = time.perf_counter()
        tf1 = Tf1(tf, arrays)
        contenders.append(tf1)
        log(f"  TF1 graph + session + loading values: {time.perf_counter() - t0:.1f} s")
    res["times"] = measure(contenders, wdir, args.repeat, args.cold, nbytes)
    paths = {c.name: os.path.join(wdir, c.name.replace(" ", "_")) for c in contenders}
    res["verified"] = verify(contenders, paths, arrays)

    log("  probes")
    res["checksum"] = probe_checksum(arrays)
    if wname == "W3" or args.all_probes:
        name, shape = (SMALL if SMALL[0] in shapes else next(iter(shapes.items())))
        res["one_variable"] = {"name": name, "nbytes": int(np.prod(shape)) * 4,
                               **probe_one_variable(paths, name, shape, tf, args.cold)}
    if wname == "W2" or args.all_probes:
        res["listing"] = probe_listing(paths, tf)
    if wname in ASYNC_WORKLOADS:
        res["async"] = probe_async(arrays, wdir, args.repeat)
    if wname == "W1" and tf1 is not None:
        res["tf_checkpoint"] = probe_tf_checkpoint(tf, tf1, arrays, paths["tf1"], args.repeat)
    if tf1 is not None:
        tf1.close()
    del contenders, tf1
    arrays.clear()
    gc.collect()
    if wname in MEMORY_WORKLOADS and not args.no_memory:
        res["memory"] = {}
        for kind in ["varstore", "orbax", "numpy files"] + (["tf1"] if tf is not None else []):
            m = peak_rss(kind, paths[kind], wname, args.quick)
            if m is not None:
                res["memory"][kind] = m
    clean(wdir)
    res["load"].append(os.getloadavg())
    return res


# -- report -------------------------------------------------------------------------------------------
def run(args):
    """Runs the workloads of `args`; returns the list of per-workload result dicts."""
    PREFAULT[0] = args.prefault
    if args.cold and not can_drop_caches():
        log("cannot write /proc/sys/vm/drop_caches (needs root): warm restores only")
        args.cold = False
    tf = None if args.no_tf else import_tf()
    parent = args.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="bench_saver_", dir=parent)
    results = []
    try:
        for w in args.workloads.split(","):
            results.append(run_workload(w, args, tf, scratch))
            gc.collect()
    finally:
        _ckpt_io.wait_all()
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def add_arguments(parser):
    parser.add_argument("--workloads", default="W1,W2", help="comma-separated: W1, W2, W3")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="scratch parent directory (default: temp dir)")
    parser.add_argument("--quick", action="store_true", help="small workloads, 1 repeat")
    parser.add_argument("--no-cold", dest="cold", action="store_false",
                        help="no page-cache drops: warm restores only")
    parser.add_argument("--no-tf", action="store_true", help="leave TensorFlow out")
    parser.add_argument("--no-memory", action="store_true", help="no peak-RSS subprocesses")
    parser.add_argument("--no-prefault", dest="prefault", action="store_false",
                        help="do not touch memory before each timed operation (see PREFAULT)")
    parser.add_argument("--no-hash-stub", dest="hash_stub", action="store_false",
                        help="leave out the 'varstore, checksums stubbed' contender")
    parser.add_argument("--all-probes", action="store_true",
                        help="run the one-variable and listing probes on every workload")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--multiprocess", action="store_true",
                        help="only the 2-process vs 1-process case (saver_multiprocess.py) on "
                             "--workloads; --quick, --repeat, --dir, --no-prefault apply")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        PREFAULT[0] = args.prefault
        return _child(args.child[0], args.child[1], args.workloads, args.quick)
    unknown = set(args.workloads.split(",")) - set(FULL)
    if unknown:
        parser.error(f"--workloads: unknown {sorted(unknown)}; use W1, W2, W3")
    if args.quick and args.repeat == 3:
        args.repeat = 1
    if args.multiprocess:
        saver_multiprocess.run(args)
        return
    print(f"jax {jax.__version__}, orbax-checkpoint {ocp.__version__}, repeat={args.repeat}, "
          f"cold={args.cold}")
    results = run(args)
    for r in results:
        print("\n" + report(r))
    print("### Targets\n")
    print(targets_table(results))


if __name__ == "__main__":
    main()
