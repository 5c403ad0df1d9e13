"""The SSTable of a TensorFlow checkpoint's ``.index`` file, and CRC32C.

The index is a LevelDB-style sorted string table (tensorflow/core/lib/io/
format.cc, block.cc). This module parses it: footer, index block, data blocks
with restart points and prefix-compressed keys, block trailers with
compression type and masked CRC32C, which are verified; Snappy-compressed
blocks, which TensorFlow 1.0 and 1.1 wrote, are decompressed by a small
decoder here. `_read_table` returns the (key, value) pairs; `_tf1_proto`
decodes the values and `_tf1_bundle` gives them meaning.

It also holds the byte-level pieces the other ``_tf1_*`` modules share:
`_FormatError`, base-128 varints, little-endian u32, and CRC32C with
TensorFlow's masking.

CRC32C comes from the ``google-crc32c`` package (hardware accelerated); a
table-driven pure-Python fallback is used only when it is not installed, and
is slow (a few MB/s).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

try:  # pragma: no cover - exercised by whichever branch is installed
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover
    _google_crc32c = None


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

