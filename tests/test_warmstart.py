import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs


@pytest.fixture
def ckpt(tmp_path):
    """A checkpoint with old/w, old/b, old/inner/k and top."""
    g = vs.Graph()
    with g.as_default():
        with vs.name_scope("old"):
            vs.Variable(jnp.arange(6.0).reshape(2, 3), name="w")
            vs.Variable(jnp.arange(3.0), name="b")
            with vs.name_scope("inner"):
                vs.Variable(jnp.full((2,), 7.0), name="k")
        vs.Variable(jnp.float32(5.0), name="top")
        store = vs.initialize_all_variables()(0)
        return vs.train.Saver().save(store, str(tmp_path / "m"))


def test_tensor_to_name(ckpt):
    w = vs.Variable(vs.zeros([2, 3]), name="new_w")
    store = vs.train.init_from_checkpoint(ckpt, {"old/w": "new_w"})
    np.testing.assert_array_equal(store[w], np.arange(6.0).reshape(2, 3))


def test_tensor_to_variable(ckpt):
    w = vs.Variable(vs.zeros([2, 3]), name="x")
    store = vs.train.init_from_checkpoint(ckpt, {"old/w": w})
    np.testing.assert_array_equal(store[w], np.arange(6.0).reshape(2, 3))


def test_scope_to_scope(ckpt):
    with vs.name_scope("new"):
        w = vs.Variable(vs.zeros([2, 3]), name="w")
        with vs.name_scope("inner"):
            k = vs.Variable(vs.zeros([2]), name="k")
    other = vs.Variable(vs.zeros([1]), name="other")
    store = vs.train.init_from_checkpoint(ckpt, {"old/": "new/"})
    assert sorted(store) == ["new/inner/k", "new/w"]
    np.testing.assert_array_equal(store[k], [7.0, 7.0])
    np.testing.assert_array_equal(store[w], np.arange(6.0).reshape(2, 3))
    del other


def test_root_to_scope(ckpt):
    with vs.name_scope("enc"):
        top = vs.Variable(vs.zeros([]), name="top")
        b = vs.Variable(vs.zeros([3]), name="old/b")
    store = vs.train.init_from_checkpoint(ckpt, {"/": "enc/"})
    assert float(store[top]) == 5.0
    np.testing.assert_array_equal(store[b], np.arange(3.0))


def test_scope_map_agrees_with_explicit_map(ckpt):
    with vs.name_scope("new"):
        vs.Variable(vs.zeros([2, 3]), name="w")
        vs.Variable(vs.zeros([3]), name="b")
    a = vs.train.init_from_checkpoint(ckpt, {"old/": "new/"})
    b = vs.train.init_from_checkpoint(ckpt, {"old/w": "new/w", "old/b": "new/b"})
    assert sorted(a) == sorted(b)
    for n in a:
        np.testing.assert_array_equal(a[n], b[n])


def test_merges_into_store_and_casts_to_declared_dtype(ckpt):
    w = vs.Variable(vs.zeros([2, 3], dtype=jnp.bfloat16), name="w")
    keep = vs.VarStore({"keep": jnp.ones(2)})
    store = vs.train.init_from_checkpoint(ckpt, {"old/w": w}, store=keep)
    assert store[w].dtype == jnp.bfloat16
    assert "keep" in store


def test_entry_matching_nothing_is_an_error(ckpt):
    vs.Variable(vs.zeros([2, 3]), name="w")
    with pytest.raises(vs.CheckpointError, match="'old/' -> 'nothing/' matches no variable"):
        vs.train.init_from_checkpoint(ckpt, {"old/": "nothing/"})


def test_unknown_target_variable(ckpt):
    with pytest.raises(vs.CheckpointError, match="no variable 'nope' in the graph"):
        vs.train.init_from_checkpoint(ckpt, {"old/w": "nope"})


def test_missing_tensor_and_shape_mismatch(ckpt):
    w = vs.Variable(vs.zeros([2, 3]), name="w")
    with pytest.raises(vs.CheckpointError, match=r"no value for 1 variable.*'w \(as old/zz\)'.*assignment_map"):
        vs.train.init_from_checkpoint(ckpt, {"old/zz": w})
    bad = vs.Variable(vs.zeros([4]), name="bad")
    with pytest.raises(vs.CheckpointError, match=r"'bad' has shape \(4,\) .* shape \(3,\)"):
        vs.train.init_from_checkpoint(ckpt, {"old/b": bad})


def test_scope_to_variable_is_an_error(ckpt):
    vs.Variable(vs.zeros([2, 3]), name="w")
    with pytest.raises(vs.CheckpointError, match="maps a scope to a variable"):
        vs.train.init_from_checkpoint(ckpt, {"old/": "w"})
