import jax
import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs


def test_expressions_have_static_shape_and_dtype_without_computing():
    e = vs.random_normal([784, 200], stddev=0.35)
    assert e.shape == (784, 200) and e.dtype == np.float32
    f = (e @ vs.ones([200, 3])).T[1:, ::2].reshape(-1).astype(jnp.bfloat16)
    assert f.shape == (2 * 392,) and f.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "expr, shape, dtype",
    [
        (vs.zeros([2, 3]), (2, 3), np.float32),
        (vs.ones([4], dtype=jnp.int32), (4,), np.int32),
        (vs.fill([2], 7), (2,), np.int32),
        (vs.fill([2], 7.5), (2,), np.float32),
        (vs.constant(3.0), (), np.float32),
        (vs.constant([1, 2, 3]), (3,), np.int32),
        (vs.constant(np.arange(6.0)), (6,), np.float32),  # canonicalized without x64
        (vs.constant(1.0, shape=[2, 2]), (2, 2), np.float32),
        (vs.constant(np.arange(6), shape=[2, 3]), (2, 3), np.int32),
        (vs.truncated_normal([5], stddev=2.0), (5,), np.float32),
        (vs.random_uniform([5], maxval=10, dtype=jnp.int32), (5,), np.int32),
        (vs.glorot_uniform([3, 4]), (3, 4), np.float32),
        (vs.glorot_normal([3, 4]), (3, 4), np.float32),
        (-vs.ones([2]) ** 2, (2,), np.float32),
        (2.0 * vs.ones([2], dtype=jnp.bfloat16), (2,), jnp.bfloat16),
    ],
)
def test_constructor_shapes_and_dtypes(expr, shape, dtype):
    assert expr.shape == shape
    assert expr.dtype == np.dtype(dtype)


def test_broadcast_mismatch_is_found_at_declaration_naming_both_shapes():
    with pytest.raises(vs.ShapeError, match=r"\(3,\) float32, \(4,\) float32"):
        vs.zeros([3]) + vs.ones([4])


def test_matmul_mismatch_names_shapes():
    with pytest.raises(vs.ShapeError, match=r"\(2, 3\).*\(4, 5\)"):
        vs.zeros([2, 3]) @ vs.zeros([4, 5])


def test_constant_that_cannot_fill_shape():
    with pytest.raises(vs.ShapeError, match=r"shape \(3,\) \(3 elements\) cannot fill"):
        vs.constant([1, 2, 3], shape=[2, 2])


def test_apply_runs_any_jax_function_lazily():
    e = vs.apply(jnp.tanh, vs.random_normal([3]))
    assert e.shape == (3,)
    v = vs.Variable(e, name="v")
    store = vs.initialize_all_variables()(0)
    assert float(jnp.abs(store[v]).max()) < 1.0


def test_apply_must_return_one_array():
    with pytest.raises(vs.InitializationError, match="must return one array"):
        vs.apply(lambda x: (x, x), vs.zeros([2]))


def test_bad_index_is_rejected():
    with pytest.raises(vs.InitializationError, match="Cannot index"):
        vs.zeros([3])[vs.zeros([1])]


def test_expression_is_not_a_bool():
    with pytest.raises(vs.InitializationError, match="cannot be used as a bool"):
        if vs.zeros([1]):
            pass


def test_callable_initializer_needs_shape():
    with pytest.raises(vs.InitializationError, match="needs the variable's shape"):
        vs.Variable(jax.nn.initializers.lecun_normal(), name="k")


def test_callable_initializer_with_shape():
    k = vs.Variable(jax.nn.initializers.lecun_normal(), name="k", shape=(4, 3))
    assert k.shape == (4, 3) and k.dtype == np.float32
    store = vs.initialize_all_variables()(0)
    assert store[k].shape == (4, 3)


def test_shape_argument_must_agree():
    with pytest.raises(vs.ShapeError, match=r"shape=\(3,\) was given but .* \(2,\)"):
        vs.Variable(vs.zeros([2]), name="v", shape=[3])


def test_dtype_argument_casts():
    v = vs.Variable(vs.ones([2]), name="v", dtype=jnp.int8)
    assert v.dtype == np.int8
    store = vs.initialize_all_variables()(0)
    assert store[v].dtype == np.int8


def test_integer_uniform_requires_maxval():
    with pytest.raises(vs.InitializationError, match="maxval is required"):
        vs.random_uniform([2], dtype=jnp.int32)


def test_random_normal_rejects_integer_dtype():
    with pytest.raises(vs.InitializationError, match="floating"):
        vs.random_normal([2], dtype=jnp.int32)


def test_string_constant_rejected():
    with pytest.raises(vs.InitializationError, match="only numeric and bool"):
        vs.Variable(np.array(["a"]), name="s")


def test_truncated_normal_is_cut_at_two_stddev():
    v = vs.Variable(vs.truncated_normal([20000], mean=1.0, stddev=0.5), name="t")
    x = np.asarray(vs.initialize_all_variables()(0)[v])
    assert x.min() >= 0.0 and x.max() <= 2.0
    assert abs(x.mean() - 1.0) < 0.02


def test_random_normal_moments():
    v = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="weights")
    x = np.asarray(vs.initialize_all_variables()(0)[v])
    assert abs(x.std() - 0.35) < 0.01 and abs(x.mean()) < 0.01
