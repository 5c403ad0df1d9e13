import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

import varstore as vs
from varstore import _pytree
from varstore._names import name_problem


def assert_same(a, b):
    """Same structure, and bit-identical leaves (keys compared by key data)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if _pytree.is_key(x):
            assert _pytree.is_key(y) and x.dtype == y.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        x, y = np.asarray(jnp.asarray(x)), np.asarray(jnp.asarray(y))
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def round_trip(tree, like=None, prefix=""):
    store = vs.VarStore.from_pytree(tree, prefix)
    back = store.to_pytree(tree if like is None else like, prefix)
    assert_same(tree, back)
    return store


PARAMS = {"dense": {"kernel": jnp.arange(12.0).reshape(3, 4), "bias": jnp.ones(4)}}


# -- round trips ------------------------------------------------------------------------
def test_nested_dicts_lists_and_tuples():
    tree = {"a": [jnp.zeros(2), (jnp.ones(3), {"b": jnp.int32(7)})], "c": jnp.eye(2)}
    store = round_trip(tree)
    assert list(store) == ["a/0", "a/1/0", "a/1/1/b", "c"]


class Point(NamedTuple):
    x: jax.Array
    y: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Layer:
    w: jax.Array
    b: jax.Array
    act: str = dataclasses.field(default="relu", metadata=dict(static=True))


def test_namedtuple_and_dataclass_fields_name_the_leaves():
    tree = {"p": Point(jnp.ones(2), jnp.zeros(2)), "layer": Layer(jnp.ones((2, 2)), jnp.ones(2))}
    store = round_trip(tree)
    assert list(store) == ["layer/b", "layer/w", "p/x", "p/y"]


def test_adam_state():
    state = optax.adam(1e-3).init(PARAMS)
    store = round_trip(state, prefix="opt")
    assert "opt/0/count" in store and "opt/0/mu/dense/kernel" in store


def test_nested_optax_chain_with_empty_states():
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(1e-4)),
        optax.scale(-1e-3),
    )
    state = tx.init(PARAMS)
    store = round_trip(state)
    # EmptyState() and () have no leaves: only Adam's count, mu and nu are stored.
    assert sorted({n.split("/")[-1] for n in store}) == ["bias", "count", "kernel"]
    assert "1/0/count" in store
    assert_same(store.to_pytree(jax.eval_shape(lambda: state)), state)


def test_optax_update_runs_on_the_rebuilt_state():
    tx = optax.adamw(1e-2)
    state = tx.init(PARAMS)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    _, state = tx.update(grads, state, PARAMS)
    back = vs.VarStore.from_pytree(state).to_pytree(tx.init(PARAMS))
    assert_same(tx.update(grads, back, PARAMS), tx.update(grads, state, PARAMS))


def test_none_leaves_and_empty_subtrees_come_back_from_like():
    tree = {"a": None, "b": (), "c": {}, "d": [jnp.ones(1), None], "e": optax.EmptyState()}
    store = vs.VarStore.from_pytree(tree)
    assert list(store) == ["d/0"]
    assert_same(store.to_pytree(tree), tree)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_typed_prng_keys_are_saved_as_key_data(impl):
    key = jax.random.key(3, impl=impl)
    tree = {"rng": key, "batch": jax.random.split(key, 4)}
    store = vs.VarStore.from_pytree(tree)
    assert list(store) == ["batch-key_data", "rng-key_data"]
    assert store["rng-key_data"].dtype == jnp.uint32
    assert np.array_equal(store["rng-key_data"], jax.random.key_data(key))
    back = store.to_pytree(jax.eval_shape(lambda: tree))
    assert jax.random.key_impl(back["rng"]) == jax.random.key_impl(key)
    assert_same(back, tree)
    # The restored key draws the same numbers.
    assert np.array_equal(jax.random.normal(back["rng"], (3,)), jax.random.normal(key, (3,)))


def test_raw_uint32_keys_are_plain_arrays():
    store = round_trip({"rng": jax.random.PRNGKey(0)})
    assert list(store) == ["rng"]


def test_bfloat16_leaves_keep_their_dtype():
    tree = {"jax": jnp.ones(3, jnp.bfloat16), "numpy": np.full(2, 1.5, ml_dtypes.bfloat16)}
    store = vs.VarStore.from_pytree(tree)
    assert store["jax"].dtype == jnp.bfloat16 and store["numpy"].dtype == jnp.bfloat16
    back = store.to_pytree(jax.eval_shape(lambda: tree))
    assert back["numpy"].dtype == jnp.bfloat16
    assert np.array_equal(np.asarray(back["numpy"], np.float32), [1.5, 1.5])


def test_python_numbers_and_numpy_leaves():
    tree = {"step": 7, "lr": 0.5, "flag": True, "np": np.arange(3)}
    back = vs.VarStore.from_pytree(tree).to_pytree(tree)
    assert int(back["step"]) == 7 and back["step"].dtype == jnp.int32
    assert float(back["lr"]) == 0.5 and bool(back["flag"]) is True
    assert np.array_equal(back["np"], np.arange(3))


def test_prefix_puts_leaves_under_a_scope():
    store = vs.VarStore.from_pytree(PARAMS, prefix="model/params")
    assert list(store) == ["model/params/dense/bias", "model/params/dense/kernel"]
    assert_same(store.to_pytree(PARAMS, prefix="model/params/"), PARAMS)


def test_training_layout_in_one_store():
    state = optax.adam(1e-3).init(PARAMS)
    tree = {"params": PARAMS, "opt": state, "step": 10, "rng": jax.random.key(0)}
    store = round_trip(tree, like=jax.eval_shape(lambda: tree))
    assert {n.split("/")[0] for n in store} == {"opt", "params", "rng-key_data", "step"}
    # One part of it, by prefix.
    assert_same(store.to_pytree(PARAMS, prefix="params"), PARAMS)


def test_works_inside_jit():
    @jax.jit
    def f(tree):
        store = vs.VarStore.from_pytree(tree)
        return store.to_pytree(tree)

    assert_same(f(PARAMS), PARAMS)


def test_leaves_go_onto_the_sharding_of_like():
    mesh = jax.make_mesh((8,), ("x",))
    sharding = NamedSharding(mesh, P("x"))
    like = {"w": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=sharding), "k": jax.random.key(0)}
    store = vs.VarStore.from_pytree({"w": jnp.arange(16.0), "k": jax.random.key(1)})
    back = store.to_pytree(like)
    assert back["w"].sharding == sharding
    assert np.array_equal(back["w"], np.arange(16.0))


def test_round_trip_through_a_saver(tmp_path):
    tree = {
        "params": {"w": jnp.ones((2, 3), jnp.bfloat16)},
        "opt": optax.adam(1e-3).init({"w": jnp.ones((2, 3), jnp.bfloat16)}),
        "rng": jax.random.key(5),
    }
    store = vs.VarStore.from_pytree(tree)
    saver = vs.train.Saver(list(store))
    path = saver.save(store, tmp_path / "model.ckpt")
    assert_same(saver.restore(path).to_pytree(tree), tree)


# -- the escaping rule ----------------------------------------------------------------
@pytest.mark.parametrize(
    "key, part",
    [
        ("kernel", "kernel"),
        ("Dense_0", "Dense_0"),
        ("v1.2", "v1.2"),
        ("", "-"),
        (".", "-2E"),
        ("..", "-2E-2E"),
        ("...", "..."),
        ("a/b", "a-2Fb"),
        ("a b", "a-20b"),
        ("model-v2", "model-2Dv2"),
        ("mlp/~/linear_0", "mlp-2F-7E-2Flinear_0"),
        ("é", "-C3-A9"),
        ("-", "-2D"),
        ("-2D", "-2D2D"),
    ],
)
def test_escaping_examples(key, part):
    assert _pytree.escape_part(key) == part
    assert _pytree.unescape_part(part) == key


@given(st.text(max_size=40))
def test_any_string_key_round_trips(key):
    part = _pytree.escape_part(key)
    assert name_problem(part) is None
    assert not part.endswith(_pytree.KEY_SUFFIX)
    assert _pytree.unescape_part(part) == key


@given(st.dictionaries(st.text(max_size=12), st.integers(-5, 5), min_size=1, max_size=5))
def test_any_dict_keys_round_trip_through_a_store(tree):
    tree = {k: jnp.int32(v) for k, v in tree.items()}
    store = vs.VarStore.from_pytree(tree)
    assert sorted(_pytree.unescape_part(n) for n in store) == sorted(tree)
    assert_same(store.to_pytree(tree), tree)


def test_unescape_rejects_what_escape_never_writes():
    with pytest.raises(vs.InvalidNameError, match="not followed by two upper-case hex"):
        _pytree.unescape_part("a-2g")


def test_non_str_keys_use_str():
    store = vs.VarStore.from_pytree({"layers": {0: jnp.ones(1), 1: jnp.ones(1)}, "t": {(1, 2): jnp.ones(1)}})
    assert list(store) == ["layers/0", "layers/1", "t/-281-2C-202-29"]


# -- errors ---------------------------------------------------------------------------
def test_missing_leaves_are_named_with_their_paths():
    store = vs.VarStore.from_pytree({"dense": {"kernel": jnp.ones(2)}})
    with pytest.raises(vs.NotFoundError, match=r"no entry for 1 .*'dense/bias' \(at \['dense'\]\['bias'\]\)"):
        store.to_pytree({"dense": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}})


def test_missing_error_is_a_missing_path_error_and_shows_extras():
    store = vs.VarStore.from_pytree({"dense": {"kernal": jnp.ones(2)}})
    with pytest.raises(_pytree.MissingPathError, match=r"Did you mean 'dense/kernal'.*does not name: 'dense/kernal'"):
        store.to_pytree({"dense": {"kernel": jnp.ones(2)}})


def test_on_missing_keep_keeps_likes_values():
    store = vs.VarStore.from_pytree({"a": jnp.zeros(2)})
    out = store.to_pytree({"a": jnp.ones(2), "b": jnp.ones(3)}, on_missing="keep")
    assert np.array_equal(out["a"], [0, 0]) and np.array_equal(out["b"], [1, 1, 1])


def test_on_missing_keep_cannot_invent_abstract_leaves():
    store = vs.VarStore.from_pytree({"a": jnp.zeros(2)})
    with pytest.raises(_pytree.MissingPathError, match="'b"):
        store.to_pytree({"a": jnp.ones(2), "b": jax.ShapeDtypeStruct((3,), jnp.float32)}, on_missing="keep")


def test_extra_entries_are_an_error_unless_ignored():
    store = vs.VarStore.from_pytree({"a": jnp.zeros(2), "b": jnp.zeros(2), "other": jnp.ones(1)})
    with pytest.raises(_pytree.ExtraPathError, match=r"2 entries under the root .*'b', 'other'.*prefix="):
        store.to_pytree({"a": jnp.ones(2)})
    out = store.to_pytree({"a": jnp.ones(2)}, on_extra="ignore")
    assert np.array_equal(out["a"], [0, 0])


def test_extra_entries_are_only_those_under_the_prefix():
    store = vs.VarStore.from_pytree({"params": {"w": jnp.ones(1)}, "step": 3})
    assert_same(store.to_pytree({"w": jnp.ones(1)}, prefix="params"), {"w": jnp.ones(1)})


def test_shape_mismatch_names_the_path_and_both_shapes():
    store = vs.VarStore.from_pytree({"w": jnp.ones((2, 3))})
    with pytest.raises(_pytree.LeafMismatchError, match=r"\['w'\] has shape \(3, 2\) in `like` .*'w' has shape \(2, 3\)"):
        store.to_pytree({"w": jax.ShapeDtypeStruct((3, 2), jnp.float32)})


def test_dtype_mismatch_is_a_shape_error_with_a_fix():
    store = vs.VarStore.from_pytree({"w": jnp.ones(2, jnp.bfloat16)})
    with pytest.raises(vs.ShapeError, match=r"dtype float32 in `like` .*dtype bfloat16\. Cast the entry first"):
        store.to_pytree({"w": jnp.ones(2)})


def test_key_mismatch_says_key_data():
    store = vs.VarStore.from_pytree({"rng": jax.random.key(0)})
    with pytest.raises(_pytree.LeafMismatchError, match=r"key data 'rng-key_data' has shape \(2,\)"):
        store.to_pytree({"rng": jax.random.key(0, impl="rbg")})


class Tag:
    """A dict key whose instances differ but print alike."""

    def __init__(self, i):
        self.i = i

    def __hash__(self):
        return self.i

    def __eq__(self, other):
        return isinstance(other, Tag) and other.i == self.i

    def __lt__(self, other):
        return self.i < other.i

    def __str__(self):
        return "tag"


def test_keys_that_print_alike_clash():
    with pytest.raises(vs.InvalidNameError, match=r"both get the name 't/tag'"):
        vs.VarStore.from_pytree({"t": {Tag(0): jnp.ones(1), Tag(1): jnp.ones(1)}})


def test_a_single_leaf_needs_a_prefix():
    with pytest.raises(vs.InvalidNameError, match="Pass prefix="):
        vs.VarStore.from_pytree(jnp.ones(2))
    store = vs.VarStore.from_pytree(jax.random.key(0), prefix="rng")
    assert list(store) == ["rng-key_data"]
    assert _pytree.is_key(store.to_pytree(jax.random.key(1), prefix="rng"))


def test_too_long_names_are_refused_with_the_path():
    with pytest.raises(vs.InvalidNameError, match=r"leaf at \['x+'\] .*bytes long"):
        vs.VarStore.from_pytree({"x" * 600: jnp.ones(1)})


def test_bad_prefix():
    with pytest.raises(vs.InvalidNameError, match="Invalid prefix 'a b'"):
        vs.VarStore.from_pytree(PARAMS, prefix="a b")


def test_abstract_and_non_array_leaves_cannot_be_stored():
    with pytest.raises(_pytree.PytreeError, match=r"\['w'\] \('w'\) is abstract"):
        vs.VarStore.from_pytree({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    with pytest.raises(vs.VarStoreError, match=r"\['name'\] .* is str 'relu', not an array"):
        vs.VarStore.from_pytree({"name": "relu"})


def test_bad_options():
    store = vs.VarStore.from_pytree(PARAMS)
    with pytest.raises(vs.VarStoreError, match="on_missing must be 'error' or 'keep'"):
        store.to_pytree(PARAMS, on_missing="skip")
    with pytest.raises(vs.VarStoreError, match="on_extra must be 'error' or 'ignore'"):
        store.to_pytree(PARAMS, on_extra="skip")


# -- Flax containers as plain pytrees ---------------------------------------------------
def test_nnx_state_round_trips_with_variable_paths():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.layers = nnx.List([nnx.Linear(2, 3, rngs=rngs), nnx.Linear(3, 1, rngs=rngs)])
            self.bn = nnx.BatchNorm(3, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0, dropout=1)))
    store = round_trip(state)
    assert "layers/0/kernel" in store and "bn/mean" in store
    assert "drop/rngs/key-key_data" in store and "drop/rngs/count" in store
    back = store.to_pytree(state)
    assert type(back["layers"][0]["kernel"]) is nnx.Param


def test_linen_params_round_trip():
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(3), nn.LayerNorm(), nn.Dense(1)])
    variables = model.init(jax.random.key(0), jnp.ones((1, 2)))
    store = round_trip(variables, like=jax.eval_shape(lambda: variables))
    assert sorted(store) == [
        "params/layers_0/bias", "params/layers_0/kernel",
        "params/layers_1/bias", "params/layers_1/scale",
        "params/layers_2/bias", "params/layers_2/kernel",
    ]


def test_a_varstore_in_the_tree_keeps_its_names():
    w = vs.Variable(vs.ones([2, 2]), name="layer/w")
    b = vs.Variable(vs.zeros([2]), name="layer/b")
    params = vs.initialize_all_variables()(0)
    state = optax.adam(1e-3).init(params.trainable())
    store = vs.VarStore.from_pytree({"params": params, "opt": state})
    assert list(store) == [
        "opt/0/count", "opt/0/mu/layer/b", "opt/0/mu/layer/w",
        "opt/0/nu/layer/b", "opt/0/nu/layer/w", "params/layer/b", "params/layer/w",
    ]
    back = store.to_pytree({"params": params, "opt": state})
    assert isinstance(back["params"], vs.VarStore) and isinstance(back["opt"][0].mu, vs.VarStore)
    assert np.array_equal(back["params"][w], params[w]) and b.name in back["opt"][0].nu
