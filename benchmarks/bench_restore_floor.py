"""The floor of a W2 restore in JAX: TF1's whole restore against creating the arrays.

W2 = 2,000 float32 variables of 4,096. TensorFlow 1.x restores into variables that
already exist (its restore op writes into their buffers); a JAX restore must create
2,000 new `jax.Array`s. This script times, alternated in every repeat, medians:

  tf1 restore       `tf.compat.v1.train.Saver.restore` of the W2 checkpoint (warm).
  device_put        ONE batched `jax.device_put` of 2,000 host NumPy arrays onto the
                    default device, nothing read from disk: the least a restore that
                    creates its arrays through the public API can cost.
  transfer floor    the same arrays created by `pxla.batched_device_put`, what
                    `jax.device_put` ends in (varstore's `_to_device.put`): the least
                    any JAX restore of W2 can cost.
  varstore restore  `vs.train.Saver().restore` of the same values saved by varstore (warm).

Needs `pip install tensorflow-cpu`.

Run: python benchmarks/bench_restore_floor.py [--repeat 9]
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import varstore as vs  # noqa: E402
from varstore import _to_device  # noqa: E402

N, D = 2000, 4096


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    try:
        import tensorflow as tf
    except ImportError:
        raise SystemExit("needs tensorflow-cpu: pip install tensorflow-cpu") from None
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()

    values = [np.random.default_rng(i).standard_normal(D).astype(np.float32) for i in range(N)]
    scratch = tempfile.mkdtemp(prefix="vs-floor-")
    try:
        graph = tf1.Graph()
        with graph.as_default():
            for i, v in enumerate(values):
                tf1.Variable(v, name=f"v{i}")
            tf_saver = tf1.train.Saver()
            sess = tf1.Session(graph=graph)
            sess.run(tf1.global_variables_initializer())
            tf_path = tf_saver.save(sess, os.path.join(scratch, "tf", "m"), write_meta_graph=False)

        for i, v in enumerate(values):
            vs.Variable(vs.constant(v), name=f"v{i}")
        vs_saver = vs.train.Saver()
        vs_path = vs_saver.save(vs.initialize_all_variables()(0), os.path.join(scratch, "vs", "m"))

        device = jax.devices()[0]
        contenders = {
            "tf1 restore": lambda: tf_saver.restore(sess, tf_path),
            "device_put": lambda: jax.block_until_ready(jax.device_put(values, device)),
            "transfer floor": lambda: jax.block_until_ready(
                _to_device.put([(v.shape, None, v) for v in values])
            ),
            "varstore restore": lambda: jax.block_until_ready(vs_saver.restore(vs_path).to_dict()),
        }
        for fn in contenders.values():  # warm every path once
            fn()
        samples = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.repeat):
            for name in names[r % len(names):] + names[: r % len(names)]:
                samples[name].append(_timed(contenders[name]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"W2 ({N} x {D} float32), warm, medians of {args.repeat}, alternated:")
    for name, t in med.items():
        print(f"  {name:<18} {t:.4f} s  {t / med['tf1 restore']:5.2f}x tf1 restore")


if __name__ == "__main__":
    main()
