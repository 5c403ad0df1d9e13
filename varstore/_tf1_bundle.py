"""Read TensorFlow checkpoint format V2 ("tensor bundles") without TensorFlow.

A checkpoint prefix ``P`` written by ``tf.compat.v1.train.Saver`` (or any
``SaveV2`` op) consists of

* ``P.index``: a LevelDB-style sorted string table (SSTable). The value under
  the empty key is a ``BundleHeaderProto`` (number of data shards, endianness,
  format version); every other value is a ``BundleEntryProto`` (dtype, shape,
  shard id, offset, size, masked CRC32C of the bytes, and, for partitioned
  variables, the list of saved slices).
* ``P.data-SSSSS-of-NNNNN``: the raw little-endian tensor bytes.

This module reads both, on top of three private ones: `_tf1_sstable` parses
the SSTable (and computes CRC32C), `_tf1_proto` decodes the protobuf wire
format of its values, and `_tf1_slices` finds and checks the slices of
partitioned variables. It never writes, pickles or executes anything.

API used by the rest of varstore:

``is_tf1_checkpoint(prefix) -> bool``
    True when ``prefix + ".index"`` is a file.

``TF1Bundle(prefix)``
    Opens and fully validates the index (raises `CheckpointError` when it is
    missing, truncated or corrupt, has a big-endian header or a format
    version this reader does not support).

    ``.prefix -> str``, ``.num_shards -> int``,
    ``.data_file(shard_id) -> str``.

    ``.entries -> Mapping[str, TensorInfo]``: every tensor, sorted by name,
    without the header entry and without the per-slice entries of
    partitioned variables (those are listed once, under the variable's name,
    with the full shape). ``TensorInfo`` is a named tuple
    ``(dtype, shape, tf_dtype, partitioned)``: ``dtype`` is a `numpy.dtype`
    (``ml_dtypes`` types for bfloat16, float8 and int4/uint4/int2/uint2) or
    **None for a tensor that cannot be read** (``tf_dtype`` then says
    ``"string"``, ``"resource"``, ``"variant"``, a quantized type, or
    ``"DT_<n>"`` for an enum value this module does not know); ``shape`` is a
    tuple of ints; ``tf_dtype`` is TensorFlow's dtype name.

    ``.read(name) -> numpy.ndarray``: reads only that tensor's bytes (seek and
    read; a partitioned variable is assembled from its slices) into a fresh,
    writable array and verifies the CRC32C. Raises `NotFoundError` for an
    unknown name, and `CheckpointError` naming the file and the tensor on a
    checksum mismatch, truncation, missing data shard, unreadable dtype, or an
    inconsistent entry.
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ._errors import CheckpointError, NotFoundError, close_names
from ._tf1_proto import (
    _NUMPY_DTYPES,
    _Entry,
    _int_field,
    _parse_entry,
    _proto_fields,
    _repeated_ints,
    _singular_message,
    _tf_dtype_name,
)
from ._tf1_slices import _check_tiling, _slice_key
from ._tf1_sstable import _crc32c, _FormatError, _mask, _read_table, _unmask

# Helpers of the modules above that tests/test_tf1_bundle.py checks directly,
# under the names they had when they lived here.
from ._tf1_slices import (  # noqa: F401  # isort: skip
    _ordered_num_increasing,
    _ordered_signed_num_increasing,
    _ordered_string,
)
from ._tf1_sstable import _crc32c_pure, _snappy_decompress, _varint  # noqa: F401  # isort: skip

__all__ = ["TF1Bundle", "TensorInfo", "is_tf1_checkpoint"]

_BUNDLE_VERSION = 1  # kTensorBundleVersion: what this reader consumes
_BUNDLE_MIN_PRODUCER = 0  # kTensorBundleMinProducer
_FIX = (
    "The checkpoint is damaged or incomplete: restore it from a copy, or "
    "re-save it with TensorFlow."
)


class TensorInfo(NamedTuple):
    """What the index says about one tensor.

    Attributes:
        dtype: the numpy dtype `TF1Bundle.read` returns, or None when the tensor
            cannot be read (strings, resource and variant handles, quantized or
            unknown types; see `tf_dtype`).
        shape: the full shape.
        tf_dtype: TensorFlow's name of the dtype ("float32", "string", ...).
        partitioned: True for a variable saved as several slices.
    """

    dtype: np.dtype | None
    shape: tuple[int, ...]
    tf_dtype: str
    partitioned: bool


def is_tf1_checkpoint(prefix: str | os.PathLike[str]) -> bool:
    """True when `prefix` names a TensorFlow V2-format checkpoint (P.index exists)."""
    return os.path.isfile(os.fspath(prefix) + ".index")


class TF1Bundle:
    """A TensorFlow V2-format checkpoint, read without TensorFlow.

    Args:
        prefix: the checkpoint prefix, e.g. ``"/ckpt/model.ckpt-1000"`` (the
            path without ``.index``).

    Raises:
        CheckpointError: the index file is missing, unreadable, truncated or
            corrupt, big-endian, or of an unsupported format version.
    """

    def __init__(self, prefix: str | os.PathLike[str]) -> None:
        self.prefix = os.fspath(prefix)
        self.index_path = self.prefix + ".index"
        try:
            with open(self.index_path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise CheckpointError(
                f"TensorFlow checkpoint index '{self.index_path}' does not exist. "
                f"Expected a checkpoint prefix such that '<prefix>.index' and "
                f"'<prefix>.data-*' exist; pass the prefix (e.g. 'model.ckpt-1000'), "
                f"not a directory or a .data/.index file name."
            ) from None
        except OSError as err:
            raise CheckpointError(
                f"TensorFlow checkpoint index '{self.index_path}' cannot be read: {err}. "
                f"Check the path and its permissions."
            ) from None
        try:
            table = _read_table(data)
        except _FormatError as err:
            raise self._index_error(str(err)) from None
        if not table or table[0][0] != b"":
            raise self._index_error("the header entry (empty key) is missing")
        self._parse_header(table[0][1])

        self._raw: dict[bytes, bytes] = dict(table[1:])
        self._parsed: dict[bytes, _Entry] = {}
        entries: dict[str, TensorInfo] = {}
        for key in self._raw:
            if key.startswith(b"\x00"):  # a slice of a partitioned variable
                continue
            try:
                name = key.decode("utf-8")
            except UnicodeDecodeError:
                raise self._index_error(f"tensor name {key!r} is not UTF-8") from None
            entry = self._entry(key, name)
            entries[name] = TensorInfo(
                dtype=_NUMPY_DTYPES.get(entry.dtype_enum),
                shape=entry.shape,
                tf_dtype=_tf_dtype_name(entry.dtype_enum),
                partitioned=bool(entry.slices),
            )
        self._entries = types.MappingProxyType(entries)  # keys sorted: table order

    # -- index ---------------------------------------------------------------

    def _index_error(self, detail: str) -> CheckpointError:
        return CheckpointError(
            f"TensorFlow checkpoint index '{self.index_path}' is invalid: {detail}. {_FIX}"
        )

    def _parse_header(self, value: bytes) -> None:
        try:
            fields = _proto_fields(value)
            self.num_shards = _int_field(fields, 1, 32)
            endianness = _int_field(fields, 2, 32)
            version = _proto_fields(_singular_message(fields, 3) or b"")
            producer = _int_field(version, 1, 32)
            min_consumer = _int_field(version, 2, 32)
            bad_consumers = _repeated_ints(version, 3, 32)
        except _FormatError as err:
            raise self._index_error(f"the header entry cannot be parsed ({err})") from None
        if endianness != 0:
            raise CheckpointError(
                f"TensorFlow checkpoint '{self.prefix}' was written on a big-endian "
                f"machine (header endianness {endianness}, expected 0 = little); "
                f"varstore reads little-endian checkpoints only. Load it with "
                f"TensorFlow on any machine and save it again from a little-endian one."
            )
        if (
            producer < _BUNDLE_MIN_PRODUCER
            or min_consumer > _BUNDLE_VERSION
            or (_BUNDLE_VERSION in bad_consumers)
        ):
            raise CheckpointError(
                f"TensorFlow checkpoint '{self.prefix}' has bundle format version "
                f"producer={producer}, min_consumer={min_consumer}, "
                f"bad_consumers={bad_consumers}; this reader understands version "
                f"{_BUNDLE_VERSION}. Re-save the checkpoint with TensorFlow 1.x/2.x "
                f"tf.compat.v1.train.Saver."
            )
        if self.num_shards < 1:
            raise self._index_error(f"the header says num_shards={self.num_shards}, expected >= 1")

    def _entry(self, key: bytes, name: str) -> _Entry:
        entry = self._parsed.get(key)
        if entry is None:
            try:
                entry = _parse_entry(self._raw[key])
            except _FormatError as err:
                raise self._index_error(
                    f"the entry of tensor '{name}' cannot be parsed ({err})"
                ) from None
            self._parsed[key] = entry
        return entry

    # -- public API ----------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, TensorInfo]:
        """Every tensor's `TensorInfo`, sorted by name (read-only mapping)."""
        return self._entries

    def data_file(self, shard_id: int) -> str:
        """The path of data shard `shard_id`."""
        return "%s.data-%05d-of-%05d" % (self.prefix, shard_id, self.num_shards)

    def read(self, name: str) -> np.ndarray:
        """Reads one tensor, verifying its CRC32C.

        Args:
            name: the tensor's name as listed in `entries`.

        Returns:
            A fresh, writable array of `entries[name].dtype` and `.shape`.

        Raises:
            NotFoundError: no tensor is called `name`.
            CheckpointError: the tensor cannot be read (its dtype is not numeric,
                its data file is missing, truncated or corrupt).
        """
        info = self._entries.get(name)
        if info is None:
            raise NotFoundError(
                f"Tensor '{name}' is not in TensorFlow checkpoint '{self.prefix}' "
                f"({len(self._entries)} tensors).{close_names(name, self._entries)}"
            )
        key = name.encode("utf-8")
        entry = self._entry(key, name)
        if info.dtype is None:
            raise CheckpointError(
                f"Tensor '{name}' in TensorFlow checkpoint '{self.prefix}' has dtype "
                f"{info.tf_dtype}, which varstore cannot read (only numeric and bool "
                f"tensors have a numpy/JAX value). Exclude it from the restore, e.g. "
                f"by restoring an explicit list of variables."
            )
        if entry.slices:
            return self._read_partitioned(name, key, entry, info.dtype)
        return self._read_entry(entry, name, info.dtype, entry.shape)

    # -- reading -------------------------------------------------------------

    def _read_entry(
        self, entry: _Entry, what: str, dtype: np.dtype, shape: tuple[int, ...]
    ) -> np.ndarray:
        """Reads the bytes of one stored (non-partitioned) entry."""
        count = 1
        for dim in shape:
            count *= dim
        expected_size = count * dtype.itemsize
        if entry.size != expected_size:
            raise self._index_error(
                f"tensor '{what}' of dtype {dtype} and shape {shape} should take "
                f"{expected_size} bytes, its entry says {entry.size}"
            )
        if not 0 <= entry.shard_id < self.num_shards:
            raise self._index_error(
                f"tensor '{what}' lives in data shard {entry.shard_id}, but the "
                f"checkpoint has {self.num_shards} shard(s)"
            )
        if entry.offset < 0:
            raise self._index_error(f"tensor '{what}' has negative offset {entry.offset}")
        if entry.crc32c is None:
            raise self._index_error(f"tensor '{what}' has no checksum")
        path = self.data_file(entry.shard_id)
        buf = np.empty(expected_size, dtype=np.uint8)
        try:
            with open(path, "rb") as f:
                f.seek(entry.offset)
                view = memoryview(buf)
                done = 0
                while done < expected_size:
                    got = f.readinto(view[done:])
                    if not got:
                        break
                    done += got
                file_size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            raise CheckpointError(
                f"Data file '{path}' of TensorFlow checkpoint '{self.prefix}' is "
                f"missing; it holds tensor '{what}'. Copy all "
                f"'{os.path.basename(self.prefix)}.data-*-of-{self.num_shards:05d}' "
                f"files along with the .index file."
            ) from None
        except OSError as err:
            raise CheckpointError(
                f"Data file '{path}' of TensorFlow checkpoint '{self.prefix}' cannot "
                f"be read for tensor '{what}': {err}. Check the file and its permissions."
            ) from None
        if done != expected_size:
            raise CheckpointError(
                f"Data file '{path}' is truncated: tensor '{what}' needs bytes "
                f"[{entry.offset}, {entry.offset + expected_size}) but the file has "
                f"{file_size} bytes. {_FIX}"
            )
        actual = _crc32c(buf)
        if _mask(actual) != entry.crc32c:
            raise CheckpointError(
                f"Data file '{path}': tensor '{what}' (bytes [{entry.offset}, "
                f"{entry.offset + expected_size})) fails its CRC32C check (index "
                f"says 0x{_unmask(entry.crc32c):08x}, data gives 0x{actual:08x}). {_FIX}"
            )
        if dtype == np.bool_ and expected_size and int(buf.max()) > 1:
            raise CheckpointError(
                f"Data file '{path}': bool tensor '{what}' holds bytes other than 0 and 1. {_FIX}"
            )
        array = buf.view(dtype).reshape(shape)
        if sys.byteorder != "little" and dtype.itemsize > 1:  # pragma: no cover
            array = array.byteswap()
        return array

    def _read_partitioned(
        self, name: str, key: bytes, entry: _Entry, dtype: np.dtype
    ) -> np.ndarray:
        """Assembles a partitioned variable from its saved slices."""
        shape = entry.shape
        boxes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        parts: list[tuple[tuple[slice, ...], _Entry, str]] = []
        for extents in entry.slices:
            spec = ":".join(
                "-" if length is None else "%d,%d" % (start, length) for start, length in extents
            )
            what = f"{name}' slice '{spec}"
            if len(extents) != len(shape):
                raise self._index_error(
                    f"partitioned tensor '{name}' of shape {shape} lists slice '{spec}' "
                    f"of rank {len(extents)}"
                )
            starts, stops, key_extents = [], [], []
            for (start, length), dim in zip(extents, shape, strict=True):
                if length is None:
                    key_extents.append((start, -1))
                    start, length = 0, dim
                else:
                    key_extents.append((start, length))
                if start < 0 or length < 0 or start + length > dim:
                    raise self._index_error(
                        f"slice '{spec}' of partitioned tensor '{name}' lies outside "
                        f"its shape {shape}"
                    )
                starts.append(start)
                stops.append(start + length)
            if all(length is None for _, length in extents):
                raise self._index_error(
                    f"partitioned tensor '{name}' lists a full slice; TensorFlow never writes one"
                )
            slice_key = _slice_key(key, key_extents)
            if slice_key not in self._raw:
                raise self._index_error(
                    f"slice '{spec}' of partitioned tensor '{name}' has no entry"
                )
            slice_entry = self._entry(slice_key, what)
            slice_shape = tuple(b - a for a, b in zip(starts, stops, strict=True))
            if (
                slice_entry.slices
                or slice_entry.dtype_enum != entry.dtype_enum
                or (slice_entry.shape != slice_shape)
            ):
                raise self._index_error(
                    f"slice '{spec}' of partitioned tensor '{name}' is stored with "
                    f"dtype {_tf_dtype_name(slice_entry.dtype_enum)} and shape "
                    f"{slice_entry.shape}, expected {_tf_dtype_name(entry.dtype_enum)} "
                    f"and {slice_shape}"
                )
            boxes.append((tuple(starts), tuple(stops)))
            index = tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))
            parts.append((index, slice_entry, what))
        _check_tiling(name, shape, boxes, self._index_error)
        out = np.empty(shape, dtype=dtype)
        for index, slice_entry, what in parts:
            out[index] = self._read_entry(slice_entry, what, dtype, slice_entry.shape)
        return out
