"""Reading arrays: plan target regions, read and verify chunks in parallel, place them."""

from __future__ import annotations

import dataclasses
import math
import os
import threading
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import tensorstore as ts

from ._errors import CheckpointError, close_names
from ._progress import _NO_PROGRESS, Progress, progress
from . import _ckpt_format as _fmt
from . import _to_device
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
    _pread_into,
    _run_all,
)
from ._ckpt_hash import (
    _as_bytes_view,
    _combine_blocks,
    _digest_scheme,
    _format_digest,
    _matches,
    _new_hasher,
)
from ._ckpt_open import (
    _Ckpt,
    _REntry,
    _open_ckpt,
)


# --------------------------------------------------------------------------- reading: data


def _missing(ck: _Ckpt, name: str) -> CheckpointError:
    return CheckpointError(
        f"Variable {name!r} is not in checkpoint {ck.path!r}." + close_names(name, ck.entries)
    )


def _damaged(ck: _Ckpt, e: _REntry, what: str) -> CheckpointError:
    return CheckpointError(
        f"Checkpoint {ck.path!r} is damaged: variable {e.name!r} {what}.  Restore from "
        "another checkpoint."
    )


class _ChunkReader:
    """Reads and verifies our chunks; caches decoded chunks that several regions need."""

    def __init__(self, ck: _Ckpt):
        self.ck = ck
        self._kv = None
        self._kv_lock = threading.Lock()
        self.fds: list[int] = []

        self._data_fds: dict[str, int] = {}
        self.planned_bytes = 0
        self.bar: Progress = _NO_PROGRESS

    def _data_fd(self, fname: str) -> int:
        with self._kv_lock:
            fd = self._data_fds.get(fname)
            if fd is None:
                fd = os.open(os.path.join(self.ck.path, "d", fname), os.O_RDONLY)
                self._data_fds[fname] = fd
            return fd

    def close(self) -> None:
        fds, self.fds = self.fds, []
        fds += list(self._data_fds.values())
        self._data_fds = {}
        for fd in fds:
            os.close(fd)

    def _kvstore(self):
        with self._kv_lock:
            if self._kv is None:
                self._kv = ts.KvStore.open(self.ck.kvstore_spec(), context=ts.Context()).result()
            return self._kv

    def chunk_nbytes(self, e: _REntry) -> int:
        return int(math.prod(e.chunk_shape)) * e.dtype.itemsize

    def read_tasks(self, e: _REntry, key: str, out: np.ndarray) -> tuple[list, Any]:
        """Returns (parallel read tasks, verify callable) filling `out` (chunk-shaped).

        Each task, once done, advances `self.bar` by the bytes it read.
        """
        tasks, verify = self._read_tasks(e, key, out)
        nbytes = out.nbytes
        self.planned_bytes += nbytes
        share = [nbytes // len(tasks)] * len(tasks) if tasks else []
        if share:
            share[0] += nbytes - sum(share)

        def counted(fn, n):
            def run():
                fn()
                self.bar.advance(n)

            return run

        return [(cost, counted(fn, n)) for (cost, fn), n in zip(tasks, share)], verify

    def _read_tasks(self, e: _REntry, key: str, out: np.ndarray) -> tuple[list, Any]:
        ck = self.ck
        if key not in e.chunks:
            raise _damaged(ck, e, f"has no recorded chunk {key!r}")
        expected = e.chunks[key]
        view = _as_bytes_view(out) if out.size else memoryview(b"")
        nbytes = len(view)
        if ck.layout == "files":
            p = os.path.join(ck.path, e.dir, key)

            def open_checked() -> int:
                try:
                    fd = os.open(p, os.O_RDONLY)
                except FileNotFoundError:
                    raise _damaged(ck, e, f"has no data file {e.dir}/{key}") from None
                size = os.fstat(fd).st_size
                if size != nbytes:
                    os.close(fd)
                    raise _damaged(
                        ck, e, f"data file {e.dir}/{key} has {size} bytes, expected {nbytes} "
                        "(truncated or overwritten)"
                    )
                return fd

            def check(n_read: int, v: memoryview) -> None:
                if n_read != len(v):
                    raise _damaged(ck, e, f"data file {e.dir}/{key} is truncated")

            def mismatch():
                return _damaged(ck, e, f"fails its checksum (chunk {key})")

            if nbytes <= _fmt._SMALL_FILE_BYTES:

                def whole():
                    fd = open_checked()
                    try:
                        check(_pread_into(fd, view, 0), view)
                    finally:
                        os.close(fd)
                    if not _matches(expected, view):
                        raise mismatch()

                return [(nbytes, whole)], None

            alg, block = _digest_scheme(expected)

            def read_range(fd: int, start: int, stop: int) -> int:
                # Each piece is hashed right after it is read, while in the CPU cache.
                h = _new_hasher(alg)
                for off in range(start, stop, _fmt._FUSED_BLOCK):
                    piece = view[off : min(off + _fmt._FUSED_BLOCK, stop)]
                    check(_pread_into(fd, piece, off), piece)
                    h.update(piece)
                return h.intdigest()

            fd = open_checked()
            self.fds.append(fd)
            try:  # a larger readahead window when the file is not in the page cache
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except (AttributeError, OSError):
                pass
            if block is None:  # one plain digest: one task streams the whole chunk

                def streamed():
                    if _format_digest(alg, read_range(fd, 0, nbytes)) != expected:
                        raise mismatch()

                return [(_fmt._RANGE_BYTES, streamed)], None
            slots: list = [None] * (-(-nbytes // block))
            tasks = []
            for i, off in enumerate(range(0, nbytes, block)):

                def one(i=i, off=off):
                    slots[i] = read_range(fd, off, min(off + block, nbytes))

                tasks.append((_fmt._RANGE_BYTES, one))

            def verify():
                if _combine_blocks(alg, block, slots) != expected:
                    raise mismatch()

            return tasks, verify
        # ocdbt
        def kv_fetch(fut):
            try:
                r = fut.result()
            except Exception as ex:  # noqa: BLE001 - TensorStore errors
                raise _damaged(ck, e, f"cannot be read (chunk {key}): {ex}") from ex
            if r.state != "value":
                raise _damaged(ck, e, f"has no data for chunk {key!r}")
            value = r.value
            if len(value) != nbytes:
                raise _damaged(ck, e, f"chunk {key!r} has {len(value)} bytes, expected {nbytes}")
            if not _matches(expected, value):
                raise _damaged(ck, e, f"fails its checksum (chunk {key})")
            view[:] = value

        loc = e.locs.get(key) if e.locs else None
        if loc is not None:

            def hinted():
                # pread at the recorded location; verified, else the authoritative kvstore read.
                try:
                    fd = self._data_fd(loc[0])
                    if _pread_into(fd, view, loc[1]) == nbytes and _matches(expected, view):
                        return
                except OSError:
                    pass
                kv_fetch(self._kvstore().read(f"{e.dir}/{key}"))

            return [(nbytes, hinted)], None
        fut = self._kvstore().read(f"{e.dir}/{key}")
        return [(nbytes, lambda: kv_fetch(fut))], None


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


# Runs of hinted OCDBT chunks read with one preadv each: neighbours closer than
# _RUN_GAP bytes, at most _RUN_BYTES and _RUN_CHUNKS (preadv takes at most 1,024 buffers,
# gaps included) per run.  Thousands of small variables otherwise cost a task each.  The
# gap covers the zarr.json values TensorStore puts between chunks; at most that many
# bytes that were not asked for are read between two chunks that were.
_RUN_GAP = 4 << 10
_RUN_BYTES = 4 << 20
_RUN_CHUNKS = 500
_BYTE = np.dtype(np.uint8)


def _hinted_runs(ck: _Ckpt, plans: list, reader: _ChunkReader, arena: _Arena):
    """Splits off the entries read whole from one hinted OCDBT chunk.

    Returns (the other plans, runs of (data file, offset, entry, chunk key, buffer) in
    file order, their total bytes).  Each buffer is the entry's only region buffer.
    """
    if ck.layout != "ocdbt":
        return plans, [], 0
    rest, members = [], []
    keys: dict[int, str] = {}  # the one chunk's key, per rank
    for e, regions in plans:
        rank = len(e.shape)
        key = keys.get(rank)
        if key is None:
            key = keys[rank] = _chunk_key((0,) * rank)
        loc = e.locs.get(key) if e.locs else None
        region = regions[0].region if len(regions) == 1 else None
        if (
            loc is None
            or region is None
            or e.chunk_shape != e.shape
            or key not in e.chunks
            or len(region) != rank
            or any(lo != 0 or hi != n for (lo, hi), n in zip(region, e.shape))
            or math.prod(e.shape) == 0
        ):
            rest.append((e, regions))
            continue
        raw = arena.empty((math.prod(e.shape) * e.dtype.itemsize,), _BYTE)
        regions[0].buf = raw.view(e.dtype).reshape(e.shape)
        members.append((loc[0], loc[1], e, key, raw))
    members.sort(key=lambda m: (m[0], m[1]))
    runs: list[list] = []
    for m in members:
        run = runs[-1] if runs else None
        if run is not None:
            first, last = run[0], run[-1]
            end = last[1] + last[4].nbytes
            if (
                m[0] == first[0]
                and end <= m[1] <= end + _RUN_GAP
                and m[1] + m[4].nbytes - first[1] <= _RUN_BYTES
                and len(run) < _RUN_CHUNKS
            ):
                run.append(m)
                continue
        runs.append([m])
    return rest, runs, sum(m[4].nbytes for m in members)


def _read_run(reader: _ChunkReader, run: list) -> None:
    """One preadv for a run of hinted chunks, each verified against its checksum; a
    chunk that does not verify is read again through the authoritative path.

    Run members are (data file, offset, entry, chunk key, the region's bytes as uint8)."""
    fname, start = run[0][0], run[0][1]
    gaps = np.empty(_RUN_GAP, np.uint8)
    iov, pos = [], start
    for _, off, _, _, raw in run:
        if off > pos:
            iov.append(gaps[: off - pos])
        iov.append(raw)
        pos = off + raw.nbytes
    try:
        got = os.preadv(reader._data_fd(fname), iov, start)
    except OSError:
        got = 0
    for _, off, e, key, raw in run:
        if off + raw.nbytes - start > got or not _matches(e.chunks[key], raw):
            tasks, verify = reader._read_tasks(e, key, raw)
            for _, fn in tasks:
                fn()
            if verify is not None:
                verify()
    reader.bar.advance(sum(m[4].nbytes for m in run), len(run))


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
