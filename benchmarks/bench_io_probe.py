"""Save/restore speed of varstore's checkpoint backend vs NumPy raw I/O and default Orbax.

    python benchmarks/bench_io_probe.py [--workloads W1,W2,W3] [--repeat 3] [--dir /tmp]
                                        [--no-orbax] [--no-memory] [--layouts auto,files,ocdbt]

Workloads (float32, as in shared/BASELINES.md):
  W1 = 20 variables, 512 MiB;  W2 = 2,000 variables of 4,096 floats;  W3 = 8 variables, 2 GiB
  (W3 gets one extra 4 KiB variable, "small", for the partial-restore probe).

Contenders, run alternately (one round = every contender once), medians reported:
  numpy-files   one raw file per variable: os.write + fsync each file and the directory /
                readinto preallocated arrays + jax.device_put
  numpy-1file   (W2 only) all variables in one file + fsync / one read + device_put
  orbax         default ocp.StandardCheckpointer: save + wait / restore onto one device
  vs-<layout>   varstore._ckpt_io.write(blocking=True) / read(..., sharding None)
  vs-<layout>-nohash  (--hash-cost) the same with checksums disabled

Probes: partial restore of one small variable, listing (read_entries vs Orbax metadata()),
checksum cost (XXH3 over all bytes), and peak RSS of a restore in a fresh subprocess
(VmHWM - VmRSS before the read).  All times are warm (the files are in the page cache).
TF1 figures from BASELINES.md are printed for reference only (another run, same machine kind).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TF1 = {"W1": (0.44, 0.23), "W2": (0.45, 0.05), "W3": (2.43, 0.77)}


def make_workload(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "W1":
        shapes = {f"layer{i:02d}/w": (2048, 3277) for i in range(20)}
    elif name == "W2":
        shapes = {f"block{i // 10:03d}/v{i % 10}": (4096,) for i in range(2000)}
    elif name == "W3":
        shapes = {f"big{i}/w": (16384, 4096) for i in range(8)}
        shapes["small"] = (1024,)
    else:
        raise SystemExit(f"unknown workload {name}")
    out = {}
    for n, s in shapes.items():
        a = np.empty(s, np.float32)
        rng.random(out=a.reshape(-1) if a.ndim else a, dtype=np.float32)
        out[n] = a
    return out


def fsync_dir(p):
    fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


# ---------------------------------------------------------------- contenders


def numpy_files_save(path, arrays):
    os.makedirs(path)
    for i, a in enumerate(arrays.values()):
        fd = os.open(os.path.join(path, str(i)), os.O_WRONLY | os.O_CREAT, 0o644)
        mv = memoryview(a.reshape(-1).view(np.uint8))
        pos = 0
        while pos < len(mv):
            pos += os.write(fd, mv[pos : pos + 0x7FFFF000])
        os.fsync(fd)
        os.close(fd)
    fsync_dir(path)
    fsync_dir(os.path.dirname(path))


def numpy_files_restore(path, arrays):
    import jax

    out = {}
    for i, (n, a) in enumerate(arrays.items()):
        b = np.empty(a.shape, a.dtype)
        with open(os.path.join(path, str(i)), "rb", buffering=0) as f:
            f.readinto(memoryview(b.reshape(-1).view(np.uint8)))
        out[n] = b
    res = jax.device_put(list(out.values()))
    jax.block_until_ready(res)
    return res


def numpy_1file_save(path, arrays):
    os.makedirs(path)
    with open(os.path.join(path, "all"), "wb") as f:
        for a in arrays.values():
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path)


def numpy_1file_restore(path, arrays):
    import jax

    total = sum(a.nbytes for a in arrays.values())
    buf = np.empty(total, np.uint8)
    with open(os.path.join(path, "all"), "rb", buffering=0) as f:
        f.readinto(memoryview(buf))
    out, off = [], 0
    for a in arrays.values():
        out.append(buf[off : off + a.nbytes].view(a.dtype).reshape(a.shape))
        off += a.nbytes
    res = jax.device_put(out)
    jax.block_until_ready(res)
    return res


def nest(flat):
    tree = {}
    for n, v in flat.items():
        keys = n.split("/")
        d = tree
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = v
    return tree


def orbax_save(path, arrays_dev):
    import orbax.checkpoint as ocp

    c = ocp.StandardCheckpointer()
    c.save(path, nest(arrays_dev))
    c.wait_until_finished()
    c.close()


def orbax_restore(path, arrays):
    import jax
    import orbax.checkpoint as ocp

    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = nest({n: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev) for n, a in arrays.items()})
    c = ocp.StandardCheckpointer()
    res = c.restore(path, target)
    jax.block_until_ready(res)
    c.close()
    return res


def vs_save(layout):
    def save(path, arrays_dev):
        from varstore import _ckpt_io

        _ckpt_io.write(path, arrays_dev, layout=layout).wait()

    return save


def no_hash(fn):
    """Runs fn with checksums replaced by a constant: what hashing costs, end to end."""

    def wrapped(*a):
        from varstore import _ckpt_io

        class NoHash:
            def __init__(self, algorithm):
                self.algorithm = algorithm

            def update(self, data):
                pass

            def intdigest(self):
                return 0

            def digest(self):
                return _ckpt_io._format_digest(self.algorithm, 0)

        real = _ckpt_io._digest_int, _ckpt_io._new_hasher
        _ckpt_io._digest_int = lambda algorithm, data: 0
        _ckpt_io._new_hasher = NoHash
        try:
            return fn(*a)
        finally:
            _ckpt_io._digest_int, _ckpt_io._new_hasher = real

    return wrapped


def vs_restore(path, arrays):
    import jax
    from varstore import _ckpt_io

    res = _ckpt_io.read(path, {n: (a.shape, a.dtype, None) for n, a in arrays.items()})
    jax.block_until_ready(res)
    return res


# ---------------------------------------------------------------- probes

MEM_CHILD = r"""
import os, sys, json, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, sys.argv[3])
import numpy as np, jax
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
kind, path = sys.argv[1], sys.argv[2]
shapes = json.loads(sys.argv[4])
jax.block_until_ready(jax.device_put(np.ones(4, np.float32)))
if kind == "orbax":
    import orbax.checkpoint as ocp
else:
    from varstore import _ckpt_io
before = status("VmRSS")
t0 = time.perf_counter()
if kind == "orbax":
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    tree = {}
    for n, s in shapes.items():
        d = tree
        ks = n.split("/")
        for k in ks[:-1]:
            d = d.setdefault(k, {})
        d[ks[-1]] = jax.ShapeDtypeStruct(tuple(s), np.float32, sharding=dev)
    res = ocp.StandardCheckpointer().restore(path, tree)
elif kind == "numpy":
    res = []
    for i, (n, s) in enumerate(shapes.items()):
        b = np.empty(s, np.float32)
        with open(os.path.join(path, str(i)), "rb", buffering=0) as f:
            f.readinto(memoryview(b.reshape(-1).view(np.uint8)))
        res.append(b)
    res = jax.device_put(res)
else:
    res = _ckpt_io.read(path, {n: (tuple(s), np.float32, None) for n, s in shapes.items()})
jax.block_until_ready(res)
dt = time.perf_counter() - t0
print(json.dumps({"before": before, "hwm": status("VmHWM"), "rss": status("VmRSS"), "t": dt}))
"""


def peak_rss(kind, path, arrays):
    shapes = {n: list(a.shape) for n, a in arrays.items()}
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    r = subprocess.run(
        [sys.executable, "-c", MEM_CHILD, kind, path, root, json.dumps(shapes)],
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    if r.returncode != 0:
        return None
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W1,W2,W3")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a new one under /tmp)")
    ap.add_argument("--layouts", default="auto,files,ocdbt")
    ap.add_argument("--no-orbax", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--hash-cost", action="store_true",
                    help="add a contender with checksums disabled (first layout)")
    args = ap.parse_args()

    import jax
    import xxhash

    from varstore import _ckpt_io

    scratch = tempfile.mkdtemp(prefix="vs-bench-", dir=args.dir)
    print(f"scratch {scratch}; jax {jax.__version__}; devices {jax.devices()}")
    try:
        for wname in args.workloads.split(","):
            arrays = make_workload(wname)
            nbytes = sum(a.nbytes for a in arrays.values())
            arrays_dev = {n: jax.device_put(a) for n, a in arrays.items()}
            jax.block_until_ready(arrays_dev)
            print(f"\n=== {wname}: {len(arrays)} variables, {nbytes / 2**20:.1f} MiB")
            contenders = [("numpy-files", numpy_files_save, numpy_files_restore, arrays)]
            if wname == "W2":
                contenders.append(("numpy-1file", numpy_1file_save, numpy_1file_restore, arrays))
            if not args.no_orbax:
                contenders.append(("orbax", orbax_save, orbax_restore, arrays_dev))
            for lay in args.layouts.split(","):
                contenders.append((f"vs-{lay}", vs_save(lay), vs_restore, arrays_dev))
            if args.hash_cost:
                lay = args.layouts.split(",")[0]
                contenders.append((f"vs-{lay}-nohash", no_hash(vs_save(lay)), no_hash(vs_restore), arrays_dev))
            times = {c[0]: ([], []) for c in contenders}
            for rep in range(args.repeat):
                for cname, save, restore, src in contenders:
                    p = os.path.join(scratch, f"{wname}-{cname}")
                    shutil.rmtree(p, ignore_errors=True)
                    t0 = time.perf_counter()
                    save(p, src)
                    t1 = time.perf_counter()
                    res = restore(p, arrays)
                    t2 = time.perf_counter()
                    del res
                    times[cname][0].append(t1 - t0)
                    times[cname][1].append(t2 - t1)
                    if rep < args.repeat - 1 or cname.startswith("numpy"):
                        shutil.rmtree(p, ignore_errors=True)
            ref = times["numpy-files"]
            orb = times.get("orbax")
            print(f"{'contender':14s} {'save s':>8s} {'restore s':>10s} {'save/np':>8s} {'rest/np':>8s}"
                  f" {'save/orbax':>10s} {'rest/orbax':>10s}   (all runs)")
            for cname, (ws, rs) in times.items():
                line = f"{cname:14s} {med(ws):8.3f} {med(rs):10.3f} {med(ws) / med(ref[0]):8.2f} {med(rs) / med(ref[1]):8.2f}"
                if orb:
                    line += f" {med(ws) / med(orb[0]):10.2f} {med(rs) / med(orb[1]):10.2f}"
                line += "   " + " ".join(f"{w:.2f}/{r:.2f}" for w, r in zip(ws, rs))
                print(line)
            tf = TF1.get(wname)
            if tf:
                print(f"{'(TF1 ref)':14s} {tf[0]:8.3f} {tf[1]:10.3f}   from BASELINES.md, not measured here")

            # checksum cost
            t0 = time.perf_counter()
            for a in arrays.values():
                xxhash.xxh3_64_intdigest(memoryview(a.reshape(-1).view(np.uint8)))
            th = time.perf_counter() - t0
            vsname = f"vs-{args.layouts.split(',')[0]}"
            print(f"XXH3 over all bytes, one thread, standalone: {th:.3f} s (the -nohash contender "
                  "shows the end-to-end cost)")

            vs_path = os.path.join(scratch, f"{wname}-{vsname}")
            orbax_path = os.path.join(scratch, f"{wname}-orbax")
            # listing
            ts_ = []
            for _ in range(3):
                _ckpt_io._ckpt_cache.clear()  # measure the parse, not the cache
                t0 = time.perf_counter()
                ents = _ckpt_io.read_entries(vs_path)
                ts_.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _ckpt_io.read_entries(vs_path)
            tc = time.perf_counter() - t0
            print(f"read_entries (ours, {len(ents)} entries): {min(ts_):.4f} s (cached: {tc:.4f} s)")
            if not args.no_orbax:
                ts_ = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    ents = _ckpt_io.read_entries(orbax_path)
                    ts_.append(time.perf_counter() - t0)
                import orbax.checkpoint as ocp

                t0 = time.perf_counter()
                ocp.StandardCheckpointer().metadata(orbax_path)
                tm = time.perf_counter() - t0
                print(f"read_entries (default Orbax checkpoint): {min(ts_):.4f} s; Orbax metadata(): {tm:.3f} s")
            # partial restore of one small variable
            small = "small" if "small" in arrays else next(iter(sorted(arrays)))
            a = arrays[small]
            ts_ = []
            for _ in range(5):
                _ckpt_io._ckpt_cache.clear()  # include parsing the checkpoint's metadata
                t0 = time.perf_counter()
                jax.block_until_ready(_ckpt_io.read(vs_path, {small: (a.shape, a.dtype, None)}))
                ts_.append(time.perf_counter() - t0)
            print(f"read one variable {small!r} ({a.nbytes} B) from {vsname}: {med(ts_):.4f} s (median of 5)")
            if not args.no_orbax:
                ts_ = []
                import orbax.checkpoint as ocp

                dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
                for _ in range(3):
                    t0 = time.perf_counter()
                    tgt = nest({small: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev)})
                    ocp.PyTreeCheckpointer().restore(
                        orbax_path,
                        args=ocp.args.PyTreeRestore(
                            tgt, restore_args=ocp.checkpoint_utils.construct_restore_args(tgt), partial_restore=True
                        ),
                    )
                    ts_.append(time.perf_counter() - t0)
                print(f"  Orbax partial_restore of the same: {med(ts_):.4f} s")
            # peak memory of a restore, fresh process
            if not args.no_memory and wname != "W2":
                for kind, p in [("numpy", os.path.join(scratch, "mem-np")), ("varstore", vs_path)] + (
                    [] if args.no_orbax else [("orbax", orbax_path)]
                ):
                    if kind == "numpy":
                        numpy_files_save(p, arrays)
                    m = peak_rss(kind, p, arrays)
                    if m is None:
                        print(f"peak RSS {kind}: child failed")
                        continue
                    d = m["hwm"] - m["before"]
                    print(f"restore peak RSS above baseline, {kind}: {d / 2**30:.2f} GiB = {d / nbytes:.2f}x data "
                          f"(fresh process, {m['t']:.2f} s)")
                    if kind == "numpy":
                        shutil.rmtree(p, ignore_errors=True)
            for c in contenders:
                shutil.rmtree(os.path.join(scratch, f"{wname}-{c[0]}"), ignore_errors=True)
            del arrays, arrays_dev
    finally:
        _ckpt_io.wait_all()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
