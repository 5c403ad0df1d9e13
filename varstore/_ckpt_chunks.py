"""Reading chunks: one chunk into its buffer, verified, by whichever path the layout
allows (a file per chunk, a recorded OCDBT location, TensorStore's kvstore), and runs of
neighbouring hinted OCDBT chunks with one ``preadv`` each.  `_ckpt_read` plans what to
read and places the results."""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np
import tensorstore as ts

from ._errors import CheckpointError, close_names
from ._progress import _NO_PROGRESS, Progress
from . import _ckpt_format as _fmt
from ._ckpt_format import _chunk_key
from ._ckpt_fs import _Arena, _pread_into
from ._ckpt_hash import (
    _as_bytes_view,
    _combine_blocks,
    _digest_scheme,
    _format_digest,
    _matches,
    _new_hasher,
)
from ._ckpt_open import _Ckpt, _REntry


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
                # "<file>" lies under d/, "ocdbt.process_<i>/d/<file>" under the
                # checkpoint (validated when the metadata was parsed).
                rel = fname if "/" in fname else os.path.join("d", fname)
                fd = os.open(os.path.join(self.ck.path, rel), os.O_RDONLY)
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
