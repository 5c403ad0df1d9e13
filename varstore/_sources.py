"""One view over every checkpoint kind varstore reads.

A path may name an Orbax PyTree checkpoint directory (varstore's own or any other
Orbax program's), a TensorFlow 1.x checkpoint prefix (`model.ckpt-3` with its
`.index` and `.data-*` files), or a directory holding a `checkpoint` state file,
which then means its latest checkpoint. `open_checkpoint` returns a `Source` with
the same metadata and read methods for each kind.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _checkpoint_state, _ckpt_io, _tf1_bundle
from ._errors import CheckpointError, NotFoundError, close_names
from ._progress import progress

if TYPE_CHECKING:  # metadata readers (the `varstore` command) never import JAX
    import jax

STATE_FILENAME = "checkpoint"


@dataclasses.dataclass(frozen=True)
class Entry:
    """What a checkpoint holds under one name (metadata only)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype | None  # None: a TF1 tensor that cannot be read (strings, ...)
    nbytes: int
    sharding: str | None = None
    tf_dtype: str | None = None


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete checkpoint (Orbax directory or TF1 prefix)."""
    path = os.fspath(path)
    return _tf1_bundle.is_tf1_checkpoint(path) or _ckpt_io.is_checkpoint(path)


def resolve(path: str | os.PathLike) -> str:
    """The checkpoint `path` names: itself, or a directory's latest checkpoint.

    Raises:
      CheckpointError: when `path` is neither a checkpoint nor a directory with one.
    """
    path = os.fspath(path)
    if checkpoint_exists(path):
        return path
    if os.path.isdir(path):
        latest = _checkpoint_state.latest_checkpoint(path, checkpoint_exists, STATE_FILENAME)
        if latest is not None:
            return latest
        state = os.path.join(path, STATE_FILENAME)
        why = (
            "its 'checkpoint' state file names a checkpoint that does not exist"
            if os.path.exists(state)
            else "it is not a checkpoint and holds no 'checkpoint' state file"
        )
        raise CheckpointError(
            f"No checkpoint at {path!r}: {why}. Pass a checkpoint path such as "
            f"'{os.path.join(path, 'model.ckpt-1000')}', or the directory a Saver "
            "saved into."
        )
    if os.path.exists(path):
        raise CheckpointError(
            f"{path!r} is not a checkpoint: it is neither an Orbax checkpoint directory "
            "(with its _METADATA file) nor a TensorFlow checkpoint prefix (with a "
            "'.index' file). Pass the path a Saver returned."
        )
    parent = os.path.dirname(path) or "."
    near = ""
    if os.path.isdir(parent):
        near = close_names(os.path.basename(path), os.listdir(parent))
    raise CheckpointError(
        f"Checkpoint {path!r} does not exist.{near} Check the path, or pass the "
        "directory to use its latest checkpoint."
    )


class Source:
    """A readable checkpoint: metadata without arrays, and reads by name."""

    path: str
    kind: str

    def entries(self) -> Mapping[str, Entry]:
        raise NotImplementedError

    def read_numpy(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def read(self, targets: Mapping[str, tuple[tuple[int, ...], Any, Any]]) -> dict[str, jax.Array]:
        """Reads the named entries onto `(shape, dtype, sharding)` targets."""
        raise NotImplementedError

    def _missing(self, name: str) -> NotFoundError:
        names = list(self.entries())
        return NotFoundError(
            f"Tensor {name!r} is not in the checkpoint {self.path!r} "
            f"({len(names)} tensors).{close_names(name, names)}"
        )


# The Entry view of `read_entries`' shared mapping, built once per metadata (it keeps the
# mapping alive, so its id stays its own).
_orbax_entries: dict[int, tuple[Mapping, Mapping[str, Entry]]] = {}
_orbax_lock = threading.Lock()


class _OrbaxSource(Source):
    kind = "orbax"

    def __init__(self, path: str):
        self.path = path
        self._entries: Mapping[str, Entry] | None = None

    def entries(self) -> Mapping[str, Entry]:
        if self._entries is None:
            infos = _ckpt_io.read_entries(self.path)
            with _orbax_lock:
                hit = _orbax_entries.get(id(infos))
            if hit is None or hit[0] is not infos:
                entries = types.MappingProxyType({
                    n: Entry(n, tuple(e.shape), np.dtype(e.dtype), int(e.nbytes), e.sharding)
                    for n, e in infos.items()
                })
                hit = (infos, entries)
                with _orbax_lock:
                    if len(_orbax_entries) >= 8:
                        _orbax_entries.pop(next(iter(_orbax_entries)))
                    _orbax_entries[id(infos)] = hit
            self._entries = hit[1]
        return self._entries

    def read_numpy(self, name: str) -> np.ndarray:
        if name not in self.entries():
            raise self._missing(name)
        return _ckpt_io.read_numpy(self.path, name)

    def read(self, targets):
        return _ckpt_io.read(self.path, targets)


class _TF1Source(Source):
    kind = "tf1"

    def __init__(self, path: str):
        self.path = path
        self._bundle = _tf1_bundle.TF1Bundle(path)

    def entries(self) -> Mapping[str, Entry]:
        out = {}
        for name, info in self._bundle.entries.items():
            size = int(np.prod(info.shape, dtype=np.int64))
            nbytes = size * info.dtype.itemsize if info.dtype is not None else 0
            out[name] = Entry(name, tuple(info.shape), info.dtype, nbytes, None, info.tf_dtype)
        return out

    def read_numpy(self, name: str) -> np.ndarray:
        if name not in self._bundle.entries:
            raise self._missing(name)
        return self._bundle.read(name)

    def read(self, targets):
        from . import _to_device  # imports JAX: only restores need it

        entries = self.entries()
        total = sum(entries[n].nbytes for n in targets if n in entries)
        host = {}
        with progress(total, len(targets), f"Restoring {self.path}") as bar:
            for name, (shape, dtype, _) in targets.items():
                host[name] = self._read_host(name, shape, dtype)
                bar.advance(entries[name].nbytes if name in entries else 0, 1)
        # All at once, like our own checkpoints: per-array device_put overhead dominates
        # a restore of thousands of small variables.
        items = [_to_device.whole(host[name], t[2]) for name, t in targets.items()]
        return dict(zip(targets, _to_device.put(items)))

    def _read_host(self, name, shape, dtype) -> np.ndarray:
        """The value in the dtype JAX will hold it in, checked against `shape`."""
        import jax

        value = self.read_numpy(name)
        if tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"Variable {name!r} has shape {tuple(shape)} but checkpoint "
                f"{self.path!r} holds shape {tuple(value.shape)}."
            )
        dtype = value.dtype if dtype is None else np.dtype(dtype)
        dtype = np.dtype(jax.dtypes.canonicalize_dtype(dtype))  # int64 without x64: int32
        return _ckpt_io.cast_checked(value, dtype, name, self.path)


def open_checkpoint(path: str | os.PathLike) -> Source:
    """The checkpoint `path` names (see `resolve`), opened for reading."""
    path = resolve(path)
    if _tf1_bundle.is_tf1_checkpoint(path):
        return _TF1Source(path)
    return _OrbaxSource(path)
