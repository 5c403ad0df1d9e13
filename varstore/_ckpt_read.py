"""Reading arrays: plan target regions, read and verify chunks in parallel, place them."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Mapping

import jax
import numpy as np

from ._errors import CheckpointError
from ._progress import Progress, progress
from . import _ckpt_format as _fmt
from . import _to_device
from ._ckpt_chunks import _ChunkReader, _hinted_runs, _missing, _read_run
from ._ckpt_format import (
    _chunk_key,
    _chunk_region,
    _index_to_region,
    _overlapping_chunks,
)
from ._ckpt_fs import (
    _Arena,
    _aligned_empty,
    _gc_paused,
    _grouped,
    _run_all,
)
from ._ckpt_open import (
    _Ckpt,
    _REntry,
    _open_ckpt,
)


# --------------------------------------------------------------------------- reading: data


@dataclasses.dataclass
class _Region:
    region: tuple[tuple[int, int], ...]
    devices: list  # jax devices (or [None] for the default device / host)
    buf: np.ndarray | None = None


def _plan_regions(shape, sharding) -> tuple[list[_Region], list | None]:
    full = tuple((0, s) for s in shape)
    if sharding is None:
        return [_Region(full, [None])], None
    if len(sharding.device_set) == 1:  # the common case, without JAX's index map
        (dev,) = sharding.device_set
        if dev.process_index == jax.process_index():
            return [_Region(full, [dev])], [(dev, full)]
    idx_map = sharding.addressable_devices_indices_map(tuple(shape))
    groups: dict[tuple, _Region] = {}
    order = []
    for dev, index in idx_map.items():
        region = _index_to_region(index, shape) if len(shape) else ()
        g = groups.get(region)
        if g is None:
            g = groups[region] = _Region(region, [])
        g.devices.append(dev)
        order.append((dev, region))
    return list(groups.values()), order


def _fill_regions_ours(
    ck: _Ckpt, e: _REntry, regions: list[_Region], reader: _ChunkReader, arena: _Arena
):
    """Returns (read tasks, verify callables, finish callable) filling every region.buf."""
    if len(regions) == 1 and e.chunk_shape == e.shape and len(e.shape) == len(regions[0].region):
        # Fast path: the whole array, stored as one chunk.
        r = regions[0]
        r.buf = arena.empty(e.shape, e.dtype)
        if r.buf.size == 0:
            return [], [], None
        t, v = reader.read_tasks(e, _chunk_key((0,) * len(e.shape)), r.buf)
        return t, ([v] if v is not None else []), None
    read_tasks, verifies, copies = [], [], []
    shared: dict[str, np.ndarray] = {}  # chunks needed by several regions or only in part
    for r in regions:
        rshape = tuple(hi - lo for lo, hi in r.region)
        r.buf = arena.empty(rshape, e.dtype)
        if r.buf.size == 0:
            continue
        cidxs = _overlapping_chunks(r.region, e.chunk_shape)
        if len(cidxs) == 1:
            creg = _chunk_region(cidxs[0], e.chunk_shape, e.shape)
            padded = any((hi - lo) != c for (lo, hi), c in zip(creg, e.chunk_shape))
            if creg == r.region and not padded and _chunk_key(cidxs[0]) not in shared:
                t, v = reader.read_tasks(e, _chunk_key(cidxs[0]), r.buf)
                read_tasks += t
                if v is not None:
                    verifies.append(v)
                continue
        for cidx in cidxs:
            key = _chunk_key(cidx)
            if key not in shared:
                cbuf = _aligned_empty(e.chunk_shape, e.dtype)
                t, v = reader.read_tasks(e, key, cbuf)
                read_tasks += t
                if v is not None:
                    verifies.append(v)
                shared[key] = cbuf
            creg = _chunk_region(cidx, e.chunk_shape, e.shape)
            lo = [max(a[0], b[0]) for a, b in zip(creg, r.region)]
            hi = [min(a[1], b[1]) for a, b in zip(creg, r.region)]
            src = tuple(slice(l - c[0], h - c[0]) for l, h, c in zip(lo, hi, creg))
            dst = tuple(slice(l - rr[0], h - rr[0]) for l, h, rr in zip(lo, hi, r.region))
            copies.append((r, dst, key, src))

    def do_copies():
        for r, dst, key, src in copies:
            r.buf[dst] = shared[key][src]
        shared.clear()

    return read_tasks, verifies, do_copies


def _validate_target(ck: _Ckpt, name: str, target) -> tuple:
    if name not in ck.entries:
        raise _missing(ck, name)
    e = ck.entries[name]
    try:
        shape, dtype, sharding = target
    except (TypeError, ValueError):
        raise CheckpointError(
            f"Target of {name!r} must be (shape, dtype, sharding or None), got {target!r}."
        ) from None
    shape = tuple(int(s) for s in shape)
    if shape != e.shape:
        raise CheckpointError(
            f"Variable {name!r} has shape {e.shape} in checkpoint {ck.path!r}, but the "
            f"target shape is {shape}."
        )
    dtype = np.dtype(dtype) if dtype is not None else e.dtype
    return e, dtype, sharding


def _read_host_regions(
    ck: _Ckpt, plans: list[tuple[_REntry, list[_Region]]], desc: str
) -> None:
    """Fills region buffers of several entries (parallel reads + verify), with progress."""
    if not ck.ours:
        from ._ckpt_foreign import read_foreign_regions

        total = sum(_region_bytes(e, r) for e, regions in plans for r in regions)
        with progress(total, len(plans), desc) as bar:
            read_foreign_regions(ck, plans, bar)
        return
    reader = _ChunkReader(ck)
    arena = _Arena()
    all_reads, all_verifies, all_copies = [], [], []
    try:
        plans, runs, run_bytes = _hinted_runs(ck, plans, reader, arena)
        per_entry = []
        for e, regions in plans:
            t, v, c = _fill_regions_ours(ck, e, regions, reader, arena)
            per_entry.append(t)
            all_verifies += v
            if c is not None:
                all_copies.append(c)
        n_vars = len(plans) + sum(len(r) for r in runs)
        with progress(reader.planned_bytes + run_bytes, n_vars, desc) as bar:
            reader.bar = bar
            all_reads = _counted_per_entry(per_entry, bar)
            all_reads += [
                (sum(m[4].nbytes for m in run), lambda run=run: _read_run(reader, run))
                for run in runs
            ]
            _run_all(_grouped(all_reads))
    finally:
        reader.close()
    _run_all(all_verifies)
    for c in all_copies:
        c()
def _region_bytes(e: _REntry, r: _Region) -> int:
    return math.prod(hi - lo for lo, hi in r.region) * e.dtype.itemsize


def _counted_per_entry(per_entry: list[list], bar: Progress) -> list:
    """The read tasks, each counting down its variable's tasks: a variable is done
    (`bar.advance(0, 1)`) when its last task is."""
    out = []
    lock = threading.Lock()
    empty = 0
    for tasks in per_entry:
        if not tasks:
            empty += 1
            continue
        left = [len(tasks)]

        def counted(fn, left=left):
            def run():
                fn()
                with lock:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    bar.advance(0, 1)

            return run

        out += [(cost, counted(fn)) for cost, fn in tasks]
    if empty:
        bar.advance(0, empty)
    return out


def _read_wrapped(ck: _Ckpt, fn):
    try:
        return fn()
    except CheckpointError:
        raise
    except Exception as ex:  # noqa: BLE001 - OS/TensorStore failures
        raise CheckpointError(f"Reading checkpoint {ck.path!r} failed: {type(ex).__name__}: {ex}") from ex


def read(path, targets: Mapping[str, tuple]) -> dict[str, jax.Array]:
    """Reads the named entries onto their shardings, verified and cast to the target dtype.

    `targets`: {name: (shape, dtype, sharding or None)}; None places on the default device.
    Only the named entries' bytes are read.
    """
    with _gc_paused():
        return _read(path, targets)


def _read(path, targets: Mapping[str, tuple]) -> dict[str, jax.Array]:
    ck = _open_ckpt(path)
    checked = {name: _validate_target(ck, name, t) for name, t in targets.items()}
    plans, meta = [], []
    for name, (e, dtype, sharding) in checked.items():
        regions, order = _plan_regions(e.shape, sharding)
        plans.append((e, regions))
        meta.append((name, e, dtype, sharding, regions, order))
    _read_wrapped(ck, lambda: _read_host_regions(ck, plans, f"Restoring {ck.path}"))
    # The buffers are fresh, aligned and never touched again, so on CPU XLA adopts them
    # without a copy (also for replicas of a region).
    canonical: dict[np.dtype, np.dtype] = {}
    items = []
    for name, e, dtype, sharding, regions, order in meta:
        if dtype not in canonical:  # what JAX would make of it (int64 without x64: int32)
            canonical[dtype] = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
        dtype = canonical[dtype]
        for r in regions:
            if r.buf.dtype != dtype:
                cast = _aligned_empty(r.buf.shape, dtype)
                cast[...] = _fmt.cast_checked(r.buf, dtype, name, ck.path)
                r.buf = cast
        if sharding is None:
            items.append((e.shape, None, regions[0].buf))
        else:
            by_region = {r.region: r.buf for r in regions}
            items.append((e.shape, sharding, {dev: by_region[region] for dev, region in order}))
    return dict(zip([m[0] for m in meta], _to_device.put(items)))


def read_numpy(path, name: str) -> np.ndarray:
    """One entry as a verified host NumPy array (in the stored dtype)."""
    with _gc_paused():
        ck = _open_ckpt(path)
    if name not in ck.entries:
        raise _missing(ck, name)
    e = ck.entries[name]
    regions, _ = _plan_regions(e.shape, None)
    _read_wrapped(
        ck, lambda: _read_host_regions(ck, [(e, regions)], f"Reading {name!r} from {ck.path}")
    )
    return regions[0].buf
