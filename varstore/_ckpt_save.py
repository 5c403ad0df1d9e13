"""`write`: validation, blocking and background saves, `wait_all`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ._errors import CheckpointError
from ._ckpt_format import (
    _OLD_MARK,
    _TMP_MARK,
    _check_names,
)
from ._ckpt_fs import (
    _active_tmp,
    _gc_paused,
    _state_lock,
    _tmp_sibling,
)
from ._ckpt_hash import (
    _hash_algorithm,
)
from . import _ckpt_multi
from ._ckpt_plan import (
    _choose_layout,
    _choose_layout_global,
    _plan_entry,
    plan_entry_multiprocess,
    signature,
)
from ._ckpt_write import (
    _SaveJob,
)

_log = logging.getLogger("varstore._ckpt_io")


class SaveHandle:
    """The result of `write`: `.wait()` blocks and re-raises a failure, `.done()` polls."""

    def __init__(self, path: str):
        self.path = path
        self._event = threading.Event()
        self._error: BaseException | None = None
        self._observed = False

    def _finish(self, error: BaseException | None = None) -> None:
        self._error = error
        self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> None:
        if not self._event.wait(timeout):
            raise CheckpointError(
                f"Saving checkpoint {self.path!r} did not finish within {timeout} s."
            )
        self._observed = True
        err = self._error
        if err is not None:
            if isinstance(err, CheckpointError):
                raise CheckpointError(str(err)) from err
            raise CheckpointError(
                f"Saving checkpoint {self.path!r} failed: {type(err).__name__}: {err}"
            ) from err

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        if self.done() and self._error is not None:
            state = "failed"
        return f"SaveHandle({self.path!r}, {state})"


_save_lock = threading.Lock()  # one save at a time: the second waits for the first
_pending: list[tuple[SaveHandle, threading.Thread]] = []


def _wait_pending() -> None:
    while True:
        with _state_lock:
            live = [(h, t) for h, t in _pending if not h.done()]
            _pending[:] = [
                (h, t)
                for h, t in _pending
                if not h.done() or (h._error is not None and not h._observed)
            ]
        if not live:
            return
        for h, _ in live:
            h._event.wait()


def write(
    path,
    arrays: Mapping[str, Any],
    *,
    blocking: bool = True,
    extra_metadata: dict | None = None,
    layout: str = "auto",
    on_commit: Callable[[], None] | None = None,
) -> SaveHandle:
    """Saves `arrays` ({name: jax.Array | numpy array}) as a checkpoint directory `path`.

    Atomic and durable (see the module docstring).  `blocking=False` returns once the
    arrays are held (NumPy arrays copied, jax.Arrays as zero-copy views on CPU or host
    copies from accelerators); the write continues in the background.
    `extra_metadata` is any JSON-serializable dict, returned by `read_extra_metadata`.
    `layout`: "auto" (default), "files" or "ocdbt"; all are plain Orbax checkpoints.

    With several JAX processes every process calls `write` with the same path and names;
    each writes only the shards it holds (see `_ckpt_multi`: "files", or "ocdbt" as one
    database per process merged by process 0), and `on_commit` (if given) runs in
    process 0 right after the commit, before any process's `write` (or the handle's
    `wait`) returns.
    """
    path = os.path.abspath(os.fspath(path))
    base = os.path.basename(path)
    if not base or _TMP_MARK in base or _OLD_MARK in base:
        raise CheckpointError(f"Invalid checkpoint path {path!r}.")
    if layout not in ("auto", "files", "ocdbt"):
        raise CheckpointError(f"Unknown checkpoint layout {layout!r}; use auto, files or ocdbt.")
    if not isinstance(arrays, Mapping):
        raise CheckpointError("write() takes a mapping of names to arrays.")
    extra = {} if extra_metadata is None else extra_metadata
    try:
        extra = json.loads(json.dumps(extra, allow_nan=True))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"extra_metadata must be JSON-serializable: {e}") from None
    if not isinstance(extra, dict):
        raise CheckpointError("extra_metadata must be a dict.")
    keys_by_name = _check_names(arrays.keys())
    multi = jax.process_count() > 1
    algorithm = _hash_algorithm()
    if algorithm != "xxh3_64":
        _log.warning("xxhash is not installed; checksumming with zlib.crc32 (slower).")

    with _save_lock:
        _wait_pending()
        t_init = time.time_ns()
        if multi:
            job = _multiprocess_job(
                path, arrays, keys_by_name, extra, layout, algorithm, t_init, on_commit
            )
        else:
            with _gc_paused():
                entries = [
                    _plan_entry(name, keys_by_name[name], arrays[name], copy=not blocking)
                    for name in arrays
                ]
            chosen = _choose_layout(entries) if layout == "auto" else layout
            tmp = _make_tmp(path)
            job = _SaveJob(path, tmp, entries, extra, chosen, algorithm, t_init)
        handle = SaveHandle(path)
        if blocking:
            try:
                job.run()
            except BaseException as e:
                handle._finish(e)
                handle._observed = True
                raise
            handle._finish()
            return handle

        def background():
            try:
                job.run()
            except BaseException as e:  # noqa: BLE001 - reported through the handle
                handle._finish(e)
                _log.error("Background checkpoint save to %r failed: %s", path, e)
                return
            handle._finish()

        thread = threading.Thread(target=background, name=f"varstore-save-{base}", daemon=False)
        with _state_lock:
            _pending.append((handle, thread))
        thread.start()
        return handle


def _make_tmp(path: str) -> str:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = _tmp_sibling(path, _TMP_MARK)
        os.mkdir(tmp)
    except OSError as e:
        raise CheckpointError(f"Cannot create checkpoint {path!r}: {e}") from e
    with _state_lock:
        _active_tmp.add(tmp)
    return tmp


def _multiprocess_job(path, arrays, keys_by_name, extra, layout, algorithm, t_init, on_commit):
    """Plans this process's chunks and agrees with the other processes (`_ckpt_multi`)."""
    op = _ckpt_multi.new_save_op()
    entries, sig, error = [], None, None
    try:
        with _gc_paused():
            for name in arrays:
                e = plan_entry_multiprocess(name, keys_by_name[name], arrays[name])
                entries.append(e)
            sig = {e.name: signature(e, arrays[e.name]) for e in entries}
    except CheckpointError as e:
        error = str(e)  # told to every process, so that all of them fail alike
    # From the global chunk grid, the same in every process once `agree` has checked
    # that all hold the same entries; `agree` also checks that all chose alike.
    chosen = _choose_layout_global(entries) if layout == "auto" else layout
    tmp = _ckpt_multi.agree(op, path, sig, error, lambda: _make_tmp(path), chosen)
    with _state_lock:
        _active_tmp.add(tmp)
    return _ckpt_multi.MultiSaveJob(
        path, tmp, entries, extra, chosen, algorithm, t_init, op=op, on_commit=on_commit
    )


def wait_all() -> None:
    """Waits for every pending asynchronous write of this process.

    Raises `CheckpointError` for the first one that failed and whose handle was not waited on.
    """
    with _state_lock:
        items = list(_pending)
    for h, _ in items:
        h._event.wait()
    with _state_lock:
        failed = [h for h, _ in _pending if h.done() and h._error is not None and not h._observed]
        _pending[:] = [(h, t) for h, t in _pending if not h.done()]
    if failed:
        failed[0].wait()


def _wait_all_at_exit() -> None:
    try:
        wait_all()
    except CheckpointError as e:
        _log.error("%s", e)


# Runs at interpreter exit *before* concurrent.futures shuts its pools down (LIFO order of
# threading's exit hooks), so a pending background save completes instead of failing.
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_wait_all_at_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_wait_all_at_exit)
