"""The protobuf messages of a TensorFlow checkpoint's index, without protobuf.

A small decoder of the protobuf wire format (varint, fixed-width and
length-delimited fields; no groups), the ``BundleEntryProto`` (with its
``TensorShapeProto`` and ``TensorSliceProto``) parsed into `_Entry`, and
TensorFlow's dtype enum (types.proto): its names, and the numpy dtype of
every type whose bundle bytes are a plain little-endian array.
``BundleHeaderProto`` is read with the same field helpers by `TF1Bundle`.

Malformed bytes raise `_FormatError`, which callers turn into a
`CheckpointError` that names the file.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from ._tf1_sstable import _FormatError, _u32, _varint

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


def _last(fields: dict, number: int, wire: int, what: str):
    """A singular field's value (the last one wins, as in protobuf), or None if absent."""
    values = fields.get(number)
    if not values:
        return None
    found, value = values[-1]
    if found != wire:
        raise _FormatError("field %d: expected %s, found wire type %d" % (number, what, found))
    return value


def _int_field(fields: dict, number: int, bits: int = 64, default: int = 0) -> int:
    """A singular int32/int64/enum field."""
    value = _last(fields, number, _WIRE_VARINT, "a varint")
    return default if value is None else _as_signed(value, bits)


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
    return _last(fields, number, _WIRE_I32, "fixed32")


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
# BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto).


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
