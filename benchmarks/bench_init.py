"""Initialization benchmark: varstore against its limit and its peers, in one run.

Workloads (float32, `vs.random_normal`):
  W2  2,000 variables of 4,096 floats (31 MiB): compile time dominates.
  W1  20 variables of (4096, 1638) floats (about 512 MiB): memory bandwidth dominates.
  W1 sharded: W1 on a (4, 2) mesh of 8 CPU devices, P("data", "model").

Contenders, measured alternately in every repeat (the machine is shared and noisy,
so only ratios within one run mean much):
  varstore        first call of a fresh initializer (trace + compile + run) and later
                  calls with new keys (run); compile = first - median(run).
  normal          ONE jitted `jax.random.normal` of the workload's total size: the
                  limit for the run time.
  nnx eager       a Flax NNX module holding the same parameters, built eagerly (its
                  construction is both its compile and its run).
  nnx.jit         the same module built under `nnx.jit` (W1 only: a jit with 2,000
                  outputs is what makes XLA's compile time explode, see BASELINES.md).
Peak memory of the W1 cases is measured in a fresh subprocess per case
(/proc/self/status VmHWM minus VmRSS before the initialization).

The 8 CPU devices come from XLA_FLAGS=--xla_force_host_platform_device_count=8,
set below before JAX is imported; every contender runs under the same flags.

Run: python benchmarks/bench_init.py [--repeat N] [--quick]
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import varstore as vs  # noqa: E402

FULL = {"W2": (2000, (4096,)), "W1": (20, (4096, 1638))}
QUICK = {"W2": (500, (4096,)), "W1": (20, (1024, 1638))}
LATER_CALLS = 3  # run-time samples per contender and repeat


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_compile_seconds = [0.0]


def _on_event(event, duration, **_):
    if event in _COMPILE_EVENTS:
        _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _sync(tree):
    jax.block_until_ready(jax.tree.leaves(tree))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    _sync(out)
    return time.perf_counter() - start, out


def _mesh():
    return Mesh(np.array(jax.devices("cpu")[:8]).reshape(4, 2), ("data", "model"))


def _nbytes(workload):
    n, shape = workload
    return n * int(np.prod(shape)) * 4


# -- contenders: first() -> seconds (compile + run), run(seed) -> seconds ----------------
class Varstore:
    def __init__(self, workload, sharding=None):
        self.workload, self.sharding = workload, sharding
        self.init = None

    def first(self, seed):
        n, shape = self.workload
        graph = vs.Graph()
        with graph.as_default(), vs.device(self.sharding):
            start = time.perf_counter()
            for i in range(n):
                vs.Variable(vs.random_normal(list(shape)), name=f"layer{i}/w")
            self.declare_s = time.perf_counter() - start
            self.init = vs.initialize_all_variables()
        seconds, out = _timed(lambda: self.init(jax.random.key(seed)))
        del out
        return seconds

    def run(self, seed):
        seconds, out = _timed(lambda: self.init(jax.random.key(seed)))
        del out
        return seconds


class Normal:
    def __init__(self, workload, sharding=None):
        self.size = _nbytes(workload) // 4
        self.sharding = sharding

    def first(self, seed):
        size = self.size

        def normal(key):
            return jax.random.normal(key, (size,))

        if self.sharding is None:
            self.fn = jax.jit(normal)
        else:  # a 1-D array split over all 8 devices of the mesh
            mesh = self.sharding.mesh
            self.fn = jax.jit(normal, out_shardings=NamedSharding(mesh, P(mesh.axis_names)))
        seconds, out = _timed(lambda: self.fn(jax.random.key(seed)))
        del out
        return seconds

    def run(self, seed):
        seconds, out = _timed(lambda: self.fn(jax.random.key(seed)))
        del out
        return seconds


class _Params(nnx.Module):
    def __init__(self, n, shape, rngs):
        self.params = nnx.List(
            [nnx.Param(jax.random.normal(rngs.params(), shape)) for _ in range(n)]
        )


class NnxEager:
    def __init__(self, workload):
        self.workload = workload

    def first(self, seed):
        return self.run(seed)

    def run(self, seed):
        n, shape = self.workload
        seconds, out = _timed(lambda: nnx.state(_Params(n, shape, nnx.Rngs(seed))))
        del out
        return seconds


class NnxJit:
    def __init__(self, workload):
        self.workload = workload

    def first(self, seed):
        n, shape = self.workload

        @nnx.jit
        def create(rngs):
            return _Params(n, shape, rngs)

        self.create = create
        return self.run(seed)

    def run(self, seed):
        seconds, out = _timed(lambda: nnx.state(self.create(nnx.Rngs(seed))))
        del out
        return seconds


def _measure(contenders, repeat):
    """Alternates contenders; returns {name: (first times, run times, compile times)}
    where compile times are JAX's own trace + lower + XLA compile events."""
    results = {name: ([], [], []) for name in contenders}
    names = list(contenders)
    seed = 0
    for r in range(repeat):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            contender = contenders[name]
            seed += 1
            _compile_seconds[0] = 0.0
            results[name][0].append(contender.first(seed))
            results[name][2].append(_compile_seconds[0])
            gc.collect()
            for _ in range(LATER_CALLS):
                seed += 1
                results[name][1].append(contender.run(seed))
                gc.collect()
        print(f"  repeat {r + 1}/{repeat} done", file=sys.stderr, flush=True)
    return results


# -- peak memory in a clean subprocess -------------------------------------------------------
def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _child(case, quick):
    workload = (QUICK if quick else FULL)["W1"]
    sharding = NamedSharding(_mesh(), P("data", "model")) if "sharded" in case else None
    if case.startswith("varstore"):
        contender = Varstore(workload, sharding)
    elif case.startswith("normal"):
        contender = Normal(workload, sharding)
    else:
        contender = NnxEager(workload)
    jax.block_until_ready(jax.random.normal(jax.random.key(0), (8,)))  # backend up
    gc.collect()
    before = _status_kib("VmRSS")
    seconds = contender.first(1)
    peak = _status_kib("VmHWM")
    print(json.dumps({"before_kib": before, "peak_kib": peak, "seconds": seconds}))


def _peak_rss(case, quick):
    cmd = [sys.executable, __file__, "--child", case] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# -- report ---------------------------------------------------------------------------------
def _med(xs):
    return statistics.median(xs) if xs else float("nan")


def _row(cells, widths):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"


def _table(header, rows):
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join([*lines, *(_row(r, widths) for r in rows)])


def _report(title, results, limit="normal", peer=None):
    print(f"\n### {title}\n")
    limit_run = _med(results[limit][1])
    rows = []
    for name, (firsts, runs, compiles) in results.items():
        first, run = _med(firsts), _med(runs)
        eager = name.startswith("nnx eager")
        rows.append(
            [
                name,
                f"{first:.3f}",
                "-" if eager else f"{max(first - run, 0.0):.3f}",
                f"{_med(compiles):.3f}",
                f"{run:.3f}",
                f"{run / limit_run:.2f}x",
            ]
            + ([] if peer is None else [f"{first / _med(results[peer][0]):.2f}x"])
        )
    header = [
        "contender",
        "first call s (compile+run)",
        "first - run s",
        "JAX compile events s",
        "run s",
        f"run / {limit}",
    ] + ([] if peer is None else [f"first / {peer}"])
    print(_table(header, rows))


def _w2(w2, repeat):
    w2_store = Varstore(w2)
    w2_results = _measure(
        {"varstore": w2_store, "normal": Normal(w2), "nnx eager": NnxEager(w2)}, repeat
    )
    _report(f"W2: {w2[0]:,} variables of {w2[1]} (eager NNX: construction = compile + run)",
            w2_results, peer="nnx eager")
    first = _med(w2_results["varstore"][0])
    print(f"\nTarget W2 compile + run (first call) < 1 s: {first:.3f} s -> "
          f"{'met' if first < 1.0 else 'NOT met'}")
    print(f"varstore declaration of W2 ({w2[0]} vs.Variable calls): "
          f"{w2_store.declare_s:.3f} s (last repeat; not in the figures above)")


def _w1(w1, repeat):
    w1_results = _measure(
        {"varstore": Varstore(w1), "normal": Normal(w1), "nnx eager": NnxEager(w1),
         "nnx.jit": NnxJit(w1)},
        repeat,
    )
    _report(f"W1: {w1[0]} variables of {w1[1]}", w1_results, peer="nnx eager")
    ratio = _med(w1_results["varstore"][1]) / _med(w1_results["normal"][1])
    print(f"\nTarget W1 run within 1.2-1.3x of one jax.random.normal: {ratio:.2f}x -> "
          f"{'met' if ratio <= 1.3 else 'NOT met'}")


def _sharded(w1, repeat):
    sharding = NamedSharding(_mesh(), P("data", "model"))
    sharded_results = _measure(
        {"varstore sharded": Varstore(w1, sharding), "varstore 1 device": Varstore(w1),
         "normal sharded": Normal(w1, sharding), "normal": Normal(w1)},
        repeat,
    )
    _report("W1 on a (4, 2) mesh of 8 CPU devices", sharded_results, limit="varstore 1 device")


def _memory(w1, quick):
    print("\n### Peak memory of one W1 initialization (fresh subprocess each)\n")
    data = _nbytes(w1)
    rows = []
    for case in ["varstore", "varstore sharded", "normal", "normal sharded", "nnx eager"]:
        m = _peak_rss(case, quick)
        added = (m["peak_kib"] - m["before_kib"]) * 1024
        rows.append([case, f"{m['peak_kib'] / 2**20:.2f}", f"{added / 2**20:.0f}",
                     f"{added / data:.2f}x"])
    print(_table(["case", "peak RSS GiB", "peak - before MiB", "/ data size"], rows))
    print(f"(data size {data / 2**20:.0f} MiB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="smaller W2/W1, 2 repeats")
    parser.add_argument(
        "--only",
        default="w2,w1,sharded,memory",
        help="comma-separated sections to run: w2, w1, sharded, memory (default: all)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return _child(args.child, args.quick)
    repeat = 2 if args.quick and args.repeat == 5 else args.repeat
    sizes = QUICK if args.quick else FULL
    w1, w2 = sizes["W1"], sizes["W2"]
    print(f"jax {jax.__version__}, {len(jax.devices())} CPU devices, repeat={repeat}, "
          f"W2={w2[0]}x{w2[1]} ({_nbytes(w2) / 2**20:.0f} MiB), "
          f"W1={w1[0]}x{w1[1]} ({_nbytes(w1) / 2**20:.0f} MiB)")

    # Start the backend and JAX's own caches before any contender is timed.
    jax.block_until_ready(jax.jit(lambda k: jax.random.normal(k, (8,)))(jax.random.key(0)))

    only = set(args.only.split(","))
    unknown = only - {"w2", "w1", "sharded", "memory"}
    if unknown:
        parser.error(f"--only: unknown sections {sorted(unknown)}; use w2, w1, sharded, memory")
    if "w2" in only:
        _w2(w2, repeat)
    if "w1" in only:
        _w1(w1, repeat)
    if "sharded" in only:
        _sharded(w1, repeat)
    if "memory" in only:
        _memory(w1, args.quick)


if __name__ == "__main__":
    main()
