"""`vs.config`: the few process-wide settings, with validation on assignment."""

from __future__ import annotations

from ._errors import VarStoreError


class _Config:
    """Process-wide settings.

    Attributes:
      soft_placement: when True, a placement naming a device this host lacks falls
        back to the default device with a `PlacementWarning` instead of raising
        `PlacementError` (TensorFlow's `allow_soft_placement`). Default False.
      progress: when True (default), saves and restores larger than
        `progress_threshold_bytes` show a progress bar on a terminal.
      progress_threshold_bytes: size above which progress is shown (256 MiB).
    """

    __slots__ = ("soft_placement", "progress", "progress_threshold_bytes")
    _types = {"soft_placement": bool, "progress": bool, "progress_threshold_bytes": int}

    def __init__(self) -> None:
        object.__setattr__(self, "soft_placement", False)
        object.__setattr__(self, "progress", True)
        object.__setattr__(self, "progress_threshold_bytes", 256 << 20)

    def __setattr__(self, name: str, value: object) -> None:
        if name not in self._types:
            raise VarStoreError(
                f"vs.config has no setting {name!r}; the settings are "
                f"{', '.join(sorted(self._types))}."
            )
        want = self._types[name]
        if type(value) is not want:
            raise VarStoreError(
                f"vs.config.{name} must be a {want.__name__}, got "
                f"{type(value).__name__} {value!r}."
            )
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._types)
        return f"vs.config({items})"


config = _Config()
