"""Placement and initialization on a GPU host: a check to run where one is lent.

Run: JAX_PLATFORMS=cuda,cpu python benchmarks/gpu_check.py [--dir DIR]

Checks that TensorFlow device strings resolve to the GPU and the host CPU, that
variables are created directly on the GPU by the compiled initializer, that the
random bits are the same on GPU and CPU for the same key and name (normal values
may differ in the last bit: the transcendental functions are the backend's), and
that a checkpoint saved from the GPU restores bit-exactly onto the CPU and back.
"""

import argparse
import os
import tempfile
import time

import jax
import numpy as np

import varstore as vs

parser = argparse.ArgumentParser()
parser.add_argument("--dir", default=None)
args = parser.parse_args()
tmp = args.dir or tempfile.mkdtemp(prefix="varstore-gpu-")

print("jax", jax.__version__, "devices:", jax.devices(), "cpu:", jax.devices("cpu")[:1])
gpu = jax.devices()[0]
assert gpu.platform in ("gpu", "cuda"), f"no GPU: {gpu}"

with vs.device("/gpu:0"):
    w = vs.Variable(vs.random_normal([4096, 4096], stddev=0.35), name="w")
    u = vs.Variable(vs.random_uniform([1 << 20], maxval=1 << 30, dtype="int32"), name="u")
    small = [vs.Variable(vs.truncated_normal([256]), name=f"s{i}") for i in range(500)]
with vs.device("/cpu:0"):
    c = vs.Variable(vs.random_normal([4096, 4096], stddev=0.35), name="w_cpu_twin")
print("placements:", w.device, c.device)
assert next(iter(w.device.device_set)).platform in ("gpu", "cuda")
assert next(iter(c.device.device_set)).platform == "cpu"

init = vs.initialize_all_variables()
t = time.perf_counter()
store = jax.block_until_ready(init(jax.random.key(0)))
print(f"first call (compile + run): {time.perf_counter() - t:.3f} s")
runs = []
for k in range(1, 6):
    t = time.perf_counter()
    jax.block_until_ready(init(jax.random.key(k)))
    runs.append(time.perf_counter() - t)
print(f"later calls: median {np.median(runs) * 1e3:.1f} ms")
assert store["w"].sharding.device_set == {gpu}
assert all(store[v].sharding.device_set == {gpu} for v in small)

# Same key and name on the CPU: integer random bits must match exactly.
with vs.Graph().as_default():
    with vs.device("/cpu:0"):
        u_cpu = vs.Variable(vs.random_uniform([1 << 20], maxval=1 << 30, dtype="int32"), name="u")
        w_cpu = vs.Variable(vs.random_normal([4096, 4096], stddev=0.35), name="w")
    cpu_store = vs.initialize_all_variables()(jax.random.key(0))
assert np.array_equal(np.asarray(store["u"]), np.asarray(cpu_store["u"])), "random bits differ"
diff = np.abs(np.asarray(store["w"]) - np.asarray(cpu_store["w"]))
print(f"random_normal GPU vs CPU: max |diff| {diff.max():.3g}, "
      f"{np.mean(diff == 0) * 100:.2f}% bit-identical")

# A GPU checkpoint onto the CPU and back.
path = vs.train.Saver().save(store, os.path.join(tmp, "model.ckpt"), global_step=1)
with vs.Graph().as_default():
    with vs.device("/cpu:0"):
        vs.Variable(vs.zeros([4096, 4096]), name="w")
    on_cpu = vs.train.Saver().restore(path)
assert next(iter(on_cpu["w"].sharding.device_set)).platform == "cpu"
assert np.array_equal(np.asarray(on_cpu["w"]), np.asarray(store["w"]))
back = vs.train.Saver().restore(path)
assert back["w"].sharding.device_set == {gpu}
assert np.array_equal(np.asarray(back["w"]), np.asarray(store["w"]))
print("GPU checkpoint restored bit-exactly on the CPU and on the GPU: OK")
