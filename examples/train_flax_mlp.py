"""Trains a Flax NNX MLP with optax on synthetic data, checkpointing with
`vs.train.Saver`, and resumes exactly where a run stopped.

A checkpoint holds everything the run needs to continue bit for bit, in one
Saver call, laid out as:

    params/...   the model's nnx.Param arrays (params/layers/0/kernel, ...)
    opt/...      the nnx.Optimizer's state (opt/opt_state/0/mu/..., opt/step)
    step         the training step
    rng-key_data the data RNG key (a typed key, saved as its key data)

Run:
    python examples/train_flax_mlp.py --dir /tmp/mlp --steps 200 --every 50
    python examples/train_flax_mlp.py --dir /tmp/mlp --steps 400 --every 50 --resume

Each step prints `step N loss L` (L exact, as Python's repr of the float32
value); each save prints `saved PATH` as soon as `save(..., blocking=False)`
has returned.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import varstore as vs
import varstore.flax as vsf

IN, HIDDEN, OUT, BATCH = 8, 32, 1, 64


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(IN, HIDDEN, rngs=rngs), nnx.Linear(HIDDEN, HIDDEN, rngs=rngs)]
        )
        self.head = nnx.Linear(HIDDEN, OUT, rngs=rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.gelu(layer(x))
        return self.head(x)


TEACHER = jax.random.normal(jax.random.key(1234), (IN, OUT))


@jax.jit
def next_batch(rng):
    """The next RNG key and a batch drawn from the current one."""
    rng, key = jax.random.split(rng)
    x = jax.random.normal(key, (BATCH, IN))
    return rng, x, jnp.sin(x @ TEACHER) + 0.1 * jnp.cos(3 * x[:, :1])


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "varstore-flax-mlp"))
    parser.add_argument("--steps", type=int, default=200, help="train until this step")
    parser.add_argument("--every", type=int, default=50, help="checkpoint every N steps")
    parser.add_argument("--max-to-keep", type=int, default=3)
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = MLP(nnx.Rngs(args.seed))
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-4), wrt=nnx.Param)
    step, rng = 0, jax.random.key(args.seed + 1)

    def checkpoint_tree():
        # The one pytree a checkpoint holds; also the `like` a restore rebuilds.
        return {
            "params": nnx.state(model, nnx.Param),
            "opt": nnx.state(optimizer),
            "step": step,
            "rng": rng,
        }

    # One vs.Variable per array, so that vs.train.Saver() saves all of them.
    vsf.declare(checkpoint_tree())
    saver = vs.train.Saver(max_to_keep=args.max_to_keep)
    save_path = os.path.join(args.dir, "model.ckpt")

    latest = vs.train.latest_checkpoint(args.dir) if args.resume else None
    if latest is not None:
        restored = saver.restore(latest).to_pytree(checkpoint_tree())
        nnx.update(model, restored["params"])
        nnx.update(optimizer, restored["opt"])
        step, rng = int(restored["step"]), restored["rng"]
        print(f"resumed {latest} at step {step}", flush=True)

    step_fn = nnx.cached_partial(train_step, model, optimizer)  # less Python per step
    while step < args.steps:
        rng, x, y = next_batch(rng)
        loss = step_fn(x, y)
        step += 1
        print(f"step {step} loss {float(loss)!r}", flush=True)
        if step % args.every == 0:
            store = vs.VarStore.from_pytree(checkpoint_tree())
            path = saver.save(store, save_path, global_step=step, blocking=False)
            print(f"saved {path}", flush=True)
    saver.wait_until_finished()


if __name__ == "__main__":
    main()
