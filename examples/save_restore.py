"""TensorFlow 1.x's "Variables: creation, initialization, saving and restoring",
the saving and restoring half, in varstore.

Run: python examples/save_restore.py [--dir DIR]
"""

import argparse
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import varstore as vs

parser = argparse.ArgumentParser()
parser.add_argument("--dir", default=None, help="where to write checkpoints (default: a temp dir)")
ckpt_dir = parser.parse_args().dir or tempfile.mkdtemp(prefix="varstore-howto-")

# -- Saving variables ---------------------------------------------------------------
v1 = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="v1")
v2 = vs.Variable(vs.zeros([200]), name="v2")
store = vs.initialize_all_variables()(jax.random.key(0))
saver = vs.train.Saver()
save_path = saver.save(store, f"{ckpt_dir}/model.ckpt")
print(f"Model saved in file: {save_path}")

# -- Restoring variables -------------------------------------------------------------
restored = saver.restore(f"{ckpt_dir}/model.ckpt")
assert np.array_equal(restored[v1], store[v1])
print("Model restored:", vs.train.list_variables(save_path))

# -- Choosing which variables to save and restore, and their names ------------------
saver_v2 = vs.train.Saver({"my_v2": v2})
path_v2 = saver_v2.save(store, f"{ckpt_dir}/v2.ckpt")
print("Saved only v2, as 'my_v2':", vs.train.list_variables(path_v2))

# Restore 'v1' of the checkpoint into a new variable called 'params'.
params = vs.Variable(vs.zeros([784, 200]), name="params")
only_params = vs.train.Saver({"v1": params}).restore(save_path)
assert np.array_equal(only_params[params], store[v1])
print("Restored checkpoint entry 'v1' into variable 'params'")

# -- A 5-layer network, trained, then restored into a 6-layer one -------------------
WIDTH = 32
x = jax.random.normal(jax.random.key(1), (256, WIDTH))
y = jnp.sin(x.sum(axis=1, keepdims=True))


def declare(n_layers):
    """n_layers hidden tanh layers of WIDTH units, then a linear head."""
    for i in range(1, n_layers + 1):
        with vs.name_scope(f"layer{i}/"):
            vs.Variable(vs.glorot_uniform([WIDTH, WIDTH]), name="w")
            vs.Variable(vs.zeros([WIDTH]), name="b")
    with vs.name_scope("head/"):
        vs.Variable(vs.glorot_uniform([WIDTH, 1]), name="w")
        vs.Variable(vs.zeros([1]), name="b")


def loss_fn(params, n_layers):
    h = x
    for i in range(1, n_layers + 1):
        h = jnp.tanh(h @ params[f"layer{i}/w"] + params[f"layer{i}/b"])
    return jnp.mean((h @ params["head/w"] + params["head/b"] - y) ** 2)


def train(params, n_layers, steps):
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(loss_fn)(params, n_layers)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(steps):
        params, state, loss = step(params, state)
    return params, float(loss)


vs.reset_default_graph()
declare(5)
five = vs.initialize_all_variables()(jax.random.key(2))
print(f"5-layer loss before training: {float(loss_fn(five, 5)):.2e}")
five, loss = train(five, 5, 200)
print(f"5-layer loss after training:  {loss:.2e}")
layers = [v for v in vs.global_variables() if v.name.startswith("layer")]
five_path = vs.train.Saver(layers).save(five, f"{ckpt_dir}/five.ckpt", global_step=200)

# A deeper network: layers 1-5 come from the checkpoint; layer 6 and the head are new.
vs.reset_default_graph()
declare(6)
print(vs.train.plan_restore(five_path))
six = vs.train.Saver().restore(five_path, on_missing="skip")
missing = vs.report_uninitialized_variables(six)
print("uninitialized after the restore:", missing)
six = vs.initialize_variables(missing)(jax.random.key(3), six)
vs.assert_variables_initialized(six)
print(f"6-layer loss with layers 1-5 restored: {float(loss_fn(six, 6)):.2e}")
six, loss = train(six, 6, 200)
print(f"6-layer loss after 200 more steps:     {loss:.2e}")
