"""Host NumPy buffers onto their devices as `jax.Array`s, thousands at a time.

A restore ends with one host buffer per (variable, addressable device).  `jax.device_put`
of a list of them spends about 20 µs per array in Python (abstractifying, broadcasting
the device tree, deferred shard arguments) on top of the transfer itself; for 2,000
variables of 16 KiB that is 57 ms against 16 ms for the transfers alone, longer than
TensorFlow 1.x's whole restore of the same checkpoint.  So `put` calls what
`jax.device_put` ends in for a NumPy array, `pxla.batched_device_put`, once per array,
which also builds a sharded array from its shards without
`jax.make_array_from_single_device_arrays`.

Those are JAX internals.  If they are missing (a JAX release moved them), or a buffer is
not in the dtype JAX would give it, `put` takes the public route instead
(`jax.device_put` + `jax.make_array_from_single_device_arrays`), which yields the same
arrays: same values, sharding and committedness.  `fast_route_works()` says which route
is active (probed once); a test pins it on the JAX we support so a move is noticed.

On CPU both routes adopt an aligned host buffer without copying it; callers hand over
buffers they never touch again.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

try:  # the transfer jax.device_put itself ends in
    from jax._src.core import ShapedArray as _ShapedArray
    from jax._src.interpreters.pxla import batched_device_put as _batched_device_put
    from jax._src.interpreters.pxla import get_default_device as _get_default_device

    _IMPORTED = True
except ImportError:  # pragma: no cover - depends on the JAX release
    _IMPORTED = False

_works: bool | None = None


def fast_route_works() -> bool:
    """Whether the internal transfer is there and behaves as `jax.device_put` (probed
    once, on a 3-element array: a JAX release that changed it falls back, not fails)."""
    global _works
    if _works is None:
        ok = False
        if _IMPORTED:
            try:
                x = np.arange(3, dtype=np.float32)
                dev = _get_default_device()
                a = _batched_device_put(
                    _ShapedArray(x.shape, x.dtype),
                    jax.sharding.SingleDeviceSharding(dev),
                    [x.copy()],
                    [dev],
                    committed=False,
                )
                ok = (
                    isinstance(a, jax.Array)
                    and a.shape == x.shape
                    and a.dtype == x.dtype
                    and not a.committed
                    and bool(np.array_equal(np.asarray(a), x))
                )
            except Exception:  # noqa: BLE001 - any failure means: use the public route
                ok = False
        _works = ok
    return _works


def _device_order(sharding) -> list | None:
    try:
        return list(sharding._addressable_device_assignment)
    except AttributeError:  # pragma: no cover - depends on the JAX release
        return None


def put(items: Sequence[tuple], *, fast: bool | None = None) -> list[jax.Array]:
    """Places host buffers; one `jax.Array` per item, in order.

    Args:
      items: `(shape, sharding, shards)` per array. `sharding` None means JAX's default
        device, uncommitted, like `jax.device_put(x)`; `shards` is then one buffer.
        Otherwise `shards` maps every addressable device of `sharding` to its host
        buffer (C-contiguous, in the array's dtype).
      fast: force a route (tests compare them); None picks the fast one when usable.

    Returns:
      The arrays, in the order of `items`.
    """
    fast = fast_route_works() if fast is None else (fast and fast_route_works())
    if not fast:
        return _put_public(items)
    out: list = [None] * len(items)
    slow: list[int] = []
    native: dict[np.dtype, bool] = {}
    default = None
    for i, (shape, sharding, shards) in enumerate(items):
        if sharding is None:
            buf = shards
            if not _native(buf.dtype, native):
                slow.append(i)
                continue
            if default is None:
                dev = _get_default_device()
                default = (jax.sharding.SingleDeviceSharding(dev), [dev])
            out[i] = _batched_device_put(
                _ShapedArray(buf.shape, buf.dtype), default[0], [buf], default[1], committed=False
            )
            continue
        devices = _device_order(sharding)
        bufs = [shards.get(d) for d in devices] if devices is not None else None
        if bufs is None or any(b is None for b in bufs) or len(bufs) != len(shards):
            slow.append(i)
            continue
        dtype = bufs[0].dtype if bufs else None
        if not bufs or not _native(dtype, native):
            slow.append(i)
            continue
        out[i] = _batched_device_put(_ShapedArray(tuple(shape), dtype), sharding, bufs, devices)
    if slow:
        for i, arr in zip(slow, _put_public([items[i] for i in slow])):
            out[i] = arr
    return out


def whole(value: np.ndarray, sharding) -> tuple:
    """The `put` item for a whole host array: its shards cut out for `sharding`."""
    value = _contiguous(value)
    if sharding is None:
        return value.shape, None, value
    if len(sharding.device_set) == 1:
        (dev,) = sharding.device_set
        if dev.process_index == jax.process_index():
            return value.shape, sharding, {dev: value}
    return value.shape, sharding, {
        dev: _contiguous(value[index])
        for dev, index in sharding.addressable_devices_indices_map(value.shape).items()
    }


def _contiguous(a: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
    return a if a.flags.c_contiguous else a.copy(order="C")


def _native(dtype: np.dtype, cache: dict) -> bool:
    """Whether JAX keeps `dtype` as it is (device_put would otherwise convert it, e.g.
    int64 to int32 without x64)."""
    ok = cache.get(dtype)
    if ok is None:
        ok = cache[dtype] = np.dtype(jax.dtypes.canonicalize_dtype(dtype)) == dtype
    return ok


def _put_public(items: Sequence[tuple]) -> list[jax.Array]:
    """The public route: one batched `jax.device_put`, then assembly of sharded arrays."""
    bufs, targets, layout = [], [], []
    for shape, sharding, shards in items:
        if sharding is None:
            bufs.append(shards)
            targets.append(None)
            layout.append(None)
        elif len(shards) == 1 and len(sharding.device_set) == 1:  # straight onto it
            (buf,) = shards.values()
            bufs.append(buf)
            targets.append(sharding)
            layout.append(None)
        else:
            layout.append((tuple(shape), sharding, len(shards)))
            for dev, buf in shards.items():
                bufs.append(buf)
                targets.append(dev)
    # device_put takes None in a list of targets as "default device, uncommitted".
    placed = iter(jax.device_put(bufs, targets, may_alias=True) if bufs else [])
    out = []
    for entry in layout:
        if entry is None:
            out.append(next(placed))
        else:
            shape, sharding, n = entry
            singles = [next(placed) for _ in range(n)]
            out.append(jax.make_array_from_single_device_arrays(shape, sharding, singles))
    return out
