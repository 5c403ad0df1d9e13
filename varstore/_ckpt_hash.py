"""Integrity: XXH3-64 (or crc32) digests of chunks, two-level digests of large chunks,
streaming hashers, and the seal of our metadata file."""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import numpy as np

from ._errors import CheckpointError
from . import _ckpt_format as _fmt


try:  # pragma: no cover - depends on the environment
    import xxhash as _xxhash
except ImportError:  # pragma: no cover
    _xxhash = None


# --------------------------------------------------------------------------- hashing


def _hash_algorithm() -> str:
    return "xxh3_64" if _xxhash is not None else "crc32"


def _as_bytes_view(arr: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))


def _digest_int(algorithm: str, data) -> int:
    if algorithm == "xxh3_64":
        if _xxhash is None:
            raise CheckpointError(
                "This checkpoint is verified with XXH3; install the 'xxhash' package."
            )
        return _xxhash.xxh3_64_intdigest(data)
    if algorithm == "crc32":
        return zlib.crc32(data) & 0xFFFFFFFF
    raise CheckpointError(f"Unknown checksum algorithm {algorithm!r}.")


def _format_digest(algorithm: str, value: int, block: int | None = None) -> str:
    width = 16 if algorithm == "xxh3_64" else 8
    scheme = algorithm if block is None else f"{algorithm}/b{block}"
    return f"{scheme}:{value:0{width}x}"


def _combine_blocks(algorithm: str, block: int, block_digests: list[int]) -> str:
    """Two-level digest: the digest of the blocks' digests (8 bytes each, little-endian).

    Lets large chunks be hashed in parallel, block by block, fused with their I/O.
    """
    packed = b"".join(d.to_bytes(8, "little") for d in block_digests)
    return _format_digest(algorithm, _digest_int(algorithm, packed), block)


def _digest(algorithm: str, data, block: int | None = None) -> str:
    """The digest of a chunk's bytes: plain up to `block` bytes, else two-level."""
    if isinstance(data, np.ndarray):
        data = _as_bytes_view(data)
    block = _fmt._HASH_BLOCK if block is None else block
    n = len(data)
    if n <= block:
        return _format_digest(algorithm, _digest_int(algorithm, data))
    mv = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    return _combine_blocks(
        algorithm, block, [_digest_int(algorithm, mv[o : o + block]) for o in range(0, n, block)]
    )


def _digest_scheme(expected: str) -> tuple[str, int | None]:
    """(algorithm, block size or None) of a recorded digest."""
    scheme = expected.split(":", 1)[0]
    if "/b" in scheme:
        alg, b = scheme.split("/b", 1)
        if not b.isdigit() or int(b) <= 0:
            raise CheckpointError(f"Unknown checksum scheme {scheme!r}.")
        return alg, int(b)
    return scheme, None


def _matches(expected: str, data) -> bool:
    if len(expected) == 24 and expected.startswith("xxh3_64:") and _xxhash is not None:
        try:  # the common case, without formatting a digest
            want = int(expected[8:], 16)
        except ValueError:
            return False
        return _xxhash.xxh3_64_intdigest(data) == want
    alg, block = _digest_scheme(expected)
    return _digest(alg, data, block if block is not None else 1 << 62) == expected


class _Hasher:
    """Streaming plain digest (same value as `_digest_int` over the concatenated pieces)."""

    def __init__(self, algorithm: str):
        self.algorithm = algorithm
        if algorithm == "xxh3_64":
            if _xxhash is None:
                raise CheckpointError(
                    "This checkpoint is verified with XXH3; install the 'xxhash' package."
                )
            self._h = _xxhash.xxh3_64()
        elif algorithm == "crc32":
            self._crc = 0
        else:
            raise CheckpointError(f"Unknown checksum algorithm {algorithm!r}.")

    def update(self, data) -> None:
        if self.algorithm == "xxh3_64":
            self._h.update(data)
        else:
            self._crc = zlib.crc32(data, self._crc)

    def intdigest(self) -> int:
        if self.algorithm == "xxh3_64":
            return self._h.intdigest()
        return self._crc & 0xFFFFFFFF

    def digest(self) -> str:
        return _format_digest(self.algorithm, self.intdigest())


def _new_hasher(algorithm: str) -> _Hasher:
    return _Hasher(algorithm)


_SEAL = b',"metadata_checksum":"'


def _seal_metadata(text: str, algorithm: str) -> bytes:
    """Appends the digest of everything before it as the JSON object's last member."""
    body = text.encode()
    assert body.endswith(b"}") and len(body) > 2
    prefix = body[:-1]
    return prefix + _SEAL + _digest(algorithm, prefix).encode() + b'"}'


def _check_seal(raw: bytes) -> str | None:
    """The recorded digest if `raw` is intact; None if it is not (any changed byte)."""
    i = raw.rfind(_SEAL)
    if i <= 0 or not raw.endswith(b'"}'):
        return None
    recorded = raw[i + len(_SEAL) : -2].decode("ascii", "replace")
    try:
        return recorded if _matches(recorded, raw[:i]) else None
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - a malformed digest string
        return None


def _combined_checksum(algorithm: str, chunks: Mapping[str, str]) -> str:
    if len(chunks) == 1:
        return next(iter(chunks.values()))
    text = "\n".join(f"{k}={v}" for k, v in sorted(chunks.items())).encode()
    return f"{algorithm}-chunks:" + _digest(algorithm, text).split(":", 1)[1]
