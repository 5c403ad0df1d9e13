"""TensorFlow 1.x's checkpoint readers: `latest_checkpoint`, `list_variables`,
`load_variable`, `load_checkpoint` and friends, over any checkpoint kind."""

from __future__ import annotations

import os

import numpy as np

from . import _checkpoint_state
from ._sources import STATE_FILENAME, Source, checkpoint_exists, open_checkpoint

CheckpointState = _checkpoint_state.CheckpointState


def latest_checkpoint(checkpoint_dir: str | os.PathLike, latest_filename: str | None = None) -> str | None:
    """The newest checkpoint the directory's `checkpoint` state file names, or
    None when there is no state file or that checkpoint does not exist.

    >>> vs.train.latest_checkpoint("/tmp/train")
    '/tmp/train/model.ckpt-1000'
    """
    return _checkpoint_state.latest_checkpoint(
        os.fspath(checkpoint_dir), checkpoint_exists, latest_filename or STATE_FILENAME
    )


def get_checkpoint_state(
    checkpoint_dir: str | os.PathLike, latest_filename: str | None = None
) -> CheckpointState | None:
    """The parsed `checkpoint` state file (`model_checkpoint_path`,
    `all_model_checkpoint_paths`, ...), or None when there is none."""
    return _checkpoint_state.read_state(os.fspath(checkpoint_dir), latest_filename or STATE_FILENAME)


def list_variables(path: str | os.PathLike) -> list[tuple[str, list[int]]]:
    """`(name, shape)` of every tensor in a checkpoint (or a directory's latest
    one), sorted by name; reads metadata only.

    >>> vs.train.list_variables("/tmp/model.ckpt")
    [('biases', [200]), ('weights', [784, 200])]
    """
    source = open_checkpoint(path)
    return [(n, list(e.shape)) for n, e in sorted(source.entries().items())]


def load_variable(path: str | os.PathLike, name: str) -> np.ndarray:
    """One tensor of a checkpoint as a NumPy array, checksum verified."""
    return open_checkpoint(path).read_numpy(name)


class CheckpointReader:
    """TensorFlow's `CheckpointReader` over a varstore, Orbax or TF1 checkpoint."""

    def __init__(self, source: Source):
        self._source = source

    @property
    def path(self) -> str:
        return self._source.path

    def get_tensor(self, name: str) -> np.ndarray:
        """The tensor `name`, checksum verified."""
        return self._source.read_numpy(name)

    def has_tensor(self, name: str) -> bool:
        return name in self._source.entries()

    def get_variable_to_shape_map(self) -> dict[str, list[int]]:
        return {n: list(e.shape) for n, e in self._source.entries().items()}

    def get_variable_to_dtype_map(self) -> dict[str, np.dtype | None]:
        """Name -> NumPy dtype (None for TF1 tensors varstore cannot read)."""
        return {n: e.dtype for n, e in self._source.entries().items()}

    def debug_string(self) -> str:
        return "".join(
            f"{n} ({e.dtype}) {list(e.shape)}\n" for n, e in sorted(self._source.entries().items())
        )

    def __repr__(self) -> str:
        return f"<vs.train.CheckpointReader {self.path!r}>"


def load_checkpoint(path: str | os.PathLike) -> CheckpointReader:
    """A reader of a checkpoint (or a directory's latest one).

    >>> reader = vs.train.load_checkpoint("/tmp/model.ckpt")
    >>> reader.get_variable_to_shape_map()
    {'weights': [784, 200], ...}
    """
    return CheckpointReader(open_checkpoint(path))


NewCheckpointReader = load_checkpoint
