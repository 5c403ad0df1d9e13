"""Write execution: one save job writes a tmp directory (files or OCDBT layout),
its metadata, and commits it by an atomic rename."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from typing import Any

import numpy as np
import tensorstore as ts

from ._errors import CheckpointError
from . import _ckpt_format as _fmt
from . import _ckpt_fs as _fs
from ._ckpt_format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ORBAX_CHECKPOINT_METADATA,
    ORBAX_METADATA,
    VARSTORE_METADATA,
    _OLD_MARK,
    _STANDARD_HANDLER,
    _orbax_metadata_json,
    _zarr3_json,
)
from ._ckpt_fs import (
    _active_tmp,
    _fsync_path,
    _gc_paused,
    _grouped,
    _pwrite_all,
    _renameat2_exchange,
    _run_all,
    _start_writeback,
    _state_lock,
    _syncfs,
    _tmp_sibling,
    _write_small_file,
)
from ._ckpt_hash import (
    _as_bytes_view,
    _combine_blocks,
    _combined_checksum,
    _digest,
    _format_digest,
    _new_hasher,
    _seal_metadata,
)
from ._ckpt_open import is_checkpoint
from ._ckpt_plan import _WChunk, _WEntry
from ._progress import Progress, progress

_log = logging.getLogger("varstore._ckpt_io")


class _Tracker:
    """Progress of a save: bytes as they are written, a variable when its last chunk is.

    `parts(c, n)` announces that chunk `c` is written in `n` pieces (default 1);
    `done(c)` is called once per finished piece, from any I/O thread.
    """

    def __init__(self, bar: Progress, entries: list[_WEntry]):
        self.bar = bar
        self._lock = threading.Lock()
        self._left_in_entry = {id(e): len(e.chunks) for e in entries}
        self._entry_of = {id(c): e for e in entries for c in e.chunks}
        self._parts: dict[int, int] = {}
        empty = sum(1 for e in entries if not e.chunks)
        if empty:
            bar.advance(0, empty)

    def parts(self, c: _WChunk, n: int) -> None:
        self._parts[id(c)] = n

    def done(self, c: _WChunk) -> None:
        with self._lock:
            left = self._parts.get(id(c), 1) - 1
            self._parts[id(c)] = left
            if left > 0:
                return
            e = self._entry_of[id(c)]
            self._left_in_entry[id(e)] -= 1
            finished = self._left_in_entry[id(e)] == 0
        if finished:
            self.bar.advance(0, 1)


class _SaveJob:
    shared_tmp = False  # several processes write into tmp (multi-process saves)
    write_zarr_json = True

    def __init__(self, path, tmp, entries, extra, layout, algorithm, t_init):
        self.path = path
        self.tmp = tmp
        self.entries: list[_WEntry] = entries
        self.extra = extra
        self.layout = layout
        self.algorithm = algorithm
        self.t_init = t_init
        self.track: _Tracker | None = None

    def _data_bytes(self) -> int:
        return sum(c.data.nbytes for e in self.entries for c in e.chunks)

    # -- data
    def _hash_tasks(self):
        def hash_chunks(cs: list[_WChunk]):
            for c in cs:
                c.digest = _digest(self.algorithm, c.data)

        groups, cur, cur_bytes = [], [], 0
        for e in self.entries:
            for c in e.chunks:
                cur.append(c)
                cur_bytes += c.data.nbytes
                if cur_bytes >= _fmt._RANGE_BYTES or len(cur) >= 256:
                    groups.append(cur)
                    cur, cur_bytes = [], 0
        if cur:
            groups.append(cur)
        return [(lambda g=g: hash_chunks(g)) for g in groups]

    def _write_files_layout(self) -> None:
        tmp = self.tmp
        algorithm = self.algorithm
        nfiles = sum(1 + len(e.chunks) for e in self.entries)
        use_syncfs = nfiles > _fmt._SYNCFS_MIN_FILES and hasattr(os, "sync")
        per_file_sync = not use_syncfs
        small: list[tuple[int, Any]] = []
        tasks: list = []
        huge: list[tuple[str, _WChunk]] = []

        track = self.track

        def write_small(p: str, data, chunk: _WChunk | None):
            if chunk is not None:
                data = _as_bytes_view(chunk.data)
                chunk.digest = _digest(algorithm, data)
            _write_small_file(p, data, sync=per_file_sync)
            if chunk is not None:
                track.bar.advance(len(data))
                track.done(chunk)

        def write_range(fd: int, view: memoryview, start: int, stop: int) -> int:
            # One pass over memory: each piece is hashed, then copied to the page cache
            # while it is still in the CPU cache; disk writeback starts at the end.
            h = _new_hasher(algorithm)
            for off in range(start, stop, _fmt._FUSED_BLOCK):
                piece = view[off : min(off + _fmt._FUSED_BLOCK, stop)]
                h.update(piece)
                _pwrite_all(fd, piece, off)
                track.bar.advance(len(piece))
            _start_writeback(fd, start, stop - start)
            return h.intdigest()

        def write_streamed(p: str, c: _WChunk):
            view = _as_bytes_view(c.data)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                d = write_range(fd, view, 0, len(view))
                if per_file_sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            c.digest = _format_digest(algorithm, d)
            track.done(c)

        for e in self.entries:
            if self.shared_tmp:
                os.makedirs(os.path.join(tmp, e.dir), exist_ok=True)
            else:
                os.mkdir(os.path.join(tmp, e.dir))
            if self.write_zarr_json:
                zpath = os.path.join(tmp, e.dir, "zarr.json")
                zj = _zarr3_json(e.shape, e.dtype_name, e.chunk_shape)
                small.append((len(zj), lambda p=zpath, zj=zj: write_small(p, zj, None)))
            for c in e.chunks:
                p = os.path.join(tmp, e.dir, c.key)
                n = c.data.nbytes
                if n < _fmt._SMALL_FILE_BYTES:
                    small.append((n, lambda p=p, c=c: write_small(p, None, c)))
                elif n <= _fmt._HASH_BLOCK:
                    tasks.append((n, p, c))
                else:
                    huge.append((p, c))
        # Largest first, so that the pool's threads finish together.
        tasks.sort(key=lambda t: -t[0])
        run = [(lambda p=p, c=c: write_streamed(p, c)) for _, p, c in tasks]
        fds: list[int] = []
        blocks: list[tuple[_WChunk, list]] = []
        try:
            for p, c in huge:  # parallel blocks, each hashed as it is written
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                fds.append(fd)
                view = _as_bytes_view(c.data)
                n = len(view)
                slots: list = [None] * (-(-n // _fmt._HASH_BLOCK))
                blocks.append((c, slots))
                track.parts(c, len(slots))
                for i, off in enumerate(range(0, n, _fmt._HASH_BLOCK)):

                    def one(fd=fd, view=view, off=off, i=i, slots=slots, n=n, c=c):
                        slots[i] = write_range(fd, view, off, min(off + _fmt._HASH_BLOCK, n))
                        track.done(c)

                    run.insert(0, one)
            _run_all(run + _grouped(small, max_bytes=_fmt._SMALL_FILE_BYTES * 4, max_n=_fmt._SMALL_BATCH))
            for c, slots in blocks:
                c.digest = _combine_blocks(algorithm, _fmt._HASH_BLOCK, slots)
            if per_file_sync and fds:
                _run_all([(lambda fd=fd: os.fsync(fd)) for fd in fds])
        finally:
            for fd in fds:
                os.close(fd)
        meta_files = self._write_metadata_files()
        if use_syncfs:
            _syncfs(tmp)
        else:
            # Concurrent fsyncs share journal commits.
            paths = [(p, False) for p in meta_files]
            paths += [(os.path.join(tmp, e.dir), True) for e in self.entries]
            _run_all(_grouped([(0, lambda p=p, d=d: _fsync_path(p, d)) for p, d in paths], max_n=8))
            _fsync_path(tmp, True)

    def _ocdbt_db(self) -> str:
        """The directory of the OCDBT database this job writes its chunks into."""
        return self.tmp

    def _write_ocdbt_layout(self) -> None:
        tmp, db = self.tmp, self._ocdbt_db()
        _run_all(self._hash_tasks())
        kv = ts.KvStore.open(_ocdbt_spec(db), context=_ocdbt_context()).result()
        txn = ts.Transaction()
        kvt = kv.with_transaction(txn)
        chunks: dict[bytes, _WChunk] = {}
        for e in self.entries:
            if self.write_zarr_json:
                kvt.write(f"{e.dir}/zarr.json", _zarr3_json(e.shape, e.dtype_name, e.chunk_shape))
            for c in e.chunks:
                kvt.write(f"{e.dir}/{c.key}", c.data.tobytes())
                chunks[f"{e.dir}/{c.key}".encode()] = c
        txn.commit_async().result()
        del kv, kvt, txn
        # One step after the commit (empty variables were counted up front).
        self.track.bar.advance(self._data_bytes(), sum(1 for e in self.entries if e.chunks))
        if db == tmp:  # per-process databases are indexed once merged (_ckpt_multi)
            self._index_ocdbt_values(chunks)
        meta_files = self._write_metadata_files()
        # TensorStore fsyncs the files it writes; make sure of them and of the directories.
        _fsync_tree(db, meta_files)
        if db != tmp:  # the per-process database's entry in tmp
            _fsync_path(tmp, True)

    def _index_ocdbt_values(self, chunks: dict[bytes, _WChunk], nbytes=None) -> None:
        """Records where OCDBT put each chunk inside its data files (a read-side shortcut).

        TensorStore stores values longer than its inline limit verbatim in data files
        under ``d/``; its own dump of the new B+tree (`ts.ocdbt.dump`) gives each key's
        (file, offset, length).  These are hints only: readers verify the bytes against
        the chunk checksum and fall back to a kvstore read on any mismatch, so a wrong
        or missing hint costs time, never correctness.
        """
        try:
            base = ts.KvStore.open({"driver": "file", "path": self.tmp + "/"}).result()
            manifest = ts.ocdbt.dump(base).result()
            latest = max(manifest["versions"], key=lambda v: v["generation_number"])
            pending = [(latest["root"]["location"], b"")] if "location" in latest["root"] else []
            while pending:
                location, prefix = pending.pop()
                node = ts.ocdbt.dump(base, location).result()
                for entry in node["entries"]:
                    if node["height"] > 0:  # keys below are relative to the subtree prefix
                        pending.append(
                            (entry["location"], prefix + entry.get("subtree_common_prefix", b""))
                        )
                    elif "indirect_value" in entry:
                        key = prefix + entry["key"]
                        _record_location(
                            chunks.get(key),
                            entry["indirect_value"],
                            None if nbytes is None else nbytes.get(key),
                        )
        except Exception as e:  # noqa: BLE001 - hints only: a checkpoint without them is valid
            _log.debug("No OCDBT location hints for %r: %s", self.tmp, e)

    def _write_metadata_files(self) -> list[str]:
        """Writes _METADATA, _CHECKPOINT_METADATA and ours (not fsynced); returns their paths."""
        with _gc_paused():
            return self._write_metadata_files_impl()

    def _write_metadata_files_impl(self) -> list[str]:
        tmp = self.tmp
        use_ocdbt = self.layout == "ocdbt"
        entries_json = {}
        for e in sorted(self.entries, key=lambda e: e.name):
            chunks = {c.key: c.digest for c in e.chunks}
            locs = {c.key: list(c.loc) for c in e.chunks if c.loc is not None}
            entries_json[e.name] = {
                "dtype": e.dtype_name,
                "shape": list(e.shape),
                "dir": e.dir,
                "chunk_shape": list(e.chunk_shape),
                "chunks": chunks,
                "checksum": _combined_checksum(self.algorithm, chunks) if chunks else None,
                "sharding": e.sharding,
            }
            if locs:
                entries_json[e.name]["ocdbt_locations"] = locs
        ours = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "layout": self.layout,
            "hash": self.algorithm,
            "created_unix_ns": self.t_init,
            "entries": entries_json,
            "extra": self.extra,
        }
        ckpt_meta = {
            "item_handlers": _STANDARD_HANDLER,
            "metrics": {},
            "performance_metrics": {},
            "init_timestamp_nsecs": self.t_init,
            "commit_timestamp_nsecs": time.time_ns(),
            "custom_metadata": {},
        }
        files = [
            (ORBAX_METADATA, _orbax_metadata_json(self.entries, use_ocdbt)),
            (ORBAX_CHECKPOINT_METADATA, json.dumps(ckpt_meta).encode()),
            (VARSTORE_METADATA, _seal_metadata(json.dumps(ours), self.algorithm)),
        ]
        out = []
        for fname, data in files:
            out.append(os.path.join(tmp, fname))
            _write_small_file(out[-1], data, sync=False)
        return out

    # -- commit
    def _commit(self) -> None:
        path, tmp = self.path, self.tmp
        parent = os.path.dirname(path)
        if os.path.lexists(path):
            if not os.path.isdir(path) or os.path.islink(path):
                raise CheckpointError(
                    f"Cannot save checkpoint {path!r}: a file that is not a checkpoint "
                    "directory is in the way."
                )
            if not is_checkpoint(path) and os.listdir(path):
                raise CheckpointError(
                    f"Cannot save checkpoint {path!r}: the directory exists and is not a "
                    "checkpoint; refusing to replace it.  Remove it or pick another path."
                )
            if not _fs._force_rename_fallback and _renameat2_exchange(tmp, path):
                _fsync_path(parent, True)
                # tmp now holds the old checkpoint.
                shutil.rmtree(tmp, ignore_errors=True)
                return
            old = _tmp_sibling(path, _OLD_MARK)
            os.rename(path, old)
            os.rename(tmp, path)
            _fsync_path(parent, True)
            shutil.rmtree(old, ignore_errors=True)
            return
        os.rename(tmp, path)
        _fsync_path(parent, True)

    def _write_data(self) -> None:
        """Writes this job's chunks and metadata into tmp, durably, with progress."""
        with progress(
            self._data_bytes(), len(self.entries), f"Saving {self.path}"
        ) as bar:
            self.track = _Tracker(bar, self.entries)
            try:
                if self.layout == "ocdbt":
                    self._write_ocdbt_layout()
                else:
                    self._write_files_layout()
            finally:
                self.track = None

    def run(self) -> None:
        try:
            self._write_data()
            self._commit()
        except BaseException as e:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(
                f"Saving checkpoint {self.path!r} failed: {type(e).__name__}: {e}"
            ) from e
        finally:
            with _state_lock:
                _active_tmp.discard(self.tmp)
            for e in self.entries:  # release host copies early
                e.chunks = [_WChunk(c.key, np.empty(0, np.uint8), c.digest) for c in e.chunks]


def _record_location(chunk: _WChunk | None, reference: str, nbytes: int | None = None) -> None:
    """Sets `chunk.loc` from a dump reference ``value:<db>:d/<file>:<offset>:<length>``.

    ``<db>`` is empty for the root database and ``ocdbt.process_<i>/`` for the
    per-process databases a multi-process save merges; `nbytes` is the chunk's size
    when `chunk.data` no longer holds it.
    """
    if chunk is None:
        return
    where, offset, length = reference.rsplit(":", 2)
    kind, _, rest = where.partition(":")
    db, sep, fname = rest.rpartition(":d/")
    if kind != "value" or not sep or not fname or "/" in fname:
        return
    if db and not re.fullmatch(_fmt._PROCESS_DB_RE, db):
        return
    if int(length) == (chunk.data.nbytes if nbytes is None else nbytes):
        chunk.loc = (f"{db}d/{fname}" if db else fname, int(offset))


def _ocdbt_spec(db: str) -> dict:
    return {
        "driver": "ocdbt",
        "base": {"driver": "file", "path": db + "/"},
        "target_data_file_size": _fmt._OCDBT_TARGET_DATA_FILE_SIZE,
    }


def _ocdbt_context():
    return ts.Context({"file_io_concurrency": {"limit": 128}})


def _fsync_tree(root: str, extra: list[str] = ()) -> None:
    """fsyncs `root`, every file and directory under it, and the files in `extra`."""
    paths = {p: False for p in extra}
    paths[root] = True
    for d, dirs, files in os.walk(root):
        paths.update((os.path.join(d, f), False) for f in files)
        paths.update((os.path.join(d, x), True) for x in dirs)
    _run_all([(lambda p=p, isdir=isdir: _fsync_path(p, isdir)) for p, isdir in paths.items()])
