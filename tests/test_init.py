import jax
import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs
from varstore import _plan


def _howto():
    weights = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="weights")
    biases = vs.Variable(vs.zeros([200]), name="biases")
    w2 = vs.Variable(weights.initialized_value(), name="w2")
    w_twice = vs.Variable(weights.initialized_value() * 2.0, name="w_twice")
    return weights, biases, w2, w_twice


def test_initialized_value_is_exact():
    weights, biases, w2, w_twice = _howto()
    store = vs.initialize_all_variables()(jax.random.key(0))
    assert sorted(store) == ["biases", "w2", "w_twice", "weights"]
    np.testing.assert_array_equal(store[w2], store[weights])
    np.testing.assert_array_equal(store[w_twice], 2.0 * np.asarray(store[weights]))
    np.testing.assert_array_equal(store[biases], np.zeros(200, np.float32))


def test_initialized_value_reads_the_store_when_it_has_the_variable():
    weights, _, w2, _ = _howto()
    store = vs.VarStore({"weights": jnp.full((784, 200), 3.0)})
    store = vs.initialize_variables([w2])(jax.random.key(0), store)
    np.testing.assert_array_equal(store[w2], np.full((784, 200), 3.0))
    np.testing.assert_array_equal(store["weights"], np.full((784, 200), 3.0))


def test_initialized_value_without_store_value_uses_the_initial_value():
    weights, _, w2, _ = _howto()
    full = vs.initialize_all_variables()(jax.random.key(0))
    only_w2 = vs.initialize_variables([w2])(jax.random.key(0))
    assert list(only_w2) == ["w2"]
    np.testing.assert_array_equal(only_w2[w2], full[weights])


def test_subset_gives_the_same_values():
    vars_ = [vs.Variable(vs.random_normal([16]), name=f"v{i}") for i in range(6)]
    full = vs.initialize_all_variables()(jax.random.key(3))
    part = vs.initialize_variables([vars_[4], "v1"])(jax.random.key(3))
    np.testing.assert_array_equal(part["v4"], full["v4"])
    np.testing.assert_array_equal(part["v1"], full["v1"])


def test_adding_a_variable_changes_no_other_value():
    a = vs.Variable(vs.random_normal([32]), name="a")
    b = vs.Variable(vs.random_uniform([8, 8]), name="b")
    before = vs.initialize_all_variables()(jax.random.key(1))
    vs.Variable(vs.random_normal([32]), name="c")
    vs.Variable(vs.random_normal([32]), name="aa")
    after = vs.initialize_all_variables()(jax.random.key(1))
    np.testing.assert_array_equal(before[a], after[a])
    np.testing.assert_array_equal(before[b], after[b])


def test_same_key_same_values_other_key_other_values():
    vs.Variable(vs.random_normal([64]), name="a")
    init = vs.initialize_all_variables()
    x, y, z = init(jax.random.key(0)), init(jax.random.key(0)), init(jax.random.key(1))
    np.testing.assert_array_equal(x["a"], y["a"])
    assert not np.array_equal(x["a"], z["a"])


def test_different_names_give_different_values():
    vs.Variable(vs.random_normal([64]), name="a")
    vs.Variable(vs.random_normal([64]), name="b")
    store = vs.initialize_all_variables()(0)
    assert not np.array_equal(store["a"], store["b"])


def test_int_seed_legacy_key_and_typed_key_agree():
    vs.Variable(vs.random_normal([8]), name="a")
    init = vs.initialize_all_variables()
    x = init(5)
    y = init(jax.random.key(5))
    z = init(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(x["a"], y["a"])
    np.testing.assert_array_equal(x["a"], z["a"])


@pytest.mark.parametrize("bad", ["0", 1.5, jax.random.split(jax.random.key(0), 2), None])
def test_non_key_is_rejected(bad):
    vs.Variable(vs.random_normal([8]), name="a")
    with pytest.raises(vs.InitializationError, match="needs one JAX PRNG key or an int seed"):
        vs.initialize_all_variables()(bad)


def test_shared_expression_is_evaluated_once():
    e = vs.random_normal([10])
    a = vs.Variable(e, name="a")
    b = vs.Variable(e, name="b")
    c = vs.Variable(a.initial_value + 1.0, name="c")
    store = vs.initialize_all_variables()(0)
    np.testing.assert_array_equal(store[a], store[b])
    np.testing.assert_array_equal(store[c], np.asarray(store[a]) + 1.0)
    # The shared expression is keyed by its first user, so b alone matches too.
    alone = vs.initialize_variables([b])(0)
    np.testing.assert_array_equal(alone[b], store[a])


def test_several_random_subexpressions_get_distinct_keys():
    v = vs.Variable(vs.random_normal([10]) - vs.random_normal([10]), name="v")
    store = vs.initialize_all_variables()(0)
    assert np.abs(np.asarray(store[v])).max() > 0


def test_explicit_seed_replaces_the_name():
    a = vs.Variable(vs.random_normal([10], seed=7), name="a")
    b = vs.Variable(vs.random_normal([10], seed=7), name="b")
    c = vs.Variable(vs.random_normal([10], seed=8), name="c")
    store = vs.initialize_all_variables()(0)
    np.testing.assert_array_equal(store[a], store[b])
    assert not np.array_equal(store[a], store[c])


def test_grouped_values_equal_ungrouped_definition():
    vars_ = [vs.Variable(vs.random_normal([128], stddev=2.0), name=f"g{i}") for i in range(5)]
    plan = _plan.build(vars_, frozenset())
    assert len(plan.programs[0].groups) == 1
    grouped = vs.initialize_all_variables()(jax.random.key(9))
    # Evaluate each alone: a single variable is never grouped.
    for v in vars_:
        alone = vs.initialize_variables([v])(jax.random.key(9))
        np.testing.assert_array_equal(alone[v], grouped[v])
    # And against the documented derivation, computed by hand.
    key = jax.random.key(9)
    hi, lo = _plan.name_hash("name:g3")
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, hi), lo), 0)
    np.testing.assert_array_equal(grouped["g3"], 2.0 * jax.random.normal(k, (128,)))


def test_sixty_variables_compile_at_most_three_times_and_never_again(compiles):
    for i in range(20):
        vs.Variable(vs.random_normal([32, 8]), name=f"w{i}")
        vs.Variable(vs.zeros([8]), name=f"b{i}")
        vs.Variable(vs.truncated_normal([7, i + 1]), name=f"t{i}")
    init = vs.initialize_all_variables()
    jax.block_until_ready(init(jax.random.key(0)))
    assert 1 <= len(compiles) <= 3
    first = len(compiles)
    jax.block_until_ready(init(jax.random.key(1)))
    jax.block_until_ready(init(2))
    assert len(compiles) == first


def test_thousands_of_variables_make_one_program():
    vars_ = [vs.Variable(vs.random_normal([64]), name=f"v{i}") for i in range(2000)]
    plan = _plan.build(vars_, frozenset())
    assert len(plan.programs) == 1
    assert len(plan.programs[0].singles) == 0
    assert sum(len(g.members) for g in plan.programs[0].groups) == 2000


def test_initializer_keeps_other_store_entries():
    a = vs.Variable(vs.zeros([2]), name="a")
    b = vs.Variable(vs.ones([2]), name="b")
    store = vs.initialize_variables([a])(0)
    store = store.assign(a, jnp.array([5.0, 6.0]))
    store = vs.initialize_variables([b])(0, store)
    np.testing.assert_array_equal(store[a], [5.0, 6.0])
    np.testing.assert_array_equal(store[b], [1.0, 1.0])


def test_constant_variables_keep_their_values():
    v = vs.Variable(np.arange(6, dtype=np.int16).reshape(2, 3), name="c")
    s = vs.Variable(2.5, name="s")
    store = vs.initialize_all_variables()(0)
    assert store[v].dtype == np.int16
    np.testing.assert_array_equal(store[v], np.arange(6).reshape(2, 3))
    assert store[s].dtype == np.float32 and float(store[s]) == 2.5


def test_constant_inside_an_expression():
    base = np.arange(4, dtype=np.float32)
    v = vs.Variable(vs.constant(base) * 3.0 + vs.ones([4]), name="v")
    store = vs.initialize_all_variables()(0)
    np.testing.assert_array_equal(store[v], base * 3 + 1)


def test_variable_as_initial_value_means_its_value():
    a = vs.Variable(vs.random_normal([3]), name="a")
    b = vs.Variable(a, name="b")
    store = vs.initialize_all_variables()(0)
    np.testing.assert_array_equal(store[a], store[b])


def test_duplicate_in_initialize_variables():
    a = vs.Variable(vs.zeros([2]), name="a")
    with pytest.raises(vs.InitializationError, match="'a' is listed twice"):
        vs.initialize_variables([a, "a"])


def test_unknown_name_in_initialize_variables():
    vs.Variable(vs.zeros([2]), name="weights")
    with pytest.raises(vs.NotFoundError, match="no variable named 'weight'.*'weights'"):
        vs.initialize_variables(["weight"])


def test_single_variable_instead_of_list():
    a = vs.Variable(vs.zeros([2]), name="a")
    with pytest.raises(vs.InitializationError, match=r"Wrap it in a list"):
        vs.initialize_variables(a)


def test_variables_from_two_graphs_are_rejected():
    a = vs.Variable(vs.zeros([2]), name="a")
    with vs.Graph().as_default():
        b = vs.Variable(vs.zeros([2]), name="b")
    with pytest.raises(vs.GraphError, match="2 different graphs"):
        vs.initialize_variables([a, b])


def test_store_argument_must_be_a_store():
    vs.Variable(vs.zeros([2]), name="a")
    with pytest.raises(vs.InitializationError, match="must be a vs.VarStore"):
        vs.initialize_all_variables()(0, {"a": 1})


def test_global_variables_initializer_alias_and_snapshot():
    vs.Variable(vs.zeros([2]), name="a")
    init = vs.global_variables_initializer()
    vs.Variable(vs.zeros([2]), name="late")
    assert list(init(0)) == ["a"]
    assert vs.variables_initializer is vs.initialize_variables


def test_uninitialized_reports():
    a = vs.Variable(vs.zeros([2]), name="a")
    b = vs.Variable(vs.zeros([2]), name="b")
    store = vs.initialize_variables([a])(0)
    assert vs.report_uninitialized_variables(store) == ["b"]
    assert vs.report_uninitialized_variables(store, [a]) == []
    assert vs.is_variable_initialized(store, a)
    assert not vs.is_variable_initialized(store, "b")
    with pytest.raises(vs.UninitializedError, match="1 variable.*'b'"):
        vs.assert_variables_initialized(store)
    vs.assert_variables_initialized(store, [a])
    store = vs.initialize_variables([b])(0, store)
    vs.assert_variables_initialized(store)
