import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import varstore as vs


@pytest.fixture
def model():
    w = vs.Variable(vs.random_normal([4, 3]), name="layer/w")
    b = vs.Variable(vs.zeros([3]), name="layer/b")
    step = vs.Variable(0, name="step", trainable=False)
    store = vs.initialize_all_variables()(0)
    return w, b, step, store


def test_mapping_interface(model):
    w, b, step, store = model
    assert len(store) == 3
    assert list(store) == ["layer/b", "layer/w", "step"]
    assert w in store and "layer/b" in store and "nope" not in store
    assert store[w] is store["layer/w"]
    assert set(store.to_dict()) == {"layer/b", "layer/w", "step"}


def test_missing_name_lists_close_names(model):
    *_, store = model
    with pytest.raises(vs.NotFoundError, match="'layer/ww' is not in this store.*'layer/w'"):
        store["layer/ww"]


def test_bad_key_type(model):
    *_, store = model
    with pytest.raises(vs.VarStoreError, match="indexed by a vs.Variable or a variable name"):
        store[3]


def test_store_is_immutable(model):
    w, *_, store = model
    with pytest.raises(vs.VarStoreError, match="immutable"):
        store["layer/w"] = jnp.zeros((4, 3))
    with pytest.raises(vs.VarStoreError, match="immutable"):
        store.x = 1


def test_pytree_keys_show_names(model):
    *_, store = model
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(store)[0]]
    assert paths == ["['layer/b']", "['layer/w']", "['step']"]


def test_jit_and_grad_return_stores(model):
    w, b, step, store = model
    params = store.trainable()
    assert list(params) == ["layer/b", "layer/w"]

    @jax.jit
    def loss(p):
        return jnp.sum((jnp.ones((2, 4)) @ p["layer/w"] + p["layer/b"]) ** 2)

    grads = jax.grad(loss)(params)
    assert isinstance(grads, vs.VarStore)
    assert list(grads) == list(params)
    doubled = jax.jit(lambda s: jax.tree.map(lambda x: x * 2, s))(store)
    assert isinstance(doubled, vs.VarStore)
    np.testing.assert_array_equal(doubled[w], 2 * np.asarray(store[w]))


def test_vmap_over_a_store(model):
    w, *_, store = model
    batched = jax.tree.map(lambda x: jnp.stack([x, x + 1]), store)
    out = jax.vmap(lambda s: s["layer/w"].sum())(batched)
    assert out.shape == (2,)


def test_optax_step(model):
    w, b, step, store = model
    params = store.trainable()
    opt = optax.adam(0.1)
    state = opt.init(params)
    grads = jax.grad(lambda p: jnp.sum(p["layer/w"] ** 2) + jnp.sum(p["layer/b"] ** 2))(params)
    updates, state = opt.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert isinstance(new, vs.VarStore)
    store = store.merge(new)
    assert float(jnp.abs(store[w]).sum()) < float(jnp.abs(params[w]).sum())


def test_assign_keeps_dtype_and_sharding(model):
    w, b, step, store = model
    new = store.assign(step, 5)
    assert new["step"].dtype == np.int32 and int(new["step"]) == 5
    assert int(store["step"]) == 0  # the original is unchanged
    new = new.assign(w, np.ones((4, 3), np.float64))
    assert new[w].dtype == np.float32
    assert new[w].sharding == store[w].sharding


def test_assign_add_and_sub(model):
    w, b, step, store = model
    s = store.assign_add(step, 1).assign_add("step", 2).assign_sub(step, 1)
    assert int(s["step"]) == 2
    s = s.assign_add(b, 1.0)
    np.testing.assert_array_equal(s[b], np.ones(3))


def test_assign_shape_change_is_an_error(model):
    w, *_, store = model
    with pytest.raises(vs.ShapeError, match=r"'layer/w' has shape \(4, 3\) but the value has shape \(3, 4\)"):
        store.assign(w, jnp.zeros((3, 4)))


def test_assign_shape_change_allowed_without_validate_shape():
    v = vs.Variable(vs.zeros([2]), name="v", validate_shape=False)
    store = vs.initialize_all_variables()(0)
    assert store.assign(v, jnp.zeros(5))["v"].shape == (5,)
    assert store.assign("v", jnp.zeros(7))["v"].shape == (7,)


def test_assign_lossy_dtype_is_an_error(model):
    w, b, step, store = model
    with pytest.raises(vs.ShapeError, match="dtype int32 but the value has dtype float32"):
        store.assign(step, jnp.float32(1.5))


def test_assign_add_must_broadcast(model):
    w, *_, store = model
    with pytest.raises(vs.ShapeError, match=r"delta has shape \(5,\)"):
        store.assign_add(w, jnp.zeros(5))


def test_assign_unknown_name(model):
    *_, store = model
    with pytest.raises(vs.NotFoundError, match="'nope' is neither in this store"):
        store.assign("nope", 1.0)


def test_assign_declared_variable_not_yet_in_store():
    v = vs.Variable(vs.zeros([2]), name="v")
    store = vs.VarStore({}).assign(v, [1, 2])
    assert store["v"].dtype == np.float32
    np.testing.assert_array_equal(store["v"], [1.0, 2.0])


def test_update_subset_merge(model):
    w, b, step, store = model
    s = store.update({"step": 3, b: jnp.ones(3), "extra": jnp.arange(2)})
    assert int(s["step"]) == 3 and "extra" in s
    sub = s.subset([w, "step"])
    assert list(sub) == ["layer/w", "step"]
    merged = sub.merge({"step": jnp.int32(9)})
    assert int(merged["step"]) == 9 and len(merged) == 2
    with pytest.raises(vs.NotFoundError):
        store.subset(["missing"])


def test_construct_from_dict_and_nesting_rule():
    s = vs.VarStore({"a/b": np.zeros(2), "c": 1.0})
    assert s["a/b"].dtype == np.float64 or s["a/b"].dtype == np.float32
    with pytest.raises(vs.VarStoreError, match="both 'a' and 'a/b'"):
        vs.VarStore({"a/b": np.zeros(2), "a-x": 1.0, "a": 1.0})
    with pytest.raises(vs.InvalidNameError):
        vs.VarStore({"../x": 1.0})
    with pytest.raises(vs.VarStoreError, match="only numeric and bool"):
        vs.VarStore({"s": np.array(["x"])})


def test_summary_and_repr(model):
    *_, store = model
    text = store.summary()
    assert "layer/w" in text and "[4,3]" in text and "float32" in text and "CPU:0" in text
    assert text.splitlines()[-1] == "Total: 3 variables, 16 parameters, 64 B"
    assert repr(store).startswith("VarStore({layer/b: [3] float32")


def test_summary_under_jit_shows_traced(model):
    *_, store = model
    seen = []
    jax.jit(lambda s: seen.append(s.summary()) or 0)(store)
    assert "traced" in seen[0]
