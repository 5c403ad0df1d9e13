"""_to_device.put: the fast route builds the same arrays as jax.device_put would."""

import jax
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

import varstore as vs
from varstore import _to_device


def _mesh(shape, names):
    return jax.sharding.Mesh(np.array(jax.devices()[: int(np.prod(shape))]).reshape(shape), names)


def _shards(value: np.ndarray, sharding):
    return {
        dev: np.ascontiguousarray(value[index])
        for dev, index in sharding.addressable_devices_indices_map(value.shape).items()
    }


def _cases():
    rng = np.random.default_rng(0)
    mesh = _mesh((4, 2), ("x", "y"))
    one = _mesh((1,), ("x",))
    m = rng.standard_normal((8, 6)).astype(np.float32)
    return {
        "default device": (m, None),
        "one device": (m, SingleDeviceSharding(jax.devices()[3])),
        "one-device mesh": (m, NamedSharding(one, P("x"))),
        "sharded 4x2": (m, NamedSharding(mesh, P("x", "y"))),
        "sharded rows, replicated cols": (m, NamedSharding(mesh, P("x"))),
        "replicated": (m, NamedSharding(mesh, P())),
        "bfloat16": (m.astype(ml_dtypes.bfloat16), NamedSharding(mesh, P("y"))),
        "bool": (m > 0, SingleDeviceSharding(jax.devices()[1])),
        "int8 scalar": (np.array(7, np.int8), None),
        "empty": (np.zeros((0, 3), np.float32), NamedSharding(mesh, P())),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_fast_and_public_routes_give_the_same_array(case):
    value, sharding = _cases()[case]
    item = (value.shape, sharding, value.copy() if sharding is None else _shards(value, sharding))
    (fast,) = _to_device.put([item], fast=True)
    (public,) = _to_device.put([item], fast=False)
    (from_whole,) = _to_device.put([_to_device.whole(value, sharding)])
    reference = jax.device_put(value) if sharding is None else jax.device_put(value, sharding)
    for arr in (fast, public, from_whole):
        assert arr.dtype == reference.dtype
        assert arr.shape == reference.shape
        assert arr.sharding == reference.sharding
        assert arr.committed == reference.committed
        assert arr.weak_type == reference.weak_type
        np.testing.assert_array_equal(np.asarray(arr), value)


def test_fast_route_is_active_on_the_supported_jax():
    # If a JAX release moves pxla.batched_device_put, restores stay correct through the
    # public route but lose their speed for many small variables: notice it here.
    assert _to_device.fast_route_works()


def test_a_dtype_jax_would_convert_goes_the_public_way():
    if jax.config.jax_enable_x64:
        pytest.skip("with x64 JAX keeps int64")
    value = np.arange(6, dtype=np.int64)
    (arr,) = _to_device.put([(value.shape, None, value)], fast=True)
    assert arr.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(arr), value)


def test_mixed_batch_keeps_order(tmp_path):
    mesh = _mesh((8,), ("x",))
    values = [np.full((8,), i, np.float32) for i in range(6)]
    shardings = [None, NamedSharding(mesh, P("x")), SingleDeviceSharding(jax.devices()[2])] * 2
    items = [
        (v.shape, s, v if s is None else _shards(v, s)) for v, s in zip(values, shardings)
    ]
    out = _to_device.put(items)
    for i, (arr, s) in enumerate(zip(out, shardings)):
        np.testing.assert_array_equal(np.asarray(arr), values[i])
        if s is not None:
            assert arr.sharding == s


def test_restored_arrays_survive_the_restore_buffers(tmp_path):
    # The fast route adopts the host buffers on CPU: the arrays must stay valid after
    # the restore returned and everything it allocated is gone.
    import gc

    for i in range(50):
        vs.Variable(vs.constant(np.full((64,), i, np.float32)), name=f"v{i}")
    saver = vs.train.Saver()
    path = saver.save(vs.initialize_all_variables()(0), str(tmp_path / "m"))
    restored = saver.restore(path).to_dict()
    gc.collect()
    junk = [np.full((64,), -1.0, np.float32) for _ in range(5000)]  # reuse freed memory
    for i in range(50):
        np.testing.assert_array_equal(np.asarray(restored[f"v{i}"]), np.full((64,), i))
    del junk
