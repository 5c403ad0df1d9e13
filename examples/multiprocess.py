"""Trains a sharded MLP in several JAX processes, checkpoints it, and restores it with
another number of processes.

Start it through the loopback launcher (each process gets 2 CPU devices; together they
form one global mesh; the launcher prefixes every output line with `[process] `):

    python -m varstore.launch -n 2 --devices-per-process 2 examples/multiprocess.py --dir /tmp/mp
    python -m varstore.launch -n 4 --devices-per-process 2 examples/multiprocess.py --dir /tmp/mp --restore
    python -m varstore.launch -n 1 --devices-per-process 4 examples/multiprocess.py --dir /tmp/mp --restore

The first command initializes the MLP sharded over a ("data", "model") mesh of all the
processes' devices (each process creates only its own shards), trains a few jit steps
with optax on a batch split along "data", and saves with `global_step`: every process
calls `saver.save`, each writes only the shards it holds, process 0 commits the
checkpoint and writes the `checkpoint` state file. The `--restore` runs read the latest
checkpoint onto their own mesh (each process reads only the chunks of its shards) and
print the loss of the restored parameters, which matches the training run's last loss.

On a GPU host or a TPU pod, start one process per host with the cluster's launcher and
no VARSTORE_* variables: `vs.distributed.initialize()` then lets
`jax.distributed.initialize()` detect the cluster. Nothing else changes.
"""

from __future__ import annotations

import argparse
import os

import varstore as vs

vs.distributed.initialize()  # before anything touches JAX devices

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

SIZES = [16, 64, 32, 8]
BATCH = 32


def declare(mesh):
    rules = vs.sharding_rules(
        [(r"layer\d+/kernel", P(None, "model")), (r"layer\d+/bias", P()), (r"global_step", P())],
        mesh=mesh,
    )
    with vs.device(rules):
        for i, (n_in, n_out) in enumerate(zip(SIZES, SIZES[1:])):
            with vs.name_scope(f"layer{i}"):
                vs.Variable(vs.glorot_uniform([n_in, n_out]), name="kernel")
                vs.Variable(vs.zeros([n_out]), name="bias")
        vs.Variable(vs.zeros([], "int32"), name="global_step", trainable=False)


def loss_fn(params, x, y):
    h = x
    for i in range(len(SIZES) - 1):
        h = h @ params[f"layer{i}/kernel"] + params[f"layer{i}/bias"]
        if i < len(SIZES) - 2:
            h = jax.nn.relu(h)
    return jnp.mean((h - y) ** 2)


def batch(mesh):
    """The same synthetic batch in every process, split along "data"."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = np.sin(x[:, : SIZES[-1]]).astype(np.float32)
    sharding = NamedSharding(mesh, P("data"))
    return tuple(jax.make_array_from_callback(a.shape, sharding, lambda i, a=a: a[i]) for a in (x, y))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--restore", action="store_true")
    args = parser.parse_args()
    n = jax.device_count()
    mesh = jax.make_mesh(
        (n // 2, 2) if n > 1 else (1, 1), ("data", "model"), devices=jax.devices(),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
    )
    declare(mesh)
    saver = vs.train.Saver(max_to_keep=2)
    x, y = batch(mesh)
    names = [v.name for v in vs.trainable_variables()]
    me = f"process {jax.process_index()} of {jax.process_count()} ({jax.local_device_count()} devices)"

    if args.restore:
        path = vs.train.latest_checkpoint(args.dir)
        store = saver.restore(path)  # every process calls it; each reads its own shards
        params = {k: store[k] for k in names}
        loss = float(jax.jit(loss_fn)(params, x, y))
        print(f"{me}: restored {path} step {int(store['global_step'])} loss {loss:.6f}")
        return

    store = vs.initialize_all_variables()(jax.random.key(0))
    params = {k: store[k] for k in names}
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    shardings = jax.tree.map(lambda a: a.sharding, params)

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return jax.lax.with_sharding_constraint(params, shardings), opt_state, loss

    for i in range(args.steps):
        params, opt_state, loss = step(params, opt_state, x, y)
    final = float(jax.jit(loss_fn)(params, x, y))
    step_sharding = store["global_step"].sharding
    gstep = jax.device_put(jnp.int32(args.steps), step_sharding)
    store = store.update({**params, "global_step": gstep})
    path = saver.save(store, os.path.join(args.dir, "model.ckpt"), global_step=args.steps)
    print(f"{me}: trained {args.steps} steps, loss {final:.6f}, saved {path}")


if __name__ == "__main__":
    main()
