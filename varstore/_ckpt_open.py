"""Opening checkpoints: `is_checkpoint`, parsing and caching our metadata, `read_entries`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import types
from collections.abc import Mapping

import numpy as np

from ._errors import CheckpointError
from ._ckpt_format import (
    EntryInfo,
    FORMAT_NAME,
    FORMAT_VERSION,
    OCDBT_MANIFEST,
    ORBAX_METADATA,
    VARSTORE_METADATA,
    _OLD_MARK,
    _ORBAX_TMP_MARK,
    _PROCESS_DB_RE,
    _TMP_MARK,
    _as_dim,
    _dtype_from_name,
    _param_dir,
    _parse_chunk_key,
    _split_name,
)
from ._ckpt_fs import (
    _gc_paused,
    _state_lock,
)
from ._ckpt_hash import (
    _check_seal,
)


# --------------------------------------------------------------------------- reading: metadata


@dataclasses.dataclass
class _REntry:
    name: str
    dir: str
    shape: tuple[int, ...]
    dtype: np.dtype
    chunk_shape: tuple[int, ...] | None = None
    chunks: dict[str, str] | None = None  # key -> digest (ours)
    checksum: str | None = None
    sharding: str | None = None
    zarr3: bool | None = None  # foreign: which zarr driver
    locs: dict[str, tuple[str, int]] | None = None  # ours, OCDBT: chunk -> (data file, offset)


@dataclasses.dataclass
class _Ckpt:
    path: str
    ours: bool
    layout: str  # "files" | "ocdbt"
    entries: dict[str, _REntry]
    algorithm: str | None = None
    extra: dict | None = None
    fill_missing: bool = False
    infos: Mapping[str, EntryInfo] | None = dataclasses.field(  # read_entries' cache
        default=None, repr=False, compare=False
    )

    def kvstore_spec(self, d: str | None = None) -> dict:
        if self.layout == "ocdbt":
            spec = {"driver": "ocdbt", "base": {"driver": "file", "path": self.path + "/"}}
            if d is not None:
                spec["path"] = d + "/"
            return spec
        return {"driver": "file", "path": self.path + "/" + (d + "/" if d is not None else "")}


def _is_tmp_name(base: str) -> bool:
    return _TMP_MARK in base or _OLD_MARK in base or _ORBAX_TMP_MARK in base


def is_checkpoint(path) -> bool:
    """True for a complete (committed) pytree checkpoint directory, ours or foreign Orbax."""
    try:
        path = os.path.abspath(os.fspath(path))
    except TypeError:
        return False
    if _is_tmp_name(os.path.basename(path)) or not os.path.isdir(path):
        return False
    if not os.path.isfile(os.path.join(path, ORBAX_METADATA)):
        return False
    if os.path.isfile(os.path.join(path, VARSTORE_METADATA)):
        return True
    if os.path.exists(os.path.join(path, OCDBT_MANIFEST)):
        return True
    try:
        with os.scandir(path) as it:
            for ent in it:
                if ent.is_dir() and (
                    os.path.exists(os.path.join(ent.path, ".zarray"))
                    or os.path.exists(os.path.join(ent.path, "zarr.json"))
                ):
                    return True
    except OSError:
        return False
    return False


def _load_json(path: str, what: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise CheckpointError(f"Cannot read {what} {path!r}: {e}") from e


_ckpt_cache: dict[tuple, _Ckpt] = {}
_CKPT_CACHE_SIZE = 8


def _open_ckpt(path) -> _Ckpt:
    path = os.path.abspath(os.fspath(path))
    if _is_tmp_name(os.path.basename(path)):
        raise CheckpointError(f"{path!r} is an unfinished (temporary) checkpoint directory.")
    if not os.path.isdir(path):
        raise CheckpointError(f"Checkpoint {path!r} does not exist or is not a directory.")
    mpath = os.path.join(path, VARSTORE_METADATA)
    try:
        with open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        from ._ckpt_foreign import _open_foreign  # foreign imports this module

        return _open_foreign(path)
    except OSError as e:
        raise CheckpointError(f"Cannot read checkpoint metadata {mpath!r}: {e}") from e
    seal = _check_seal(raw)
    if seal is None:
        raise CheckpointError(
            f"Checkpoint metadata {mpath!r} is damaged (its checksum does not match); "
            "restore from another checkpoint."
        )
    # The seal covers every byte, so parsed metadata can be reused for identical bytes.
    key = (path, seal, len(raw))
    with _state_lock:
        hit = _ckpt_cache.get(key)
    if hit is not None:
        return hit
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"Cannot read checkpoint metadata {mpath!r}: {e}") from e
    ck = _parse_our_metadata(path, meta)
    with _state_lock:
        if len(_ckpt_cache) >= _CKPT_CACHE_SIZE:
            _ckpt_cache.pop(next(iter(_ckpt_cache)))
        _ckpt_cache[key] = ck
    return ck


def _parse_our_metadata(path: str, meta) -> _Ckpt:
    try:
        if meta.get("format") != FORMAT_NAME:
            raise ValueError("not a varstore checkpoint")
        if int(meta["version"]) > FORMAT_VERSION:
            raise CheckpointError(
                f"Checkpoint {path!r} has format version {meta['version']}, newer than this "
                f"varstore reads ({FORMAT_VERSION}); upgrade varstore."
            )
        layout = meta["layout"]
        if layout not in ("files", "ocdbt"):
            raise ValueError(f"unknown layout {layout!r}")
        algorithm = meta["hash"]
        entries = {}
        for name, e in meta["entries"].items():
            keys = _split_name(name)
            d = e["dir"]
            if d != _param_dir(keys) or "/" in d:
                raise ValueError(f"entry {name!r} has an invalid directory {d!r}")
            shape = tuple(_as_dim(s) for s in e["shape"])
            chunk_shape = tuple(_as_dim(s) for s in e["chunk_shape"])
            if len(chunk_shape) != len(shape) or any(c < 1 for c in chunk_shape) or any(
                s < 0 for s in shape
            ):
                raise ValueError(f"entry {name!r} has an invalid chunk shape")
            chunks = {str(k): str(v) for k, v in e["chunks"].items()}
            grid = [-(-n // c) for n, c in zip(shape, chunk_shape)]
            if any(c > max(1, n) for n, c in zip(shape, chunk_shape)) or len(chunks) != (
                math.prod(grid) if math.prod(shape) else 0
            ):
                raise ValueError(f"entry {name!r}: chunks do not tile shape {shape}")
            for k in chunks:
                if any(i >= g for i, g in zip(_parse_chunk_key(k, len(shape)), grid)):
                    raise ValueError(f"entry {name!r}: chunk {k!r} is outside shape {shape}")
            locs = None
            if layout == "ocdbt" and e.get("ocdbt_locations"):
                locs = {}
                for k, (fname, off) in e["ocdbt_locations"].items():
                    if _DATA_FILE_RE.match(fname) and isinstance(off, int) and off >= 0:
                        locs[str(k)] = (fname, off)
            entries[name] = _REntry(
                name=name,
                dir=d,
                shape=shape,
                dtype=_dtype_from_name(e["dtype"]),
                chunk_shape=chunk_shape,
                chunks=chunks,
                checksum=e.get("checksum"),
                sharding=e.get("sharding"),
                zarr3=True,
                locs=locs,
            )
        extra = meta.get("extra") or {}
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        raise CheckpointError(f"Checkpoint metadata of {path!r} is malformed: {e}") from e
    return _Ckpt(path, True, layout, entries, algorithm, extra)


# A hint's data file: under d/ (a one-process save) or under ocdbt.process_<i>/d/ (a
# multi-process save, whose per-process databases the root's B+tree refers to).
_DATA_FILE_RE = re.compile(rf"^({_PROCESS_DB_RE}d/)?[0-9A-Za-z_-]{{1,128}}$")


def read_entries(path) -> Mapping[str, EntryInfo]:
    """The checkpoint's entries, sorted by name (metadata only; no array data is read).

    Read-only, and the same mapping for every call while the metadata is unchanged (a
    restore of thousands of variables would otherwise rebuild it each time).
    """
    with _gc_paused():
        ck = _open_ckpt(path)
        if ck.infos is None:
            ck.infos = types.MappingProxyType({
                name: EntryInfo(
                    name=name,
                    shape=e.shape,
                    dtype=e.dtype,
                    nbytes=int(math.prod(e.shape)) * e.dtype.itemsize,
                    sharding=e.sharding,
                    checksum=e.checksum,
                )
                for name, e in sorted(ck.entries.items())
            })
    return ck.infos


def read_extra_metadata(path) -> dict:
    """The `extra_metadata` given to `write` ({} for foreign checkpoints)."""
    ck = _open_ckpt(path)
    return json.loads(json.dumps(ck.extra or {}))
