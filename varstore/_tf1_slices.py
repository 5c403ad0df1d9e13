"""The slices of partitioned variables in a TensorFlow checkpoint.

A partitioned variable is saved as one entry under its name (full shape and
the list of saved slices) and one entry per slice, under a key that
TensorFlow encodes with OrderedCode; `_slice_key` builds that key.
`_check_tiling` checks that the saved slices tile the full shape exactly, as
TensorFlow requires, before `TF1Bundle` assembles them.
"""

from __future__ import annotations

import re

import numpy as np

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
# Tiling: TensorFlow restores a partitioned variable only from slices that
# cover its shape exactly once.


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
