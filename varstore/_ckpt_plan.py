"""Write planning: the chunks of each array that this process stores, and the layout."""

from __future__ import annotations

import dataclasses
import math
import zlib

import jax
import numpy as np

from ._errors import CheckpointError
from . import _ckpt_format as _fmt
from ._ckpt_format import (
    _chunk_key,
    _chunk_region,
    _dtype_from_name,
    _dtype_name,
    _index_to_region,
    _param_dir,
    _sharding_description,
)


# --------------------------------------------------------------------------- write: planning


@dataclasses.dataclass
class _WChunk:
    key: str
    data: np.ndarray  # C-contiguous, chunk-shaped, stored dtype
    digest: str | None = None
    loc: tuple[str, int] | None = None  # OCDBT layout: (data file under d/, offset)


@dataclasses.dataclass
class _WEntry:
    name: str
    keys: tuple[str, ...]
    dir: str
    shape: tuple[int, ...]
    dtype_name: str
    chunk_shape: tuple[int, ...]
    chunks: list[_WChunk]
    sharding: str | None


def _host_array(value, copy: bool = False) -> np.ndarray:
    arr = np.asarray(value)
    dtype = _dtype_from_name(_dtype_name(arr.dtype))
    if arr.dtype != dtype:
        arr = arr.astype(dtype)  # to little-endian
    elif not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    elif copy:
        arr = arr.copy()
    return arr


def _single_chunk_entry(name, keys, arr: np.ndarray, desc) -> _WEntry:
    shape = arr.shape
    chunks = [_WChunk(_chunk_key((0,) * arr.ndim), arr)] if arr.size else []
    chunk_shape = tuple(max(1, s) for s in shape)
    return _WEntry(name, keys, _param_dir(keys), shape, _dtype_name(arr.dtype), chunk_shape, chunks, desc)


def _plan_entry(name: str, keys: tuple[str, ...], value, copy: bool) -> _WEntry:
    if not isinstance(value, jax.Array):
        try:
            arr = _host_array(value, copy)
        except CheckpointError as e:
            raise CheckpointError(f"Variable {name!r}: {e}") from None
        return _single_chunk_entry(name, keys, arr, None)
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.extended):
        raise CheckpointError(
            f"Variable {name!r} has dtype {value.dtype}, which cannot be stored; save "
            "jax.random.key_data(key) instead."
        )
    try:
        _dtype_name(value.dtype)
    except CheckpointError as e:
        raise CheckpointError(f"Variable {name!r}: {e}") from None
    # A jax.Array is never copied, whatever `copy` says.  A background save (copy=True)
    # must not see later changes to what it was given, but a jax.Array is immutable, and
    # `np.asarray` of one is either a fresh host copy (accelerators) or, on CPU, a
    # zero-copy view that holds a PJRT external reference on the buffer: while it lives,
    # `delete()` leaves the memory alive and donating the array to a jit makes XLA
    # allocate a new output instead of reusing it.  So the view is already a snapshot,
    # and a background save of W1 (512 MiB) returns without copying anything
    # (tests/test_saver.py pins this with deletes and donations).
    sharding = value.sharding
    desc = _sharding_description(sharding)
    if len(sharding.device_set) == 1:  # fast path: one device, one chunk
        return _single_chunk_entry(name, keys, _host_array(value), desc)
    if not value.is_fully_addressable:
        raise CheckpointError(
            f"Variable {name!r} is not fully addressable: multi-process saving is not "
            "supported yet."
        )
    shape = tuple(int(s) for s in value.shape)
    if value.is_fully_replicated or math.prod(shape) == 0:
        return _single_chunk_entry(name, keys, _host_array(value.addressable_data(0)), desc)
    shards = [s for s in value.addressable_shards if s.replica_id == 0]
    for s in shards:
        try:
            s.data.copy_to_host_async()
        except Exception:  # noqa: BLE001 - only a prefetch hint
            pass
    chunk_shape = tuple(int(c) for c in sharding.shard_shape(value.shape))
    regions = {}
    for s in shards:
        region = _index_to_region(s.index, shape)
        cidx = tuple(lo // c for (lo, _), c in zip(region, chunk_shape))
        if _chunk_region(cidx, chunk_shape, shape) != region or any(
            lo % c for (lo, _), c in zip(region, chunk_shape)
        ):
            break
        regions[cidx] = s
    else:
        if len(regions) == len(shards) and len(regions) == math.prod(
            -(-n // c) for n, c in zip(shape, chunk_shape)
        ):
            chunks: list[_WChunk] = []
            for cidx, s in sorted(regions.items()):
                data = _host_array(s.data)
                if tuple(data.shape) != chunk_shape:  # zarr stores edge chunks padded
                    padded = np.zeros(chunk_shape, data.dtype)
                    padded[tuple(slice(0, n) for n in data.shape)] = data
                    data = padded
                chunks.append(_WChunk(_chunk_key(cidx), data))
            return _WEntry(
                name, keys, _param_dir(keys), shape, _dtype_name(value.dtype), chunk_shape, chunks, desc
            )
    # Irregular sharding: store the whole array as one chunk.
    return _single_chunk_entry(name, keys, _host_array(value), desc)


def _choose_layout(entries: list[_WEntry]) -> str:
    """'ocdbt' (few files) unless chunks are large: then one file per chunk."""
    return _layout_for([(1, c.data.nbytes) for e in entries for c in e.chunks])


def _choose_layout_global(entries: list[_WEntry]) -> str:
    """`_choose_layout` for a multi-process save: from the global chunk grid, which is
    the same in every process (each process holds only the chunks it writes)."""
    counts = []
    for e in entries:
        n = math.prod(-(-s // c) for s, c in zip(e.shape, e.chunk_shape)) if math.prod(e.shape) else 0
        counts.append((n, math.prod(e.chunk_shape) * _dtype_from_name(e.dtype_name).itemsize))
    return _layout_for(counts)


def _layout_for(chunks: list[tuple[int, int]]) -> str:
    """The layout for chunks given as (count, bytes each)."""
    chunks = [(n, size) for n, size in chunks if n]
    if not chunks:
        return "ocdbt"
    total = sum(n * size for n, size in chunks)
    if (
        max(size for _, size in chunks) > _fmt._OCDBT_MAX_CHUNK_BYTES
        or total > _fmt._OCDBT_MAX_TOTAL_BYTES
        or total > _fmt._OCDBT_MAX_MEAN_CHUNK_BYTES * sum(n for n, _ in chunks)
    ):
        return "files"
    return "ocdbt"


def _writer_key(device) -> tuple[int, int]:
    return (device.process_index, device.id)


def plan_entry_multiprocess(name: str, keys: tuple[str, ...], value) -> _WEntry:
    """The chunks of `value` (a global jax.Array) that THIS process writes.

    The chunk grid is the sharding's shard shape (the whole array when it is fully
    replicated, on one device, or empty), the same in every process.  Each distinct shard
    is written once, by the lowest process holding it (its lowest device), so replicas
    are never written twice and every chunk has exactly one writer.
    """
    if not isinstance(value, jax.Array):
        raise CheckpointError(
            f"Variable {name!r} is a {type(value).__name__}, not a jax.Array: in a "
            "multi-process save every value must be a global jax.Array (for host data "
            "use jax.make_array_from_process_local_data or jax.device_put onto a "
            "sharding over the global mesh)."
        )
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.extended):
        raise CheckpointError(
            f"Variable {name!r} has dtype {value.dtype}, which cannot be stored; save "
            "jax.random.key_data(key) instead."
        )
    try:
        dtype_name = _dtype_name(value.dtype)
    except CheckpointError as e:
        raise CheckpointError(f"Variable {name!r}: {e}") from None
    sharding = value.sharding  # values are jax.Arrays: never copied (see _plan_entry)
    shape = tuple(int(s) for s in value.shape)
    desc = _sharding_description(sharding)
    me = jax.process_index()
    by_device = {s.device: s for s in value.addressable_shards}
    if value.is_fully_replicated or len(sharding.device_set) == 1 or math.prod(shape) == 0:
        writer = min(sharding.device_set, key=_writer_key)
        chunks = []
        if writer.process_index == me and math.prod(shape):
            data = _host_array(by_device[writer].data)
            chunks.append(_WChunk(_chunk_key((0,) * len(shape)), data))
        chunk_shape = tuple(max(1, s) for s in shape)
        return _WEntry(name, keys, _param_dir(keys), shape, dtype_name, chunk_shape, chunks, desc)
    chunk_shape = tuple(int(c) for c in sharding.shard_shape(shape))
    writers: dict[tuple[int, ...], jax.Device] = {}
    for dev, index in sharding.devices_indices_map(shape).items():
        region = _index_to_region(index, shape)
        cidx = tuple(lo // c for (lo, _), c in zip(region, chunk_shape))
        if _chunk_region(cidx, chunk_shape, shape) != region or any(
            lo % c for (lo, _), c in zip(region, chunk_shape)
        ):
            raise CheckpointError(
                f"Variable {name!r} has an irregular sharding ({desc}) whose shards do not "
                "tile the array on a regular grid; a multi-process save cannot store it. "
                "Use a NamedSharding over the global mesh."
            )
        if cidx not in writers or _writer_key(dev) < _writer_key(writers[cidx]):
            writers[cidx] = dev
    if len(writers) != math.prod(-(-n // c) for n, c in zip(shape, chunk_shape)):
        raise CheckpointError(
            f"Variable {name!r}: its shards ({desc}) do not cover the array; a "
            "multi-process save cannot store it."
        )
    chunks = []
    for cidx, dev in sorted(writers.items()):
        if dev.process_index != me:
            continue
        data = _host_array(by_device[dev].data)
        if tuple(data.shape) != chunk_shape:  # zarr stores edge chunks padded
            padded = np.zeros(chunk_shape, data.dtype)
            padded[tuple(slice(0, n) for n in data.shape)] = data
            data = padded
        chunks.append(_WChunk(_chunk_key(cidx), data))
    return _WEntry(name, keys, _param_dir(keys), shape, dtype_name, chunk_shape, chunks, desc)


def signature(entry: _WEntry, value) -> list:
    """What every process must agree on about one entry: shape, dtype, chunk grid, and
    which devices hold which region (a process-local array differs between processes)."""
    sharding = value.sharding
    layout = sorted(
        (d.id, str(_index_to_region(i, entry.shape)))
        for d, i in sharding.devices_indices_map(entry.shape).items()
    )
    return [
        list(entry.shape),
        entry.dtype_name,
        list(entry.chunk_shape),
        sorted(d.id for d in sharding.device_set),
        f"{zlib.crc32(str(layout).encode()):08x}",
    ]
