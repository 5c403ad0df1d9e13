"""`vs.train.Saver`: TensorFlow 1.x's Saver over Orbax checkpoints.

A save writes one Orbax PyTree checkpoint directory atomically (`_ckpt_io`), then
records it in the directory's `checkpoint` state file (written atomically, by the
primary process only) and deletes the checkpoints beyond `max_to_keep`. The state
file is updated before old checkpoints are deleted, so every path it names exists
whatever moment a crash comes.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import sys
import threading
import time
import weakref
from typing import Any

import jax
import numpy as np

from . import _checkpoint_state, _ckpt_io
from ._errors import CheckpointError, UninitializedError, VarStoreError
from ._restore_plan import bindings, make_plan, raise_for
from ._sources import STATE_FILENAME, checkpoint_exists, open_checkpoint
from ._store import VarStore, _new

_live_savers: weakref.WeakSet = weakref.WeakSet()


def _global_step_value(global_step: Any) -> int:
    try:
        value = np.asarray(global_step)
        if value.shape != () or value.dtype.kind not in "iu":
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"global_step must be an integer (a Python int or an integer scalar array), "
            f"got {type(global_step).__name__} {global_step!r}."
        ) from None


class Saver:
    """Saves and restores variables, as `tf.compat.v1.train.Saver`.

    Args:
      var_list: None (every global variable of the default graph, now), a list of
        variables or names, or a dict of checkpoint name -> variable (or name).
      max_to_keep: how many recent checkpoints to keep; None or 0 keeps all.
      keep_checkpoint_every_n_hours: additionally keep one checkpoint per this many
        hours of training.
      allow_empty: allow a Saver with nothing to save.

    Raises:
      CheckpointError: a var_list with duplicate or clashing names, or empty.

    >>> saver = vs.train.Saver()
    >>> path = saver.save(store, "/tmp/model.ckpt", global_step=1000)
    >>> store = saver.restore(path)
    """

    def __init__(
        self,
        var_list: Any = None,
        *,
        max_to_keep: int | None = 5,
        keep_checkpoint_every_n_hours: float = 10000.0,
        allow_empty: bool = False,
    ) -> None:
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 0):
            raise CheckpointError(
                f"Saver: max_to_keep must be None or an int >= 0, got {max_to_keep!r}."
            )
        if not keep_checkpoint_every_n_hours > 0:
            raise CheckpointError(
                "Saver: keep_checkpoint_every_n_hours must be > 0, got "
                f"{keep_checkpoint_every_n_hours!r}."
            )
        self._bindings = bindings(var_list, allow_empty)
        # Names the storage cannot hold fail here, before anything is written.
        _ckpt_io.check_names([b.ckpt_name for b in self._bindings])
        self._max_to_keep = max_to_keep
        self._keep_hours = float(keep_checkpoint_every_n_hours)
        self._next_keep_time = time.time() + self._keep_hours * 3600
        self._last: list[tuple[str, float]] = []  # (path, timestamp), oldest first
        self._adopted: set[str] = set()
        self._cleaned: set[str] = set()
        self._last_preserved: float | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vs-saver")
        self._pending: concurrent.futures.Future | None = None
        self._lock = threading.Lock()
        _live_savers.add(self)

    # -- properties ----------------------------------------------------------
    @property
    def last_checkpoints(self) -> list[str]:
        """The checkpoints this Saver keeps, oldest first."""
        with self._lock:
            return [p for p, _ in self._last]

    @property
    def var_names(self) -> dict[str, str]:
        """Checkpoint name -> variable name of everything this Saver handles."""
        return {b.ckpt_name: b.var_name for b in self._bindings}

    def set_last_checkpoints_with_time(self, last_checkpoints_with_time) -> None:
        """Sets the kept checkpoints, as TensorFlow's method of that name."""
        with self._lock:
            self._last = [(os.fspath(p), float(t)) for p, t in last_checkpoints_with_time]

    def recover_last_checkpoints(self, checkpoint_paths) -> None:
        """Adopts existing checkpoints (oldest first) so `max_to_keep` covers them."""
        paths = [os.fspath(p) for p in checkpoint_paths if checkpoint_exists(p)]
        now = time.time()
        self.set_last_checkpoints_with_time([(p, now) for p in paths])

    # -- saving --------------------------------------------------------------
    def save(
        self,
        store: VarStore,
        save_path: str | os.PathLike,
        global_step: Any = None,
        *,
        blocking: bool = True,
    ) -> str:
        """Writes the Saver's variables from `store` to a checkpoint.

        Args:
          store: the values.
          save_path: the checkpoint path, e.g. `/tmp/train/model.ckpt`.
          global_step: if given, the checkpoint is `f"{save_path}-{global_step}"`.
          blocking: if False, return once the values are held (on CPU, a zero-copy
            hold on the arrays' buffers, which later `delete()` or donation cannot
            reuse; on accelerators, a copy in host memory) and write in the
            background; `wait_until_finished()` waits for the write.

        Returns:
          The path of the checkpoint.

        Raises:
          UninitializedError: when `store` lacks a variable of this Saver.
          CheckpointError: when the checkpoint cannot be written; earlier
            checkpoints and the state file are left as they were.
        """
        self.wait_until_finished()
        if not isinstance(store, VarStore):
            raise CheckpointError(
                f"Saver.save: the first argument must be a vs.VarStore, got "
                f"{type(store).__name__}. Wrap a dict with vs.VarStore(...)."
            )
        path = os.fspath(save_path)
        if not path or path.endswith(os.sep):
            raise CheckpointError(
                f"Saver.save: save_path {path!r} must name a checkpoint inside a "
                "directory, e.g. '/tmp/train/model.ckpt'."
            )
        if global_step is not None:
            path = f"{path}-{_global_step_value(global_step)}"
        if os.path.basename(path) == STATE_FILENAME:
            raise CheckpointError(
                f"Saver.save: save_path {path!r} is named like the directory's "
                f"'{STATE_FILENAME}' state file, which would then be unwritable. Use "
                "another name, e.g. 'model.ckpt'."
            )
        missing = [b.var_name for b in self._bindings if b.var_name not in store]
        if missing:
            raise UninitializedError(
                f"Saver.save: the store has no value for {len(missing)} variable(s) of "
                f"this Saver: {', '.join(repr(n) for n in missing[:10])}. Initialize or "
                "restore them first, or save with a Saver whose var_list leaves them out."
            )
        arrays = {b.ckpt_name: store[b.var_name] for b in self._bindings}
        if any(isinstance(a, jax.core.Tracer) for a in arrays.values()):
            raise CheckpointError(
                "Saver.save was called inside a jax transformation (jit, grad, ...): "
                "save concrete arrays, outside the transformed function."
            )
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.exists(path) and not checkpoint_exists(path):
            raise CheckpointError(
                f"Saver.save: {path!r} exists and is not a checkpoint; refusing to "
                "replace it. Choose another save_path."
            )
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as e:
            raise CheckpointError(
                f"Saver.save: cannot create the checkpoint directory {directory!r}: {e}."
            ) from None
        if directory not in self._cleaned and jax.process_index() == 0:
            # Leftovers of saves interrupted by a crash (never those of live saves).
            _ckpt_io.cleanup_tmp(directory)
            _checkpoint_state.cleanup_temporaries(directory, STATE_FILENAME)
            self._cleaned.add(directory)
        timestamp = time.time()
        if jax.process_count() > 1:
            # Every process writes its shards; process 0 commits, then records the
            # checkpoint before any process's save (or wait) returns.
            handle = _ckpt_io.write(
                path, arrays, blocking=blocking,
                on_commit=lambda: self._record(path, directory, timestamp),
            )
            if blocking:
                handle.wait()
            else:
                self._pending = self._executor.submit(handle.wait)
            return path
        if blocking:
            # Written from the caller's arrays without an extra host copy.
            _ckpt_io.write(path, arrays, blocking=True).wait()
            self._record(path, directory, timestamp)
            return path
        handle = _ckpt_io.write(path, arrays, blocking=False)

        def finish():
            handle.wait()
            self._record(path, directory, timestamp)

        self._pending = self._executor.submit(finish)
        return path

    def wait_until_finished(self) -> None:
        """Waits for a `blocking=False` save to be written and recorded.

        Raises:
          CheckpointError: when that save failed.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except VarStoreError:
            raise
        except Exception as e:  # noqa: BLE001 - reported as a checkpoint error
            raise CheckpointError(f"Saving the checkpoint failed: {type(e).__name__}: {e}") from e

    def _record(self, path: str, directory: str, timestamp: float) -> None:
        """State-file bookkeeping after `path` is durable; primary process only."""
        if jax.process_index() != 0:
            return
        with self._lock:
            self._adopt(directory)
            self._last = [(p, t) for p, t in self._last if p != path]
            self._last.append((path, timestamp))
            doomed: list[str] = []
            if self._max_to_keep:
                while len(self._last) > self._max_to_keep:
                    old, t = self._last.pop(0)
                    if t > self._next_keep_time:
                        self._next_keep_time += self._keep_hours * 3600
                        self._last_preserved = t
                        continue
                    doomed.append(old)
                kept = self._last
            else:
                kept = self._last[-1:]  # TensorFlow: keep all files, list the newest
            state = _checkpoint_state.CheckpointState(
                model_checkpoint_path=path,
                all_model_checkpoint_paths=tuple(p for p, _ in kept),
                all_model_checkpoint_timestamps=tuple(t for _, t in kept),
                last_preserved_timestamp=self._last_preserved,
            )
            _checkpoint_state.write_state(directory, state, STATE_FILENAME)
        # Only after the state file no longer names them.
        for old in doomed:
            _delete_checkpoint(old, path)

    def _adopt(self, directory: str) -> None:
        """On the first save into `directory`, takes over the checkpoints its
        state file already lists, so that `max_to_keep` spans restarts."""
        if directory in self._adopted:
            return
        self._adopted.add(directory)
        try:
            state = _checkpoint_state.read_state(directory, STATE_FILENAME)
        except CheckpointError:
            return  # a damaged state file is replaced by the next write
        if state is None:
            return
        known = {p for p, _ in self._last}
        stamps = list(state.all_model_checkpoint_timestamps)
        adopted = []
        for i, p in enumerate(state.all_model_checkpoint_paths):
            try:
                p = _checkpoint_state.resolve_checkpoint_path(directory, p, STATE_FILENAME)
            except CheckpointError:
                continue
            if not _inside(p, directory):
                continue  # through a symbolic link: never delete outside the directory
            if p not in known and checkpoint_exists(p):
                adopted.append((p, stamps[i] if i < len(stamps) else time.time()))
        self._last = adopted + self._last
        if state.last_preserved_timestamp:
            self._last_preserved = state.last_preserved_timestamp

    # -- restoring -----------------------------------------------------------
    def restore(
        self,
        save_path: str | os.PathLike,
        store: VarStore | None = None,
        *,
        on_missing: str = "error",
    ) -> VarStore:
        """Reads the Saver's variables from a checkpoint.

        Each variable goes straight onto its placement/sharding, whatever sharding
        or device count it was saved with, with its declared dtype. Other entries
        of the checkpoint are not read.

        Args:
          save_path: a checkpoint path (varstore, any Orbax PyTree checkpoint, or a
            TensorFlow 1.x prefix), or a directory (its latest checkpoint).
          store: values to merge the restored ones into.
          on_missing: "error" (default) or "skip" to leave variables absent from
            the checkpoint out of the result.

        Returns:
          `store` (or a new store) with the restored variables.

        Raises:
          CheckpointError: a missing or mis-shaped variable (named with the
            checkpoint and both shapes), or damaged data.
        """
        if on_missing not in ("error", "skip"):
            raise CheckpointError(
                f"Saver.restore: on_missing must be 'error' or 'skip', got {on_missing!r}."
            )
        if store is not None and not isinstance(store, VarStore):
            raise CheckpointError(
                f"Saver.restore: store must be a vs.VarStore or None, got "
                f"{type(store).__name__}."
            )
        self.wait_until_finished()
        # With several processes, all of them restore together: one that restores alone
        # fails here after VARSTORE_BARRIER_TIMEOUT seconds instead of hanging later.
        _ckpt_io.sync_processes(f"Restoring checkpoint {save_path!r}")
        with _ckpt_io.gc_paused():  # thousands of small objects per restore
            source = open_checkpoint(save_path)
            plan = make_plan(source, self._bindings, store)
            raise_for(plan, on_missing)
            by_ckpt = {b.ckpt_name: b for b in self._bindings}
            targets = {}
            for r in plan.restored:
                b = by_ckpt[r.ckpt_name]
                if b.variable is not None:
                    sharding = b.variable.device
                elif store is not None and b.var_name in store:
                    sharding = getattr(store[b.var_name], "sharding", None)
                else:
                    sharding = None
                targets[r.ckpt_name] = (r.shape, r.dtype, sharding)
            values = source.read(targets)
            restored = {by_ckpt[c].var_name: v for c, v in values.items()}
            base = {} if store is None else store.to_dict()
            base.update(restored)
            return _new(base)

    def __repr__(self) -> str:
        return f"<vs.train.Saver of {len(self._bindings)} variables>"


def _inside(path: str, directory: str) -> bool:
    """Whether `path` lies inside `directory` once symbolic links are resolved."""
    real, root = os.path.realpath(path), os.path.realpath(directory)
    return real != root and os.path.commonpath([real, root]) == root


def _delete_checkpoint(path: str, keep: str) -> None:
    """Removes an old checkpoint: renamed away first, so a crash midway never
    leaves a half-deleted directory that looks like a checkpoint."""
    if os.path.abspath(path) == os.path.abspath(keep) or not checkpoint_exists(path):
        return
    if _ckpt_io.is_checkpoint(path) and os.path.isdir(path):
        try:
            _ckpt_io.remove_checkpoint(path)
        except CheckpointError:
            return  # as TensorFlow: an old checkpoint that cannot be deleted stays
    else:  # a TensorFlow prefix: its .index first, so it stops being a checkpoint
        for suffix in (".index", ".meta"):
            try:
                os.remove(path + suffix)
            except FileNotFoundError:
                pass
        parent = os.path.dirname(path) or "."
        base = os.path.basename(path)
        for name in os.listdir(parent):
            if name.startswith(base + ".data-"):
                os.remove(os.path.join(parent, name))


@atexit.register
def _wait_at_exit() -> None:
    # A process that ends with a save in flight would lose it silently.
    for saver in list(_live_savers):
        try:
            saver.wait_until_finished()
        except VarStoreError as e:
            print(f"varstore: a background save failed before exit: {e}", file=sys.stderr)
