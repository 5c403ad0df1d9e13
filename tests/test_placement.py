"""Placement and sharding: device strings, devices, shardings, PartitionSpecs, device
functions, `vs.sharding_rules`, soft placement, and sharded initialization on 8 CPU
devices (see conftest.py)."""

import functools
import gc
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

import varstore as vs
from varstore import _init, _plan

GRAMMAR = re.escape("[/job:NAME][/replica:N][/task:N][/device:]TYPE:N")


@pytest.fixture
def mesh42():
    return Mesh(np.array(jax.devices()).reshape(4, 2), ("a", "b"))


@pytest.fixture
def mesh8():
    return Mesh(np.array(jax.devices()), ("x",))


def _cpu(i):
    return SingleDeviceSharding(jax.devices("cpu")[i])


def _declare(name="v", shape=(8, 4), **kwargs):
    return vs.Variable(vs.random_normal(list(shape)), name=name, **kwargs)


def _init_store(key=0):
    return vs.initialize_all_variables()(jax.random.key(key))


# -- device strings ----------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, index",
    [
        ("/cpu:0", 0),
        ("/CPU:3", 3),
        ("/device:CPU:1", 1),
        ("/device:cpu:7", 7),
        ("cpu:2", 2),
        ("/Cpu:4", 4),
        ("/job:ps/task:0/device:CPU:5", 5),
        ("/job:ps/replica:0/task:0/cpu:6", 6),
        ("/job:worker/task:0", 0),
        ("/cpu:*", 0),
    ],
)
def test_device_string_names_a_cpu_device(spec, index):
    with vs.device(spec):
        v = _declare()
    assert v.device == _cpu(index)


def test_device_string_value_lands_on_that_device():
    with vs.device("/device:CPU:3"):
        v = _declare()
    store = _init_store()
    assert store[v].sharding == _cpu(3)


@pytest.mark.parametrize("spec", ["/gpu:0", "/GPU:1", "/device:GPU:0", "/job:w/task:0/gpu:0"])
def test_gpu_string_on_a_cpu_host_is_an_error_listing_devices(spec):
    with vs.device(spec):
        with pytest.raises(vs.PlacementError, match=r"GPU:\d' of variable 'layer/w'") as info:
            vs.Variable(vs.zeros([2]), name="layer/w")
    message = str(info.value)
    assert "Devices here: CPU:0(task 0), CPU:1(task 0)" in message
    assert "CPU:7(task 0)" in message
    assert "soft_placement" in message


def test_cpu_index_beyond_the_host_is_an_error():
    with vs.device("/cpu:8"):
        with pytest.raises(vs.PlacementError, match=r"CPU:8' of variable 'v'.*not have.*CPU:7"):
            _declare()


def test_failed_placement_registers_no_variable():
    with vs.device("/gpu:0"):
        with pytest.raises(vs.PlacementError):
            _declare(name="w")
    assert vs.global_variables() == []


@pytest.mark.parametrize(
    "spec", ["/cpu:x", "/job:", "/gpu:0:1", "/foo:0/bar", "/cpu:0/gpu:0", "/task:0/task:1", "cpu"]
)
def test_malformed_device_string_shows_the_grammar(spec):
    with pytest.raises(vs.PlacementError, match=rf"Malformed device string.*{GRAMMAR}"):
        with vs.device(spec):
            pass


def test_malformed_device_argument_shows_the_grammar():
    with pytest.raises(vs.PlacementError, match=rf"'/cpu:x'.*{GRAMMAR}"):
        _declare(device="/cpu:x")


def test_device_rejects_a_non_placement():
    with pytest.raises(vs.PlacementError, match=r"cannot use int 3 as a placement"):
        with vs.device(3):
            pass


# -- devices, shardings and PartitionSpecs -----------------------------------------
def test_jax_device():
    with vs.device(jax.devices()[6]):
        v = _declare()
    assert v.device == _cpu(6)


def test_single_device_sharding():
    with vs.device(SingleDeviceSharding(jax.devices()[2])):
        v = _declare()
    assert v.device == _cpu(2)


def test_named_sharding(mesh42):
    sharding = NamedSharding(mesh42, P("a", "b"))
    with vs.device(sharding):
        v = _declare()
    assert v.device == sharding


def test_partition_spec_with_mesh_argument(mesh42):
    with vs.device(P("a", None), mesh=mesh42):
        v = _declare()
    assert v.device == NamedSharding(mesh42, P("a", None))


def test_partition_spec_with_jax_set_mesh(mesh42):
    with jax.set_mesh(mesh42):
        with vs.device(P(None, "b")):
            v = _declare()
    assert v.device == NamedSharding(mesh42, P(None, "b"))


def test_partition_spec_mesh_argument_wins_over_jax_mesh(mesh42, mesh8):
    with jax.set_mesh(mesh42), vs.device(P("x"), mesh=mesh8):
        v = _declare()
    assert v.device == NamedSharding(mesh8, P("x"))


def test_partition_spec_without_a_mesh_is_an_error():
    with vs.device(P("a")):
        with pytest.raises(vs.PlacementError, match=r"'v'.*PartitionSpec.*no mesh is known.*mesh="):
            _declare()


def test_partition_spec_naming_an_unknown_mesh_axis(mesh42):
    with vs.device(P("model"), mesh=mesh42):
        with pytest.raises(vs.PlacementError, match=r"'v'.*P\('model',\).*\{'a': 4, 'b': 2\}"):
            _declare()


def test_vs_device_mesh_must_be_a_mesh():
    with pytest.raises(vs.PlacementError, match=r"mesh must be a jax.sharding.Mesh"):
        with vs.device(P("a"), mesh=("a", 4)):
            pass


# -- device functions ---------------------------------------------------------------
def test_device_function_receives_the_variable():
    seen = []

    def fn(variable):
        seen.append((variable.name, variable.shape, variable.dtype))
        return "/cpu:2"

    with vs.name_scope("layer"), vs.device(fn):
        v = vs.Variable(vs.zeros([3, 5]), name="kernel")
    assert seen == [("layer/kernel", (3, 5), np.dtype("float32"))]
    assert v.device == _cpu(2)


def test_device_function_sees_the_unique_name():
    seen = []
    _declare(name="w")
    with vs.device(lambda var: seen.append(var.name)):
        _declare(name="w")
    assert seen == ["w_1"]


@pytest.mark.parametrize(
    "result, index", [(jax.devices()[4], 4), (SingleDeviceSharding(jax.devices()[5]), 5)]
)
def test_device_function_may_return_any_placement(result, index):
    with vs.device(lambda _: result):
        v = _declare()
    assert v.device == _cpu(index)


def test_device_function_returning_none_falls_through_to_outer_context():
    with vs.device("/cpu:3"), vs.device(lambda var: "/cpu:1" if var.name == "a" else None):
        a = _declare(name="a")
        b = _declare(name="b")
    assert a.device == _cpu(1)
    assert b.device == _cpu(3)


def test_device_function_returning_none_with_no_context_gives_default_device():
    with vs.device(lambda _: None):
        v = _declare()
    assert v.device == _cpu(0)


def test_device_function_returning_a_function_is_an_error():
    with vs.device(lambda _: (lambda _: "/cpu:0")):
        with pytest.raises(vs.PlacementError, match=r"'v' returned another function"):
            _declare()


# -- nesting and overriding ----------------------------------------------------------
def test_inner_string_overrides_outer_string():
    with vs.device("/cpu:1"), vs.device("/cpu:2"):
        v = _declare()
    assert v.device == _cpu(2)


def test_inner_string_overrides_outer_sharding(mesh42):
    with vs.device(P("a"), mesh=mesh42), vs.device("/cpu:3"):
        v = _declare()
    assert v.device == _cpu(3)


def test_inner_sharding_overrides_outer_string(mesh42):
    with vs.device("/cpu:3"), vs.device(P("a"), mesh=mesh42):
        v = _declare()
    assert v.device == NamedSharding(mesh42, P("a"))


def test_context_is_restored_after_the_block():
    with vs.device("/cpu:3"):
        with vs.device("/cpu:4"):
            pass
        inside = _declare(name="inside")
    outside = _declare(name="outside")
    assert inside.device == _cpu(3)
    assert outside.device == _cpu(0)


def test_device_none_clears_the_context():
    with vs.device("/cpu:3"), vs.device(None):
        v = _declare()
    assert v.device == _cpu(0)


def test_device_none_stops_partial_string_merging():
    with vs.device("/cpu:3"), vs.device(None), vs.device("/task:0"):
        v = _declare()
    assert v.device == _cpu(0)


def test_partial_strings_merge_as_in_tensorflow():
    with vs.device("/task:0"), vs.device("/cpu:3"):
        v = _declare()
    assert v.device == _cpu(3)


def test_outer_device_type_fills_an_inner_job_and_task():
    with vs.device("/cpu:3"), vs.device("/job:worker/task:0"):
        v = _declare()
    assert v.device == _cpu(3)


def test_device_argument_overrides_the_context(mesh42):
    with vs.device(P("a"), mesh=mesh42):
        a = _declare(name="a", device="/cpu:4")
        b = _declare(name="b", device=jax.devices()[2])
    assert a.device == _cpu(4)
    assert b.device == _cpu(2)


def test_device_argument_partial_string_merges_with_context():
    with vs.device("/cpu:5"):
        v = _declare(device="/task:0")
    assert v.device == _cpu(5)


def test_device_argument_partition_spec_uses_the_context_mesh(mesh42):
    with jax.set_mesh(mesh42):
        v = _declare(device=P("b"))
    assert v.device == NamedSharding(mesh42, P("b"))


# -- sharding_rules -----------------------------------------------------------------
def test_sharding_rules_first_full_match_wins(mesh42):
    rules = vs.sharding_rules([(r".*/kernel", P("a", "b")), (r"dense/.*", "/cpu:3")], mesh=mesh42)
    with vs.device(rules):
        kernel = vs.Variable(vs.zeros([8, 4]), name="dense/kernel")
        bias = vs.Variable(vs.zeros([4]), name="dense/bias")
    assert kernel.device == NamedSharding(mesh42, P("a", "b"))
    assert bias.device == _cpu(3)


def test_sharding_rules_prefix_match_is_no_match():
    with vs.device("/cpu:1"), vs.device(vs.sharding_rules([(r"dense", "/cpu:3")])):
        v = vs.Variable(vs.zeros([4]), name="dense/kernel")
    assert v.device == _cpu(1)


def test_sharding_rules_no_match_falls_through_to_enclosing_placement(mesh8):
    rules = vs.sharding_rules([(r".*kernel", P("x"))], mesh=mesh8)
    with vs.device(jax.devices()[6]), vs.device(rules):
        other = vs.Variable(vs.zeros([8]), name="step")
    assert other.device == _cpu(6)


def test_sharding_rules_no_match_and_no_context_gives_default_device(mesh8):
    with vs.device(vs.sharding_rules([(r".*kernel", P("x"))], mesh=mesh8)):
        v = vs.Variable(vs.zeros([8]), name="step")
    assert v.device == _cpu(0)


def test_sharding_rules_resolve_specs_against_their_mesh(mesh42, mesh8):
    rules = vs.sharding_rules([(r".*", P("x"))], mesh=mesh8)
    with jax.set_mesh(mesh42), vs.device(rules):
        v = _declare(shape=(16, 4))
    assert v.device == NamedSharding(mesh8, P("x"))


def test_sharding_rules_without_mesh_use_the_current_mesh(mesh42):
    with jax.set_mesh(mesh42), vs.device(vs.sharding_rules([(r".*", P("a"))])):
        v = _declare()
    assert v.device == NamedSharding(mesh42, P("a"))


def test_sharding_rules_see_name_scopes(mesh42):
    rules = vs.sharding_rules([(r"layer1/.*", P(None, "b"))], mesh=mesh42)
    with vs.device(rules), vs.name_scope("layer1"):
        v = _declare(name="w")
    assert v.name == "layer1/w"
    assert v.device == NamedSharding(mesh42, P(None, "b"))


def test_sharding_rules_bad_rule():
    with pytest.raises(vs.PlacementError, match=r"bad rule 'kernel'.*pair \(regex, placement\)"):
        vs.sharding_rules(["kernel"])


def test_sharding_rules_must_be_pairs_not_a_dict():
    with pytest.raises(vs.PlacementError, match=r"rules must be a list of \(regex, placement\)"):
        vs.sharding_rules({r".*": "/cpu:0"})


def test_sharding_rules_bad_regex():
    with pytest.raises(vs.PlacementError, match=r"bad rule \('\(kernel', '/cpu:0'\)"):
        vs.sharding_rules([("(kernel", "/cpu:0")])


def test_sharding_rules_check_placements_when_built():
    with pytest.raises(vs.PlacementError, match=rf"'/cpu:x'.*{GRAMMAR}"):
        vs.sharding_rules([(r".*", "/cpu:x")])


def test_sharding_rules_spec_with_unknown_axis(mesh42):
    with vs.device(vs.sharding_rules([(r".*", P("model"))], mesh=mesh42)):
        with pytest.raises(vs.PlacementError, match=r"'dense/w'.*P\('model',\)"):
            vs.Variable(vs.zeros([8]), name="dense/w")


# -- divisibility ---------------------------------------------------------------------
def test_indivisible_shape_is_an_error_at_declaration(mesh42):
    with vs.device(P("a", "b"), mesh=mesh42):
        with pytest.raises(
            vs.PlacementError,
            match=r"'w' of shape \(10, 4\) cannot be sharded by P\('a', 'b'\) over mesh axes "
            r"\{'a': 4, 'b': 2\}: dimension 10 is not divisible by 4",
        ):
            vs.Variable(vs.zeros([10, 4]), name="w")
    assert vs.global_variables() == []


def test_indivisible_shape_over_two_axes(mesh42):
    with vs.device(P(("a", "b")), mesh=mesh42):
        with pytest.raises(vs.PlacementError, match=r"'w'.*12 is not divisible by 8 \(a x b\)"):
            vs.Variable(vs.zeros([12]), name="w")


def test_indivisible_named_sharding_is_an_error(mesh8):
    with pytest.raises(vs.PlacementError, match=r"'w' of shape \(6,\).*\{'x': 8\}"):
        vs.Variable(vs.zeros([6]), name="w", device=NamedSharding(mesh8, P("x")))


def test_spec_longer_than_the_rank_is_an_error(mesh42):
    with vs.device(P("a", "b"), mesh=mesh42):
        with pytest.raises(vs.PlacementError, match=r"'w' of shape \(8,\).*2 entries for 1 dim"):
            vs.Variable(vs.zeros([8]), name="w")


# -- tasks and soft placement ------------------------------------------------------------
def test_task_zero_is_this_process():
    assert jax.process_index() == 0
    with vs.device("/task:0"):
        v = _declare()
    (device,) = v.device.device_set
    assert device.process_index == 0
    assert v.device == SingleDeviceSharding(jax.local_devices()[0])


def test_task_one_on_a_single_process_is_an_error():
    with vs.device("/job:ps/task:1"):
        with pytest.raises(vs.PlacementError, match=r"'/job:ps/task:1' of variable 'v'.*Devices"):
            _declare()


def test_soft_placement_falls_back_to_the_default_device_and_warns():
    vs.config.soft_placement = True
    with vs.device("/gpu:0"):
        with pytest.warns(vs.PlacementWarning, match=r"'v'.*default device"):
            v = _declare()
    assert v.device == _cpu(0)
    assert _init_store()[v].sharding == _cpu(0)


def test_soft_placement_covers_a_missing_task():
    vs.config.soft_placement = True
    with pytest.warns(vs.PlacementWarning, match=r"task:1.*'v'"):
        v = _declare(device="/task:1/cpu:0")
    assert v.device == _cpu(0)


def test_without_soft_placement_a_missing_device_is_an_error():
    vs.config.soft_placement = False
    with pytest.raises(vs.PlacementError, match=r"GPU:0.*'v'.*does not have"):
        _declare(device="/gpu:0")


def test_soft_placement_does_not_hide_malformed_strings():
    vs.config.soft_placement = True
    with pytest.raises(vs.PlacementError, match=GRAMMAR):
        _declare(device="/gpu:x")


# -- sharded initialization ------------------------------------------------------------
INITIALIZERS = {
    "random_normal": lambda: vs.random_normal([64, 32], mean=1.0, stddev=0.5),
    "truncated_normal": lambda: vs.truncated_normal([64, 32], stddev=2.0),
    "random_uniform": lambda: vs.random_uniform([64, 32], minval=-3.0, maxval=3.0),
    "glorot_uniform": lambda: vs.glorot_uniform([64, 32]),
}
PLACEMENTS = {
    "mesh(4,2) P(a,b)": lambda m42, m8: NamedSharding(m42, P("a", "b")),
    "mesh(4,2) P(None,(a,b))": lambda m42, m8: NamedSharding(m42, P(None, ("a", "b"))),
    "mesh(8) P(x)": lambda m42, m8: NamedSharding(m8, P("x")),
    "mesh(8) P()": lambda m42, m8: NamedSharding(m8, P()),
    "CPU:5": lambda m42, m8: _cpu(5),
}


def _values(initializer, placement):
    vs.reset_default_graph()
    v = vs.Variable(INITIALIZERS[initializer](), name="layer/w", device=placement)
    return v, _init_store(11)[v]


@functools.cache
def _unsharded(initializer):
    return np.asarray(_values(initializer, None)[1])


def test_threefry_is_partitionable():
    # Sharded random generation computes only each device's shard, and gives the
    # same bits as unsharded generation, only under the partitionable threefry
    # (JAX's default since 0.5). varstore does not set the flag itself.
    assert jax.config.jax_threefry_partitionable is True


def test_values_do_not_depend_on_the_threefry_flag(mesh42):
    v = vs.Variable(vs.random_normal([64, 32]), name="w", device=NamedSharding(mesh42, P("a", "b")))
    default = np.asarray(vs.initialize_all_variables()(0)[v])
    with jax.threefry_partitionable(False):
        other = np.asarray(vs.initialize_all_variables()(0)[v])
    np.testing.assert_array_equal(other, default)


@pytest.mark.parametrize("placement", list(PLACEMENTS))
@pytest.mark.parametrize("initializer", list(INITIALIZERS))
def test_sharded_values_equal_unsharded_values(initializer, placement, mesh42, mesh8):
    assert jax.config.jax_threefry_partitionable is True
    v, sharded = _values(initializer, PLACEMENTS[placement](mesh42, mesh8))
    assert sharded.sharding == v.device
    np.testing.assert_array_equal(np.asarray(sharded), _unsharded(initializer))


def _small_group(placement, n=12):
    with vs.device(placement):
        return [vs.Variable(vs.random_normal([8, 16]), name=f"small/v{i}") for i in range(n)]


def test_small_variables_under_a_sharding_are_grouped(mesh42):
    vars_ = _small_group(NamedSharding(mesh42, P("a", "b")))
    (program,) = _plan.build(vars_, frozenset()).programs
    assert [len(g.members) for g in program.groups] == [12]
    assert program.singles == []


def test_grouped_sharded_values_equal_single_unsharded_values(mesh42):
    assert jax.config.jax_threefry_partitionable is True
    vars_ = _small_group(NamedSharding(mesh42, P("a", "b")))
    grouped = _init_store(4)
    for v in vars_:
        assert grouped[v].sharding == v.device
    vs.reset_default_graph()
    for i, _ in enumerate(vars_):
        w = vs.Variable(vs.random_normal([8, 16]), name=f"small/v{i}")
        alone = vs.initialize_variables([w])(jax.random.key(4))
        np.testing.assert_array_equal(np.asarray(grouped[w.name]), np.asarray(alone[w]))


@pytest.mark.parametrize("axes", [P("x"), P(None, "x"), P()])
def test_grouped_variables_get_exactly_their_sharding(mesh8, axes):
    vars_ = _small_group(NamedSharding(mesh8, axes), n=5)
    store = _init_store()
    for v in vars_:
        assert store[v].sharding == v.device
        assert store[v].sharding == NamedSharding(mesh8, axes)


def test_grouped_variables_on_one_other_device(mesh8):
    vars_ = _small_group("/cpu:6", n=5)
    store = _init_store()
    assert {store[v].sharding for v in vars_} == {_cpu(6)}


def test_sharded_variable_is_never_whole_on_one_device(mesh42):
    whole = 4096 * 4096 * 4  # 64 MiB
    shard = whole // 8
    with vs.device(P("a", "b"), mesh=mesh42):
        big = vs.Variable(vs.random_normal([4096, 4096]), name="big")

    def memory(variable):
        # The initializer's own program for this variable, compiled but not run.
        (program,) = _plan.build([variable], frozenset()).programs
        key = jax.random.key(0)
        fn = _init._program_fn(program, variable.graph, jax.random.key_impl(key))
        key_data = np.asarray(jax.random.key_data(key))
        return fn.lower(key_data, np.uint32(0), [], []).compile().memory_analysis()

    sharded = memory(big)
    # The compiled program is per device: its output is one shard, and its scratch
    # space is a small multiple of a shard, never the whole variable.
    assert sharded.output_size_in_bytes == shard
    assert sharded.output_size_in_bytes + sharded.temp_size_in_bytes < whole
    unsharded = memory(vs.Variable(vs.random_normal([4096, 4096]), name="big_unsharded"))
    assert unsharded.output_size_in_bytes == whole
    per_device = sharded.output_size_in_bytes + sharded.temp_size_in_bytes
    total = unsharded.output_size_in_bytes + unsharded.temp_size_in_bytes
    assert per_device <= total / 8 + (1 << 20)

    gc.collect()
    before = {id(a) for a in jax.live_arrays()}
    store = vs.initialize_variables([big])(jax.random.key(0))
    new = [a for a in jax.live_arrays() if id(a) not in before]
    assert store[big].sharding == big.device
    assert [s.data.shape for s in store[big].addressable_shards] == [(1024, 2048)] * 8
    assert max(s.data.nbytes for a in new for s in a.addressable_shards) == shard


# -- store operations keep placement ----------------------------------------------------
@pytest.fixture
def sharded_store(mesh42):
    with vs.device(P("a", "b"), mesh=mesh42):
        w = vs.Variable(vs.zeros([8, 4]), name="w")
    return w, _init_store()


def test_initialized_store_has_the_variable_sharding(sharded_store):
    w, store = sharded_store
    assert store[w].sharding == w.device


def test_assign_puts_the_value_on_the_variable_sharding(sharded_store):
    w, store = sharded_store
    out = store.assign(w, np.ones((8, 4), np.float32))
    assert out[w].sharding == w.device
    np.testing.assert_array_equal(out[w], np.ones((8, 4)))


def test_assign_moves_a_value_from_another_device(sharded_store):
    w, store = sharded_store
    out = store.assign("w", jax.device_put(jnp.ones((8, 4)), jax.devices()[3]))
    assert out[w].sharding == w.device


def test_assign_add_and_sub_keep_the_sharding(sharded_store):
    w, store = sharded_store
    added = store.assign_add(w, np.ones((8, 4), np.float32))
    subbed = added.assign_sub("w", 0.5)
    assert added[w].sharding == w.device
    assert subbed[w].sharding == w.device
    np.testing.assert_array_equal(subbed[w], np.full((8, 4), 0.5))


def test_assign_add_moves_a_delta_from_another_device(sharded_store):
    w, store = sharded_store
    added = store.assign_add(w, jax.device_put(jnp.ones((8, 4)), jax.devices()[5]))
    assert added[w].sharding == w.device


def test_update_keeps_the_sharding(sharded_store):
    w, store = sharded_store
    out = store.update({"w": jax.device_put(jnp.ones((8, 4)), jax.devices()[3])})
    assert out[w].sharding == w.device


def test_assign_of_a_declared_variable_missing_from_the_store_uses_its_placement(mesh8):
    v = vs.Variable(vs.zeros([16]), name="v", device=NamedSharding(mesh8, P("x")))
    out = vs.VarStore({}).assign(v, np.arange(16, dtype=np.float32))
    assert out[v].sharding == v.device


def test_merge_keeps_the_other_stores_arrays_as_given(sharded_store):
    # merge is a mapping union ("other wins"): it adds entries, it does not assign,
    # so other's arrays (e.g. restored elsewhere) are taken as they are.
    w, store = sharded_store
    elsewhere = jax.device_put(jnp.ones((8, 4)), jax.devices()[3])
    out = store.merge(vs.VarStore({"w": elsewhere}))
    assert out[w] is elsewhere
    assert out[w].sharding == _cpu(3)


def test_summary_shows_each_placement(mesh42, mesh8):
    vs.Variable(vs.zeros([8, 4]), name="kernel", device=NamedSharding(mesh42, P("a", None)))
    vs.Variable(vs.zeros([16]), name="flat", device=NamedSharding(mesh42, P(("a", "b"))))
    vs.Variable(vs.zeros([8]), name="bias", device=NamedSharding(mesh8, P()))
    vs.Variable(vs.zeros([8]), name="step", device="/cpu:3")
    lines = {line.split()[0]: line for line in _init_store().summary().splitlines()}
    assert "mesh(a=4,b=2) P(a,None)" in lines["kernel"]
    assert "mesh(a=4,b=2) P((a,b))" in lines["flat"]
    assert "mesh(x=8) P()" in lines["bias"]
    assert "CPU:3" in lines["step"]


# -- programs per device set ----------------------------------------------------------------
def test_one_program_per_device_set(compiles):
    with vs.device("/cpu:0"):
        a = _declare(name="a")
    with vs.device("/cpu:1"):
        b = _declare(name="b")
    init = vs.initialize_all_variables()
    assert len(_plan.build([a, b], frozenset()).programs) == 2
    key0, key1 = jax.random.key(0), jax.random.key(1)
    compiles.clear()
    store = init(key0)
    assert len(compiles) == 2
    init(key1)
    assert len(compiles) == 2
    assert store[a].sharding == _cpu(0)
    assert store[b].sharding == _cpu(1)


def test_meshes_over_the_same_devices_share_one_program(mesh42, mesh8):
    a = _declare(name="a", shape=(8, 8), device=NamedSharding(mesh42, P("a", "b")))
    b = _declare(name="b", shape=(8, 8), device=NamedSharding(mesh8, P(None, "x")))
    assert len(_plan.build([a, b], frozenset()).programs) == 1
    store = _init_store()
    assert store[a].sharding == a.device
    assert store[b].sharding == b.device


def test_initialized_value_across_device_sets_is_exact(mesh42):
    with vs.device("/cpu:0"):
        a = vs.Variable(vs.random_normal([16, 8]), name="a")
    with vs.device("/cpu:1"):
        b = vs.Variable(a.initialized_value(), name="b")
    c = vs.Variable(
        a.initialized_value() * 2.0 + 1.0, name="c", device=NamedSharding(mesh42, P("a"))
    )
    store = _init_store()
    assert store[b].sharding == _cpu(1)
    assert store[c].sharding == c.device
    np.testing.assert_array_equal(np.asarray(store[b]), np.asarray(store[a]))
    np.testing.assert_array_equal(np.asarray(store[c]), np.asarray(store[a]) * 2.0 + 1.0)


def test_initialized_value_from_the_store_on_another_device_set(mesh8):
    a = vs.Variable(vs.random_normal([16]), name="a", device="/cpu:2")
    b = vs.Variable(a.initialized_value(), name="b", device=NamedSharding(mesh8, P("x")))
    store = vs.initialize_variables([a])(7)
    store = vs.initialize_variables([b])(8, store)
    assert store[b].sharding == b.device
    np.testing.assert_array_equal(np.asarray(store[b]), np.asarray(store[a]))


def test_mesh_with_devices_in_another_order(mesh42):
    reversed_mesh = Mesh(np.array(jax.devices()[::-1]).reshape(4, 2), ("a", "b"))
    a = _declare(name="a", shape=(8, 4))
    r = vs.Variable(
        a.initialized_value(), name="r", device=NamedSharding(reversed_mesh, P("a", "b"))
    )
    store = _init_store()
    assert store[r].sharding == r.device
    np.testing.assert_array_equal(np.asarray(store[r]), np.asarray(store[a]))


def test_meshes_over_the_same_devices_in_other_orders_get_a_program_each(mesh42):
    reversed_mesh = Mesh(np.array(jax.devices()[::-1]).reshape(4, 2), ("a", "b"))
    a = _declare(name="a", device=NamedSharding(mesh42, P("a", "b")))
    r = _declare(name="r", device=NamedSharding(reversed_mesh, P("a", "b")))
    assert len(_plan.build([a, r], frozenset()).programs) == 2
    store = _init_store()
    assert store[a].sharding == a.device
    assert store[r].sharding == r.device


def test_initialized_value_from_the_store_on_a_mesh_in_another_order(mesh42):
    reversed_mesh = Mesh(np.array(jax.devices()[::-1]).reshape(4, 2), ("a", "b"))
    a = _declare(name="a", device=NamedSharding(mesh42, P("a", "b")))
    r = vs.Variable(
        a.initialized_value(), name="r", device=NamedSharding(reversed_mesh, P("a", "b"))
    )
    store = vs.initialize_variables([a])(0)
    store = vs.initialize_variables([r])(1, store)
    assert store[r].sharding == r.device
    np.testing.assert_array_equal(np.asarray(store[r]), np.asarray(store[a]))


def test_programs_are_keyed_by_platform_not_only_device_id():
    # A GPU and the host CPU both have a device 0: one jit cannot span both.
    from varstore import _placement

    key = _placement.device_set_key(SingleDeviceSharding(jax.devices()[3]))
    assert key == (("cpu", 0, 3),)
