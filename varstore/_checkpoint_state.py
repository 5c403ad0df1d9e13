"""TensorFlow's ``checkpoint`` state file: which checkpoints a directory holds.

``tf.compat.v1.train.Saver`` keeps, next to its checkpoints, a text-format
``CheckpointState`` protobuf in a file named ``checkpoint``. This module is the
face the rest of varstore imports: it reads that file, writes it atomically,
cleans up the temporaries of killed writes and decides which of the paths it
names may be followed. The text format itself (parsing, and printing byte for
byte as TensorFlow) lives in ``_checkpoint_state_text``.

API used by the rest of varstore:

``CheckpointState``
    Frozen dataclass with the four fields. Paths are file-system paths in the
    form TensorFlow's ``get_checkpoint_state`` returns them: an entry that is
    relative in the file is joined with the checkpoint directory
    (``os.path.join(checkpoint_dir, entry)``; relative to the current
    directory when ``checkpoint_dir`` is), absolute entries are kept as they
    are. `write_state` takes paths in the same form.

``read_state(checkpoint_dir, latest_filename="checkpoint") -> CheckpointState | None``
    None when the file does not exist. Parses the protobuf text format (see
    ``_checkpoint_state_text``); raises `CheckpointError` naming the file and
    line when it cannot be read or parsed, and when ``model_checkpoint_path``
    is missing or empty (where TensorFlow raises ValueError).

``write_state(checkpoint_dir, state, latest_filename="checkpoint") -> None``
    Writes the file as TensorFlow 2.x's protobuf text printer does, byte for
    byte (see ``_checkpoint_state_text``). Atomic: a temporary file
    ``<latest_filename>.tmp<pid>-<32 hex digits>`` in the same directory is
    written and fsynced, then ``os.replace``-d over the old file, then the
    directory is fsynced; on failure the old file is untouched and the
    temporary file removed.

``cleanup_temporaries(checkpoint_dir, latest_filename="checkpoint") -> list[str]``
    Removes the temporaries of `write_state` calls that were killed midway
    (and TensorFlow's, named without a pid, once over a minute old); leaves
    those of live writers alone.

``resolve_checkpoint_path(checkpoint_dir, path, latest_filename="checkpoint") -> str``
    The safety rule for following a state file. TensorFlow follows any path a
    state file names; varstore follows only paths that stay inside the
    checkpoint directory: ``path`` (in `CheckpointState` form) is made
    absolute and normalized lexically (``os.path.abspath``: ``..`` and ``.``
    collapsed, symbolic links NOT resolved), and must lie strictly below the
    equally normalized ``checkpoint_dir``. Absolute entries are therefore
    allowed exactly when they point inside the directory. Returns the
    normalized absolute path; raises `CheckpointError` naming the state file,
    the path and the fix otherwise. Callers must apply it to every path they
    open or delete, including ``all_model_checkpoint_paths``.

``latest_checkpoint(checkpoint_dir, exists, latest_filename="checkpoint") -> str | None``
    As ``tf.train.latest_checkpoint``: the state file's
    ``model_checkpoint_path`` (resolved by `resolve_checkpoint_path`, so
    absolute and normalized), or None when there is no state file or when
    ``exists(path)`` is false. Unlike TensorFlow, a corrupt state file or an
    escaping path raises `CheckpointError` rather than giving None.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import time
import uuid
from collections.abc import Callable

from ._checkpoint_state_text import CheckpointState as CheckpointState
from ._checkpoint_state_text import _format as _format
from ._checkpoint_state_text import _is_inside as _is_inside
from ._checkpoint_state_text import _parse as _parse
from ._ckpt_fs import process_alive
from ._errors import CheckpointError

__all__ = [
    "CheckpointState",
    "latest_checkpoint",
    "read_state",
    "resolve_checkpoint_path",
    "write_state",
]

DEFAULT_LATEST_FILENAME = "checkpoint"


def _state_file(checkpoint_dir: str | os.PathLike[str], latest_filename: str) -> str:
    return os.path.join(os.fspath(checkpoint_dir), latest_filename)


# ---------------------------------------------------------------------------
# Reading.


def read_state(
    checkpoint_dir: str | os.PathLike[str], latest_filename: str = DEFAULT_LATEST_FILENAME
) -> CheckpointState | None:
    """Reads the state file of `checkpoint_dir`, as ``tf.train.get_checkpoint_state``.

    Args:
        checkpoint_dir: the directory holding the checkpoints.
        latest_filename: the state file's name inside it.

    Returns:
        The state, with relative entries joined with `checkpoint_dir`; None
        when the state file does not exist. Paths are not checked: pass them
        through `resolve_checkpoint_path` before using them.

    Raises:
        CheckpointError: the file cannot be read or parsed, or names no
            checkpoint.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    path = _state_file(checkpoint_dir, latest_filename)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CheckpointError(
            f"Checkpoint state file '{path}' cannot be read: {err}. Check the path and its "
            f"permissions."
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise CheckpointError(
            f"Checkpoint state file '{path}' line {line}: not UTF-8 text (byte "
            f"{data[err.start]:#04x}). Expected TensorFlow's text-format CheckpointState. "
            f"Repair or delete the file, or pass a checkpoint prefix explicitly."
        ) from None
    state = _parse(text, path)

    def join(p: str) -> str:
        return p if os.path.isabs(p) else os.path.join(checkpoint_dir, p)

    return dataclasses.replace(
        state,
        model_checkpoint_path=join(state.model_checkpoint_path),
        all_model_checkpoint_paths=tuple(join(p) for p in state.all_model_checkpoint_paths),
    )


# ---------------------------------------------------------------------------
# Writing. It stays in this module, not beside the text format: the crash tests
# (tests/test_crash.py) replace this module's `os` to widen the windows of a
# state-file write, so the code that writes must look `os` up here.


def write_state(
    checkpoint_dir: str | os.PathLike[str],
    state: CheckpointState,
    latest_filename: str = DEFAULT_LATEST_FILENAME,
) -> None:
    """Atomically writes `state` as the state file of `checkpoint_dir`.

    Args:
        checkpoint_dir: an existing directory.
        state: the state; paths absolute or relative to the current directory
            (the form `read_state` returns).
        latest_filename: the state file's name inside `checkpoint_dir`.

    Raises:
        CheckpointError: the directory does not exist, the state is
            inconsistent, or writing fails (the previous file is then intact).
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    path = _state_file(checkpoint_dir, latest_filename)
    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(
            f"Cannot write checkpoint state file '{path}': the directory "
            f"'{checkpoint_dir}' does not exist. Save the checkpoint into it first, or "
            f"create it."
        )
    data = _format(checkpoint_dir, state, path)
    # TensorFlow's atomic_write naming, plus the writer's pid so that
    # `cleanup_temporaries` can tell a live writer's file from a killed one's.
    temp = f"{path}.tmp{os.getpid()}-{uuid.uuid4().hex}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except OSError as err:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise CheckpointError(
            f"Cannot write checkpoint state file '{path}': {err}. The previous state file, "
            f"if any, is unchanged. Check free space and permissions of '{checkpoint_dir}'."
        ) from None
    _fsync_directory(checkpoint_dir, path)


_TEMP_RE = re.compile(r"\.tmp(?:(\d+)-)?[0-9a-f]{32}$")


def cleanup_temporaries(
    checkpoint_dir: str | os.PathLike[str], latest_filename: str = DEFAULT_LATEST_FILENAME
) -> list[str]:
    """Removes temporaries of state-file writes that were killed midway.

    A temporary carrying the pid of a live process on this host is left alone (that
    write may still finish); one without a pid (TensorFlow's naming) is removed only
    when it is over a minute old.

    Returns:
        The paths removed.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    removed = []
    try:
        names = os.listdir(checkpoint_dir)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(latest_filename + ".tmp"):
            continue
        m = _TEMP_RE.fullmatch(name[len(latest_filename) :])
        if m is None:
            continue
        path = os.path.join(checkpoint_dir, name)
        try:
            if m.group(1) is not None:
                if process_alive(int(m.group(1))):
                    continue
            elif time.time() - os.lstat(path).st_mtime < 60:
                continue
            if os.path.isfile(path) and not os.path.islink(path):
                os.unlink(path)
                removed.append(path)
        except OSError:
            continue
    return removed


def _fsync_directory(checkpoint_dir: str, path: str) -> None:
    """Makes the rename durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(checkpoint_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise CheckpointError(
                f"Wrote checkpoint state file '{path}' but could not flush its directory "
                f"'{checkpoint_dir}': {err}. The new state may be lost on a crash; check "
                f"the file system."
            ) from None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Following paths.


def resolve_checkpoint_path(
    checkpoint_dir: str | os.PathLike[str],
    path: str,
    latest_filename: str = DEFAULT_LATEST_FILENAME,
) -> str:
    """The absolute, normalized `path` if it lies inside `checkpoint_dir`.

    Args:
        checkpoint_dir: the directory holding the state file.
        path: a path in `CheckpointState` form (as `read_state` returns it:
            absolute, or relative to the current directory). For a raw entry of
            a state file, pass ``os.path.join(checkpoint_dir, entry)``.
        latest_filename: the state file's name, for error messages.

    Returns:
        ``os.path.abspath(path)``.

    Raises:
        CheckpointError: the path leaves `checkpoint_dir` (``..`` components,
            or an absolute path elsewhere) or is the directory itself.
            Symbolic links are not resolved.
    """
    checkpoint_dir = os.fspath(checkpoint_dir)
    directory = os.path.abspath(checkpoint_dir)
    absolute = os.path.abspath(path)
    if not _is_inside(directory, absolute):
        state_file = _state_file(checkpoint_dir, latest_filename)
        raise CheckpointError(
            f"Checkpoint state file '{state_file}' names checkpoint '{path}', which is not "
            f"inside the checkpoint directory '{directory}' (it resolves to '{absolute}'). "
            f"varstore only follows checkpoint paths inside the directory of the state file "
            f"(TensorFlow would follow it anywhere). If that checkpoint is genuine, move it "
            f"into '{directory}' and save again, or pass its prefix explicitly instead of "
            f"the directory."
        )
    return absolute


def latest_checkpoint(
    checkpoint_dir: str | os.PathLike[str],
    exists: Callable[[str], bool],
    latest_filename: str = DEFAULT_LATEST_FILENAME,
) -> str | None:
    """The latest checkpoint named by the state file, as ``tf.train.latest_checkpoint``.

    Args:
        checkpoint_dir: the directory holding the checkpoints.
        exists: tells whether a checkpoint path (prefix or directory) exists.
        latest_filename: the state file's name.

    Returns:
        The absolute, normalized path of the latest checkpoint; None when there
        is no state file or `exists` says the checkpoint is gone.

    Raises:
        CheckpointError: the state file is corrupt or names a path outside
            `checkpoint_dir`.
    """
    state = read_state(checkpoint_dir, latest_filename)
    if state is None:
        return None
    path = resolve_checkpoint_path(checkpoint_dir, state.model_checkpoint_path, latest_filename)
    return path if exists(path) else None
