"""Sharded initialization of an MLP on a 2-D mesh of 8 CPU devices.

The kernels are sharded over a ("data", "model") mesh and the biases replicated,
chosen by name with `vs.sharding_rules` (the JAX counterpart of TensorFlow's
`replica_device_setter`). Each array is created directly with its sharding: every
device generates only its own shard, and the values are the same as an unsharded
initialization with the same key gives.

This host has one CPU device unless XLA is told to split it, so the script sets

    XLA_FLAGS=--xla_force_host_platform_device_count=8

before importing JAX (setting it after the import has no effect). On a machine with
8 accelerators, drop that line.

Run: python examples/sharded_init.py
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import varstore as vs  # noqa: E402

LAYERS = [784, 512, 256, 128]


def main() -> None:
    mesh = jax.make_mesh((4, 2), ("data", "model"), devices=jax.devices("cpu")[:8])
    rules = vs.sharding_rules(
        [
            (r"layer\d+/kernel", P("data", "model")),  # split both dimensions
            (r"layer\d+/bias", P()),  # small: a full copy on every device
        ],
        mesh=mesh,
    )
    # Names the rules do not match fall through to the enclosing placement.
    kernels = []
    with vs.device("/cpu:0"), vs.device(rules):
        for i, (n_in, n_out) in enumerate(zip(LAYERS, LAYERS[1:])):
            with vs.name_scope(f"layer{i}"):
                kernels.append(vs.Variable(vs.glorot_uniform([n_in, n_out]), name="kernel"))
                vs.Variable(vs.zeros([n_out]), name="bias")
        vs.Variable(0, name="global_step", trainable=False)

    store = vs.initialize_all_variables()(jax.random.key(0))
    print(store.summary())
    print()
    for var in vs.global_variables():
        array = store[var]
        shards = {tuple(s.data.shape) for s in array.addressable_shards}
        print(
            f"{var.name:14} {str(array.shape):11} -> shards {sorted(shards)} "
            f"on {len(array.sharding.device_set)} device(s)"
        )

    # The same key gives the same values whatever the sharding.
    vs.reset_default_graph()
    with vs.name_scope("layer0"):
        plain = vs.Variable(vs.glorot_uniform([LAYERS[0], LAYERS[1]]), name="kernel")
    unsharded = vs.initialize_all_variables()(jax.random.key(0))
    same = np.array_equal(np.asarray(store[kernels[0]]), np.asarray(unsharded[plain]))
    print(f"\nlayer0/kernel equals its unsharded initialization: {same}")


if __name__ == "__main__":
    main()
