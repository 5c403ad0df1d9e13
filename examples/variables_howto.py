"""TensorFlow 1.x's "Variables: creation, initialization, saving and restoring",
the creation and initialization half, in varstore.

Run: python examples/variables_howto.py
"""

import jax
import numpy as np

import varstore as vs

# Creation: a variable is a declaration with a lazy initial value.
weights = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="weights")
biases = vs.Variable(vs.zeros([200]), name="biases")
print("declared:", weights, biases, sep="\n  ")

# Device placement, as with tf.device.
with vs.device("/cpu:0"):
    v = vs.Variable(vs.ones([10]), name="v")
print(f"'{v.name}' is placed on {v.device}")

# Initialization from another variable.
w2 = vs.Variable(weights.initialized_value(), name="w2")
w_twice = vs.Variable(weights.initialized_value() * 2.0, name="w_twice")

# One compiled XLA program initializes everything, straight into a VarStore.
init_op = vs.initialize_all_variables()
store = init_op(jax.random.key(0))
print(store.summary())

assert np.array_equal(store[w2], store[weights])
assert np.array_equal(store[w_twice], 2.0 * np.asarray(store[weights]))
print("w2 == weights and w_twice == 2 * weights, exactly")
print(f"weights: mean {float(store[weights].mean()):+.4f}, std {float(store[weights].std()):.4f}")

# Initializing a subset keeps the rest of the store.
w3 = vs.Variable(vs.glorot_uniform([200, 10]), name="w3")
print("uninitialized:", vs.report_uninitialized_variables(store))
store = vs.initialize_variables([w3])(jax.random.key(0), store)
vs.assert_variables_initialized(store)
print("after initialize_variables([w3]):", sorted(store))

# The same key gives the same values, whatever subset is initialized.
again = vs.initialize_variables([weights])(jax.random.key(0))
assert np.array_equal(again[weights], store[weights])
print("re-initializing 'weights' alone with the same key gives the same values")

# A VarStore is an immutable pytree: jit, grad and optax work on it directly.
store = store.assign(biases, np.full(200, 0.1, np.float32))
loss = jax.jit(lambda s: ((s["weights"] @ s["w3"]) ** 2).mean() + s["biases"].sum())
print(f"loss(store) = {float(loss(store)):.4f}")
