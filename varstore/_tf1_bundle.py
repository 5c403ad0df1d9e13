"""Read TensorFlow checkpoint format V2 ("tensor bundles") without TensorFlow.

A checkpoint prefix ``P`` written by ``tf.compat.v1.train.Saver`` (or any
``SaveV2`` op) consists of

* ``P.index``: a LevelDB-style sorted string table (SSTable). The value under
  the empty key is a ``BundleHeaderProto`` (number of data shards, endianness,
  format version); every other value is a ``BundleEntryProto`` (dtype, shape,
  shard id, offset, size, masked CRC32C of the bytes, and, for partitioned
  variables, the list of saved slices).
* ``P.data-SSSSS-of-NNNNN``: the raw little-endian tensor bytes.

This module parses both directly: the SSTable (footer, index block, data
blocks with restart points and prefix-compressed keys, block trailers with
compression type and masked CRC32C, which are verified; Snappy-compressed
blocks, which TensorFlow 1.0 and 1.1 wrote, are decompressed by a small
decoder here) and the protobuf wire format (a small varint / length-delimited
decoder). It never writes, pickles or executes anything.

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

CRC32C comes from the ``google-crc32c`` package (hardware accelerated); a
table-driven pure-Python fallback is used only when it is not installed, and
is slow (a few MB/s).
"""

from __future__ import annotations

import os
import re
import sys
import types
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import ml_dtypes
import numpy as np

from ._errors import CheckpointError, NotFoundError, close_names

try:  # pragma: no cover - exercised by whichever branch is installed
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover
    _google_crc32c = None

__all__ = ["TF1Bundle", "TensorInfo", "is_tf1_checkpoint"]

# ---------------------------------------------------------------------------
# CRC32C


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def _crc32c_pure(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC32C (Castagnoli) of `data` in pure Python. Slow; fallback only."""
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in memoryview(data).cast("B"):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc32c(data: bytes | bytearray | memoryview | np.ndarray) -> int:
    """CRC32C (Castagnoli, as TensorFlow's ``crc32c::Value``) of `data`."""
    if _google_crc32c is None:  # pragma: no cover
        return _crc32c_pure(data)
    try:
        # google-crc32c takes bytes and C-contiguous numpy arrays without a copy.
        return _google_crc32c.value(data)
    except TypeError:  # bytearray / memoryview on some versions
        return _google_crc32c.value(bytes(data))


_MASK_DELTA = 0xA282EAD8


def _mask(crc: int) -> int:
    """TensorFlow's (and LevelDB's) ``crc32c::Mask``."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def _unmask(masked: int) -> int:
    """Inverse of `_mask`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---------------------------------------------------------------------------
# Small decoding helpers. They raise _FormatError, which callers turn into a
# CheckpointError that names the file.


class _FormatError(Exception):
    """Malformed bytes; the message says what was expected."""


def _varint(buf: bytes, pos: int, limit: int, max_bits: int = 64) -> tuple[int, int]:
    """Decodes a base-128 varint at `pos`; returns (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= limit:
            raise _FormatError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift >= max_bits + 6:
            raise _FormatError("varint longer than %d bits" % max_bits)
    if result >> max_bits:
        raise _FormatError("varint longer than %d bits" % max_bits)
    return result, pos


def _u32(buf: bytes, pos: int) -> int:
    return int.from_bytes(buf[pos : pos + 4], "little")


# ---------------------------------------------------------------------------
# Protobuf wire format.

_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def _proto_fields(buf: bytes) -> dict[int, list[tuple[int, int | bytes]]]:
    """Splits a serialized message into {field number: [(wire type, value)]}.

    Varint and fixed-width values are ints, length-delimited values bytes.
    Groups (wire types 3 and 4) are rejected: no message used here has any.
    """
    fields: dict[int, list[tuple[int, int | bytes]]] = {}
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _FormatError("protobuf field number 0")
        value: int | bytes
        if wire == _WIRE_VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _WIRE_I64:
            if pos + 8 > end:
                raise _FormatError("truncated 64-bit protobuf field")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == _WIRE_LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise _FormatError("truncated length-delimited protobuf field")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == _WIRE_I32:
            if pos + 4 > end:
                raise _FormatError("truncated 32-bit protobuf field")
            value = _u32(buf, pos)
            pos += 4
        else:
            raise _FormatError("unsupported protobuf wire type %d" % wire)
        fields.setdefault(number, []).append((wire, value))
    return fields


def _as_signed(value: int, bits: int) -> int:
    value &= (1 << 64) - 1  # negative int32 are sign-extended to 64 bits
    if value >= 1 << 63:
        value -= 1 << 64
    if not -(1 << (bits - 1)) <= value < (1 << (bits - 1)):
        raise _FormatError("value %d does not fit in int%d" % (value, bits))
    return value


def _int_field(fields: dict, number: int, bits: int = 64, default: int = 0) -> int:
    """A singular int32/int64/enum field (last value wins, as in protobuf)."""
    values = fields.get(number)
    if not values:
        return default
    wire, value = values[-1]
    if wire != _WIRE_VARINT:
        raise _FormatError("field %d: expected a varint, found wire type %d" % (number, wire))
    return _as_signed(value, bits)


def _repeated_ints(fields: dict, number: int, bits: int = 64) -> list[int]:
    """A repeated int32/int64 field, packed or not."""
    out: list[int] = []
    for wire, value in fields.get(number, ()):
        if wire == _WIRE_VARINT:
            out.append(_as_signed(value, bits))
        elif wire == _WIRE_LEN:
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos, len(value))
                out.append(_as_signed(item, bits))
        else:
            raise _FormatError("field %d: expected varints, found wire type %d" % (number, wire))
    return out


def _fixed32_field(fields: dict, number: int) -> int | None:
    values = fields.get(number)
    if not values:
        return None
    wire, value = values[-1]
    if wire != _WIRE_I32:
        raise _FormatError("field %d: expected fixed32, found wire type %d" % (number, wire))
    return value


def _message_fields(fields: dict, number: int) -> list[bytes]:
    out = []
    for wire, value in fields.get(number, ()):
        if wire != _WIRE_LEN:
            raise _FormatError("field %d: expected a message, found wire type %d" % (number, wire))
        out.append(value)
    return out


def _singular_message(fields: dict, number: int) -> bytes | None:
    """A singular message field; repeated occurrences are merged (concatenated)."""
    parts = _message_fields(fields, number)
    return b"".join(parts) if parts else None


# ---------------------------------------------------------------------------
# TensorFlow dtypes (tensorflow/core/framework/types.proto).

_DT_STRING, _DT_RESOURCE, _DT_VARIANT = 7, 20, 21

_TF_DTYPE_NAMES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8",
    7: "string", 8: "complex64", 9: "int64", 10: "bool", 11: "qint8",
    12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16", 16: "quint16",
    17: "uint16", 18: "complex128", 19: "float16", 20: "resource",
    21: "variant", 22: "uint32", 23: "uint64", 24: "float8_e5m2",
    25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz", 29: "int4", 30: "uint4", 31: "int2", 32: "uint2",
}  # fmt: skip

# TF enum -> numpy dtype, for every type whose bundle bytes are a plain
# little-endian array (TensorFlow's DataTypeCanUseMemcpy). The 4- and 2-bit
# integer types take one byte per element on disk, as in ml_dtypes.
_NUMPY_DTYPES = {
    1: np.dtype(np.float32), 2: np.dtype(np.float64), 3: np.dtype(np.int32),
    4: np.dtype(np.uint8), 5: np.dtype(np.int16), 6: np.dtype(np.int8),
    8: np.dtype(np.complex64), 9: np.dtype(np.int64), 10: np.dtype(np.bool_),
    14: np.dtype(ml_dtypes.bfloat16), 17: np.dtype(np.uint16),
    18: np.dtype(np.complex128), 19: np.dtype(np.float16),
    22: np.dtype(np.uint32), 23: np.dtype(np.uint64),
    24: np.dtype(ml_dtypes.float8_e5m2), 25: np.dtype(ml_dtypes.float8_e4m3fn),
    26: np.dtype(ml_dtypes.float8_e4m3fnuz),
    27: np.dtype(ml_dtypes.float8_e4m3b11fnuz),
    28: np.dtype(ml_dtypes.float8_e5m2fnuz), 29: np.dtype(ml_dtypes.int4),
    30: np.dtype(ml_dtypes.uint4), 31: np.dtype(ml_dtypes.int2),
    32: np.dtype(ml_dtypes.uint2),
}  # fmt: skip


def _tf_dtype_name(enum: int) -> str:
    return _TF_DTYPE_NAMES.get(enum, "DT_%d" % enum)


# ---------------------------------------------------------------------------
# Snappy (raw format), for index blocks written by TensorFlow 1.0 and 1.1.


def _snappy_decompress(src: bytes) -> bytes:
    """Decompresses one raw Snappy buffer; raises _FormatError when malformed."""
    end = len(src)
    expected, pos = _varint(src, 0, end, max_bits=32)
    out = bytearray()
    while pos < end:
        tag = src[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > end:
                    raise _FormatError("truncated snappy literal length")
                length = int.from_bytes(src[pos : pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > end:
                raise _FormatError("truncated snappy literal")
            out += src[pos : pos + length]
            pos += length
        else:  # copy with a 1-, 2- or 4-byte offset
            if kind == 1:
                if pos + 1 > end:
                    raise _FormatError("truncated snappy copy")
                length = ((tag >> 2) & 7) + 4
                offset = ((tag >> 5) << 8) | src[pos]
                pos += 1
            else:
                width = 2 if kind == 2 else 4
                if pos + width > end:
                    raise _FormatError("truncated snappy copy")
                length = (tag >> 2) + 1
                offset = int.from_bytes(src[pos : pos + width], "little")
                pos += width
            if offset == 0 or offset > len(out):
                raise _FormatError("snappy copy offset %d outside the output" % offset)
            start = len(out) - offset
            if length <= offset:
                out += out[start : start + length]
            else:  # overlapping copy: repeats the last `offset` bytes
                pattern = bytes(out[start:])
                out += (pattern * (length // offset + 1))[:length]
        if len(out) > expected:
            raise _FormatError("snappy output longer than its declared %d bytes" % expected)
    if len(out) != expected:
        raise _FormatError(
            "snappy output has %d bytes, its header declares %d" % (len(out), expected)
        )
    return bytes(out)


# ---------------------------------------------------------------------------
# SSTable (tensorflow/core/lib/io/format.cc, block.cc).

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes + 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # 1-byte compression type + 4-byte masked crc32c
_NO_COMPRESSION, _SNAPPY_COMPRESSION = 0, 1


def _read_block(data: bytes, offset: int, size: int, limit: int, what: str) -> bytes:
    """Returns the verified, decompressed contents of the block at `offset`."""
    if offset + size + _BLOCK_TRAILER_SIZE > limit:
        raise _FormatError(
            "%s at offset %d (%d bytes plus trailer) runs past the end of the "
            "table at %d: the file is truncated or the block handle is bad"
            % (what, offset, size, limit)
        )
    block = data[offset : offset + size + 1]  # contents + compression type
    stored = _u32(data, offset + size + 1)
    actual = _crc32c(block)
    if _mask(actual) != stored:
        raise _FormatError(
            "%s at offset %d fails its CRC32C check (stored 0x%08x, computed 0x%08x)"
            % (what, offset, _unmask(stored), actual)
        )
    kind = block[-1]
    contents = block[:-1]
    if kind == _NO_COMPRESSION:
        return contents
    if kind == _SNAPPY_COMPRESSION:
        try:
            return _snappy_decompress(contents)
        except _FormatError as err:
            raise _FormatError("%s at offset %d: %s" % (what, offset, err)) from None
    raise _FormatError(
        "%s at offset %d has compression type %d; TensorFlow writes only 0 (none) "
        "and 1 (snappy)" % (what, offset, kind)
    )


def _block_entries(block: bytes, what: str) -> Iterator[tuple[bytes, bytes]]:
    """Yields the (key, value) pairs of one block, undoing prefix compression."""
    size = len(block)
    if size < 4:
        raise _FormatError("%s is %d bytes, too short for its restart count" % (what, size))
    num_restarts = _u32(block, size - 4)
    restarts_at = size - 4 - 4 * num_restarts
    if restarts_at < 0:
        raise _FormatError("%s declares %d restart points, more than fit" % (what, num_restarts))
    restarts = {_u32(block, restarts_at + 4 * i) for i in range(num_restarts)}
    pos = 0
    key = b""
    while pos < restarts_at:
        entry_at = pos
        shared, pos = _varint(block, pos, restarts_at, 32)
        unshared, pos = _varint(block, pos, restarts_at, 32)
        value_len, pos = _varint(block, pos, restarts_at, 32)
        if shared > len(key) or pos + unshared + value_len > restarts_at:
            raise _FormatError("%s has a malformed entry at offset %d" % (what, entry_at))
        if entry_at in restarts:
            if shared:
                raise _FormatError(
                    "%s: the entry at restart point %d shares a key prefix" % (what, entry_at)
                )
            restarts.discard(entry_at)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len
    if restarts_at == 0:
        restarts.discard(0)  # an empty block still has one restart point
    if restarts:
        raise _FormatError(
            "%s has restart points that are not entry boundaries: %s" % (what, sorted(restarts)[:5])
        )


def _read_table(data: bytes) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of an SSTable held in `data`, in key order."""
    if len(data) < _FOOTER_SIZE:
        raise _FormatError(
            "file is %d bytes, shorter than the %d-byte table footer" % (len(data), _FOOTER_SIZE)
        )
    footer_at = len(data) - _FOOTER_SIZE
    magic = int.from_bytes(data[-8:], "little")
    if magic != _TABLE_MAGIC:
        raise _FormatError(
            "bad table magic number 0x%016x (expected 0x%016x): not a checkpoint "
            "index, or truncated" % (magic, _TABLE_MAGIC)
        )
    pos = footer_at
    meta_offset, pos = _varint(data, pos, len(data) - 8)
    meta_size, pos = _varint(data, pos, len(data) - 8)
    index_offset, pos = _varint(data, pos, len(data) - 8)
    index_size, pos = _varint(data, pos, len(data) - 8)
    # The metaindex block is empty in TensorFlow's tables (no filters); it is
    # only verified, so that no byte outside the footer padding goes unchecked.
    meta = _read_block(data, meta_offset, meta_size, footer_at, "metaindex block")
    for _ in _block_entries(meta, "metaindex block"):
        pass
    index = _read_block(data, index_offset, index_size, footer_at, "index block")
    entries: list[tuple[bytes, bytes]] = []
    for n, (separator, handle) in enumerate(_block_entries(index, "index block")):
        block_offset, hpos = _varint(handle, 0, len(handle))
        block_size, hpos = _varint(handle, hpos, len(handle))
        what = "data block %d" % n
        block = _read_block(data, block_offset, block_size, footer_at, what)
        for key, value in _block_entries(block, what):
            if entries and key <= entries[-1][0]:
                raise _FormatError("%s: keys are not in strictly increasing order" % what)
            if key > separator:
                raise _FormatError("%s: a key lies past the index separator" % what)
            entries.append((key, value))
    return entries


# ---------------------------------------------------------------------------
# OrderedCode (tensorflow/core/lib/strings/ordered_code.cc), for the keys under
# which the slices of partitioned variables are stored.


def _ordered_num_increasing(value: int) -> bytes:
    """OrderedCode::WriteNumIncreasing: length byte + big-endian value."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def _ordered_string(value: bytes) -> bytes:
    """OrderedCode::WriteString: escapes 0x00 and 0xff, appends the separator."""
    escaped = re.sub(
        rb"[\x00\xff]", lambda m: b"\x00\xff" if m.group() == b"\x00" else b"\xff\x00", value
    )
    return escaped + b"\x00\x01"


def _ordered_signed_num_increasing(value: int) -> bytes:
    """OrderedCode::WriteSignedNumIncreasing (1 to 10 bytes)."""
    magnitude = ~value if value < 0 else value
    length = min(10, (magnitude.bit_length() + 1 + 6) // 7)
    raw = value & ((1 << (8 * length)) - 1)  # two's complement in `length` bytes
    header = ((1 << length) - 1) << (8 * length - length)
    return (raw ^ header).to_bytes(length, "big")


def _slice_key(name: bytes, extents: list[tuple[int, int]]) -> bytes:
    """checkpoint::EncodeTensorNameSlice. `extents` are (start, length or -1)."""
    parts = [
        _ordered_num_increasing(0),
        _ordered_string(name),
        _ordered_num_increasing(len(extents)),
    ]
    for start, length in extents:
        parts.append(_ordered_signed_num_increasing(start))
        parts.append(_ordered_signed_num_increasing(length))
    return b"".join(parts)


# ---------------------------------------------------------------------------
# Bundle.

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


class _Entry(NamedTuple):
    dtype_enum: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None
    slices: tuple[tuple[tuple[int, int | None], ...], ...]  # (start, length|None) per dim


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    fields = _proto_fields(buf)
    if _int_field(fields, 3, 64):  # unknown_rank
        raise _FormatError("the shape has unknown rank")
    dims = []
    for dim in _message_fields(fields, 2):
        size = _int_field(_proto_fields(dim), 1, 64)
        if size < 0:
            raise _FormatError("the shape has a negative dimension %d" % size)
        dims.append(size)
    return tuple(dims)


def _parse_slice(buf: bytes) -> tuple[tuple[int, int | None], ...]:
    extents = []
    for extent in _message_fields(_proto_fields(buf), 1):
        fields = _proto_fields(extent)
        start = _int_field(fields, 1, 64)
        length = _int_field(fields, 2, 64) if 2 in fields else None
        extents.append((start, length))
    return tuple(extents)


def _parse_entry(buf: bytes) -> _Entry:
    fields = _proto_fields(buf)
    shape_buf = _singular_message(fields, 2)
    return _Entry(
        dtype_enum=_int_field(fields, 1, 32),
        shape=_parse_shape(shape_buf) if shape_buf is not None else (),
        shard_id=_int_field(fields, 3, 32),
        offset=_int_field(fields, 4, 64),
        size=_int_field(fields, 5, 64),
        crc32c=_fixed32_field(fields, 6),
        slices=tuple(_parse_slice(s) for s in _message_fields(fields, 7)),
    )


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


def _check_tiling(name, shape, boxes, error) -> None:
    """Raises unless `boxes` (start, stop) tile `shape` exactly, as TF requires."""
    total = 1
    for dim in shape:
        total *= dim
    volume = 0
    for starts, stops in boxes:
        size = 1
        for a, b in zip(starts, stops, strict=True):
            size *= b - a
        volume += size
    if boxes and len(shape):
        lo = np.array([b[0] for b in boxes], dtype=np.int64)
        hi = np.array([b[1] for b in boxes], dtype=np.int64)
        for i in range(0, len(boxes), 256):
            # Boxes i..i+256 against all: overlap when every dim overlaps.
            overlap = np.all(
                (lo[i : i + 256, None, :] < hi[None, :, :])
                & (lo[None, :, :] < hi[i : i + 256, None, :]),
                axis=2,
            )
            nonempty = np.all(hi > lo, axis=1)
            overlap &= nonempty[i : i + 256, None] & nonempty[None, :]
            rows = np.arange(i, min(i + 256, len(boxes)))
            overlap[rows - i, rows] = False
            if overlap.any():
                raise error(f"the saved slices of partitioned tensor '{name}' overlap")
    if volume != total:
        raise error(
            f"the saved slices of partitioned tensor '{name}' cover {volume} of its "
            f"{total} elements"
        )
