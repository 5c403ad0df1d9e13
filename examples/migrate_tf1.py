"""Move a model trained with TensorFlow 1.x to JAX: restore a TensorFlow-written
checkpoint into varstore variables (no TensorFlow needed) and save it as a
varstore (Orbax) checkpoint.

Run: python examples/migrate_tf1.py [--tf-dir DIR] [--out DIR]

By default it reads tests/fixtures/tf1/howto, written by TensorFlow 1.x's
`tf.compat.v1.train.Saver` (see tests/fixtures/make_tf1_checkpoints.py).
"""

import argparse
import os
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp

import varstore as vs

here = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser()
parser.add_argument("--tf-dir", default=os.path.join(here, "..", "tests", "fixtures", "tf1", "howto"))
parser.add_argument("--out", default=None, help="where to write the varstore checkpoint")
args = parser.parse_args()
out_dir = args.out or tempfile.mkdtemp(prefix="varstore-migrated-")

# The TensorFlow directory's `checkpoint` state file names its latest checkpoint.
tf_path = vs.train.latest_checkpoint(args.tf_dir)
print(f"TensorFlow checkpoint: {tf_path}")
for name, shape in vs.train.list_variables(tf_path):
    print(f"  {name} {shape}")

# Declare the same variables as the TensorFlow program did (the how-to's), with
# shapes from the checkpoint; their initial values do not matter here.
shapes = dict(vs.train.list_variables(tf_path))
weights = vs.Variable(vs.random_normal(shapes["weights"], stddev=0.35), name="weights")
biases = vs.Variable(vs.zeros(shapes["biases"]), name="biases")
w2 = vs.Variable(weights.initialized_value(), name="w2")
w_twice = vs.Variable(weights.initialized_value() * 2.0, name="w_twice")
global_step = vs.Variable(0, name="global_step", trainable=False)

# Check first, then restore: exactly as with a varstore checkpoint.
print(vs.train.plan_restore(tf_path))
store = vs.train.Saver().restore(tf_path)
# Values are TensorFlow's, bit for bit (the fixture trained w2 and biases a little).
assert np.array_equal(store[w_twice], 2 * np.asarray(store[weights]))
print(f"restored {len(store)} variables at global_step={int(store[global_step])}")
print(f"  biases[:3] = {np.asarray(store[biases])[:3]}, w2/weights = "
      f"{float(store[w2][0, 0] / store[weights][0, 0]):.4f}")

# Save as a varstore checkpoint: a plain Orbax checkpoint any JAX program reads.
step = int(store[global_step])
path = vs.train.Saver().save(store, os.path.join(out_dir, "model.ckpt"), global_step=step)
print(f"saved varstore checkpoint: {path}")
tree = ocp.StandardCheckpointer().restore(path)
assert np.array_equal(tree["weights"], store[weights])
print("plain Orbax reads it back:", jax.tree.map(lambda a: a.shape, tree))
