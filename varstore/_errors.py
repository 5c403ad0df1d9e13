"""Error types. Every error varstore raises on purpose derives from `VarStoreError`.

Messages follow one rule: name the variable (or checkpoint path), say what was
expected, what was found, and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VarStoreError(Exception):
    """Base class of every error varstore raises on purpose."""


class InvalidNameError(VarStoreError):
    """A variable or checkpoint name that cannot be used."""


class GraphError(VarStoreError):
    """A variable used with the wrong graph, or a name clash inside a graph."""


class ShapeError(VarStoreError):
    """Shapes or dtypes that do not fit."""


class PlacementError(VarStoreError):
    """A placement that cannot be resolved on this host."""


class InitializationError(VarStoreError):
    """An initializer that cannot run as asked."""


class UninitializedError(VarStoreError):
    """A variable that has no value in a store."""


class CheckpointError(VarStoreError):
    """A checkpoint that cannot be written, read or matched to the variables."""


class NotFoundError(VarStoreError, KeyError):
    """A name that is not there: in a store or in a checkpoint."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PytreeError(VarStoreError):
    """A pytree that does not match a store (base of the errors below)."""


class MissingPathError(PytreeError, NotFoundError):
    """`like` names leaves that the store does not have."""


class ExtraPathError(PytreeError):
    """The store has entries (under the prefix) that `like` does not name."""


class LeafMismatchError(PytreeError, ShapeError):
    """A stored array whose shape or dtype differs from `like`'s leaf."""


def close_names(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """A short 'did you mean' clause for `name` among `candidates`, or ''."""
    found = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    if not found:
        return ""
    return " Did you mean " + " or ".join(repr(f) for f in found) + "?"
