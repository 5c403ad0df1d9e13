"""Tests of varstore._tf1_bundle against checkpoints written by TensorFlow.

The fixtures under tests/fixtures/tf1/ come from tests/fixtures/make_tf1_checkpoints.py
(real TensorFlow); each prefix has an ``.expected.json`` with the values
TensorFlow's own reader returns. Hand-built tables below cover what TensorFlow
cannot be made to write (big-endian headers, bad versions, corrupt entries).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import struct

import numpy as np
import pytest

from varstore import _tf1_bundle as tb
from varstore._errors import CheckpointError, NotFoundError
from varstore._tf1_bundle import TF1Bundle, is_tf1_checkpoint

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tf1")


def _expected_prefixes() -> list[str]:
    found = []
    for root, _, files in os.walk(FIXTURES):
        for name in files:
            if name.endswith(".expected.json"):
                found.append(
                    os.path.relpath(os.path.join(root, name[: -len(".expected.json")]), FIXTURES)
                )
    return sorted(found)


PREFIXES = _expected_prefixes()


def _expected(prefix: str) -> dict:
    with open(prefix + ".expected.json") as f:
        return json.load(f)["tensors"]


def _copy_checkpoint(rel_prefix: str, dest_dir) -> str:
    """Copies the files of fixture `rel_prefix` into `dest_dir`; returns the new prefix."""
    src = os.path.join(FIXTURES, rel_prefix)
    base = os.path.basename(src)
    for name in os.listdir(os.path.dirname(src)):
        if name.startswith(base + ".") and not name.endswith(".json"):
            shutil.copyfile(os.path.join(os.path.dirname(src), name), os.path.join(dest_dir, name))
    return os.path.join(str(dest_dir), base)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _check_value(array: np.ndarray, record: dict, name: str) -> None:
    assert array.dtype.name == record["dtype"], name
    assert array.shape == tuple(record["shape"]), name
    assert array.flags.c_contiguous and array.flags.writeable
    raw = array.tobytes()
    assert len(raw) == record["nbytes"], name
    assert hashlib.sha256(raw).hexdigest() == record["sha256"], name
    if "b64" in record:
        assert raw == base64.b64decode(record["b64"]), name


def test_fixtures_are_present():
    assert len(PREFIXES) >= 9, PREFIXES
    assert os.path.getsize(os.path.join(FIXTURES, "howto", "model.ckpt-3.index")) > 0


# ---------------------------------------------------------------------------
# Reading TensorFlow's checkpoints.


@pytest.mark.parametrize("rel_prefix", PREFIXES)
def test_reads_every_fixture_exactly(rel_prefix):
    prefix = os.path.join(FIXTURES, rel_prefix)
    expected = _expected(prefix)
    bundle = TF1Bundle(prefix)
    assert list(bundle.entries) == sorted(expected)
    for name, record in expected.items():
        info = bundle.entries[name]
        assert info.tf_dtype == record["dtype"], name
        assert info.shape == tuple(record["shape"]), name
        if record["dtype"] == "string":
            assert info.dtype is None
            continue
        assert info.dtype.name == record["dtype"]
        _check_value(bundle.read(name), record, name)


def test_howto_values_look_like_the_howto():
    bundle = TF1Bundle(os.path.join(FIXTURES, "howto", "model.ckpt-3"))
    assert set(bundle.entries) == {"biases", "global_step", "w2", "w_twice", "weights"}
    weights = bundle.read("weights")
    assert weights.shape == (784, 8) and weights.dtype == np.float32
    assert 0.3 < float(weights.std()) < 0.4  # random_normal(stddev=0.35)
    np.testing.assert_array_equal(bundle.read("w_twice"), weights * 2)
    np.testing.assert_array_equal(bundle.read("w2"), weights * 0.125)  # halved 3 times
    np.testing.assert_array_equal(bundle.read("biases"), np.full(8, 1.5, np.float32))
    assert bundle.read("global_step") == 3 and bundle.read("global_step").dtype == np.int64


def test_dtypes_fixture_covers_every_dtype_scalars_and_empty():
    bundle = TF1Bundle(os.path.join(FIXTURES, "dtypes", "model.ckpt"))
    names = {info.tf_dtype for info in bundle.entries.values()}
    assert names >= {
        "float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128",
    }  # fmt: skip
    assert bundle.read("scalar_float32").shape == ()
    assert bundle.read("scalar_float32") == np.float32(-7.25)
    assert bundle.read("empty_int32_3x0x2").shape == (3, 0, 2)
    assert bundle.read("empty_float32").shape == (0,)
    assert bundle.read("outer/inner/kernel").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert str(bundle.read("v_bfloat16").dtype) == "bfloat16"
    raw = TF1Bundle(os.path.join(FIXTURES, "dtypes", "raw_dtypes"))
    assert {i.tf_dtype for i in raw.entries.values()} == {
        "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz",
        "float8_e5m2fnuz", "int4", "uint4", "int2", "uint2",
    }  # fmt: skip


def test_sharded_checkpoint_spans_three_data_files():
    bundle = TF1Bundle(os.path.join(FIXTURES, "sharded", "model.ckpt"))
    assert bundle.num_shards == 3
    assert bundle.data_file(2).endswith("model.ckpt.data-00002-of-00003")
    assert bundle.entries["spread"].partitioned
    assert bundle.entries["spread"].shape == (10, 3)


def test_partitioned_variables_are_listed_once_with_their_full_shape():
    bundle = TF1Bundle(os.path.join(FIXTURES, "partitioned", "model.ckpt"))
    assert list(bundle.entries) == ["cols", "emb", "plain", "scope/uneven"]
    assert [bundle.entries[n].partitioned for n in bundle.entries] == [True, True, False, True]
    assert bundle.entries["emb"].shape == (200, 3)
    assert bundle.entries["cols"].shape == (4, 150)
    raw = TF1Bundle(os.path.join(FIXTURES, "partitioned", "raw_slices"))
    np.testing.assert_array_equal(raw.read("m"), np.arange(60, dtype=np.float32).reshape(10, 6))


def test_string_tensor_is_listed_but_not_read():
    bundle = TF1Bundle(os.path.join(FIXTURES, "string", "model.ckpt"))
    info = bundle.entries["vocab"]
    assert info.dtype is None and info.tf_dtype == "string" and info.shape == (4,)
    with pytest.raises(
        CheckpointError,
        match=r"Tensor 'vocab' in TensorFlow checkpoint '.*model\.ckpt' has dtype string.*cannot read.*Exclude it",
    ):
        bundle.read("vocab")
    np.testing.assert_array_equal(bundle.read("numbers"), [3.0, 4.0])


def test_snappy_index_written_like_tensorflow_1_0():
    prefix = os.path.join(FIXTURES, "snappy", "model.ckpt-3")
    data = _read_bytes(prefix + ".index")
    pos = len(data) - 48
    for _ in range(2):  # skip the metaindex handle
        _, pos = tb._varint(data, pos, len(data))
    index_offset, pos = tb._varint(data, pos, len(data))
    index_size, pos = tb._varint(data, pos, len(data))
    assert data[index_offset + index_size] == 1  # the block trailer says snappy
    bundle = TF1Bundle(prefix)
    howto = TF1Bundle(os.path.join(FIXTURES, "howto", "model.ckpt-3"))
    assert bundle.entries == howto.entries
    np.testing.assert_array_equal(bundle.read("weights"), howto.read("weights"))


def test_unknown_name_gives_not_found_with_suggestion():
    bundle = TF1Bundle(os.path.join(FIXTURES, "howto", "model.ckpt-3"))
    with pytest.raises(
        NotFoundError,
        match=r"Tensor 'weight' is not in TensorFlow checkpoint .*Did you mean 'weights'",
    ):
        bundle.read("weight")
    with pytest.raises(KeyError):
        bundle.read("nothing/like/it")


def test_is_tf1_checkpoint(tmp_path):
    assert is_tf1_checkpoint(os.path.join(FIXTURES, "howto", "model.ckpt-3"))
    assert not is_tf1_checkpoint(os.path.join(FIXTURES, "howto"))
    assert not is_tf1_checkpoint(os.path.join(FIXTURES, "howto", "model.ckpt-1"))
    assert not is_tf1_checkpoint(os.path.join(FIXTURES, "howto", "model.ckpt-3.index"))
    os.mkdir(tmp_path / "odd.index")
    assert not is_tf1_checkpoint(tmp_path / "odd")


def test_missing_index_names_the_file(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"index '.*nope\.index' does not exist.*pass the prefix"
    ):
        TF1Bundle(tmp_path / "nope")


# ---------------------------------------------------------------------------
# Corruption: always a CheckpointError naming the file, never wrong values.


def _read_all_or_fail(prefix: str, expected: dict, data_file: str) -> int:
    """Reads every tensor; returns how many failed (with a proper message)."""
    bundle = TF1Bundle(prefix)
    failures = 0
    for name, record in expected.items():
        if record["dtype"] == "string":
            continue
        try:
            value = bundle.read(name)
        except CheckpointError as err:
            message = str(err)
            assert data_file in message or bundle.index_path in message, message
            assert f"'{name}" in message, message
            failures += 1
        else:
            _check_value(value, record, name)
    return failures


def test_every_flipped_data_byte_is_caught(tmp_path):
    prefix = _copy_checkpoint("dtypes/model.ckpt", tmp_path)
    expected = _expected(os.path.join(FIXTURES, "dtypes", "model.ckpt"))
    data_file = prefix + ".data-00000-of-00001"
    original = _read_bytes(data_file)
    for pos in range(len(original)):
        corrupt = bytearray(original)
        corrupt[pos] ^= 0x10
        with open(data_file, "wb") as f:
            f.write(corrupt)
        assert _read_all_or_fail(prefix, expected, data_file) == 1, pos


def test_checksum_message_names_file_tensor_and_fix(tmp_path):
    prefix = _copy_checkpoint("howto/model.ckpt-3", tmp_path)
    bundle = TF1Bundle(prefix)
    data_file = prefix + ".data-00000-of-00001"
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) - 1)
        last = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([last[0] ^ 1]))
    failing = [n for n in bundle.entries if _fails(bundle, n)]
    assert len(failing) == 1
    with pytest.raises(
        CheckpointError,
        match=rf"Data file '{re.escape(data_file)}': tensor '{failing[0]}' \(bytes \[\d+, \d+\)\) fails its CRC32C check \(index says 0x[0-9a-f]{{8}}, data gives 0x[0-9a-f]{{8}}\)\. .*re-save",
    ):
        bundle.read(failing[0])


def _fails(bundle, name) -> bool:
    try:
        bundle.read(name)
    except CheckpointError:
        return True
    return False


def test_every_flipped_index_byte_is_caught_or_harmless(tmp_path):
    prefix = _copy_checkpoint("dtypes/model.ckpt", tmp_path)
    expected = _expected(os.path.join(FIXTURES, "dtypes", "model.ckpt"))
    index_file = prefix + ".index"
    original = _read_bytes(index_file)
    caught = 0
    for pos in range(len(original)):
        corrupt = bytearray(original)
        corrupt[pos] ^= 0x04
        with open(index_file, "wb") as f:
            f.write(corrupt)
        try:
            _read_all_or_fail(prefix, expected, prefix + ".data-00000-of-00001")
        except CheckpointError as err:
            assert f"'{index_file}'" in str(err), str(err)
            caught += 1
    # Only the footer's padding may go unnoticed.
    assert caught >= len(original) - 40, (caught, len(original))


@pytest.mark.parametrize("keep", [0, 1, 20, 47, 48, -1, -5, "half"])
def test_truncated_index(tmp_path, keep):
    prefix = _copy_checkpoint("partitioned/model.ckpt", tmp_path)
    index_file = prefix + ".index"
    data = _read_bytes(index_file)
    keep = len(data) // 2 if keep == "half" else (keep if keep >= 0 else len(data) + keep)
    with open(index_file, "wb") as f:
        f.write(data[:keep])
    with pytest.raises(
        CheckpointError, match=rf"index '{re.escape(index_file)}' is invalid: .*re-save it"
    ):
        TF1Bundle(prefix)


def test_truncated_data_file(tmp_path):
    prefix = _copy_checkpoint("howto/model.ckpt-3", tmp_path)
    expected = _expected(os.path.join(FIXTURES, "howto", "model.ckpt-3"))
    data_file = prefix + ".data-00000-of-00001"
    size = os.path.getsize(data_file)
    os.truncate(data_file, size - 1)
    assert _read_all_or_fail(prefix, expected, data_file) == 1
    bundle = TF1Bundle(prefix)
    last = max(bundle.entries, key=lambda n: bundle._entry(n.encode(), n).offset)
    with pytest.raises(
        CheckpointError,
        match=rf"Data file '{re.escape(data_file)}' is truncated: tensor '{last}' needs bytes \[\d+, {size}\) but the file has {size - 1} bytes",
    ):
        bundle.read(last)
    os.truncate(data_file, 0)
    assert _read_all_or_fail(prefix, expected, data_file) == len(expected)


def test_missing_data_shard(tmp_path):
    prefix = _copy_checkpoint("sharded/model.ckpt", tmp_path)
    expected = _expected(os.path.join(FIXTURES, "sharded", "model.ckpt"))
    missing = prefix + ".data-00001-of-00003"
    os.remove(missing)
    bundle = TF1Bundle(prefix)  # listing works without the data
    assert set(bundle.entries) == set(expected)
    failed = _read_all_or_fail(prefix, expected, missing)
    assert 1 <= failed < len(expected)
    with pytest.raises(
        CheckpointError,
        match=rf"Data file '{re.escape(missing)}' of TensorFlow checkpoint .* is missing; it holds tensor 'spread' slice '.*'\. Copy all 'model\.ckpt\.data-\*-of-00003' files",
    ):
        bundle.read("spread")  # partitions on all three devices


# ---------------------------------------------------------------------------
# Hand-built tables.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n)
            return bytes(out)
        out.append((n & 0x7F) | 0x80)
        n >>= 7


def _field(number: int, value) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    if isinstance(value, tuple) and value[0] == "fixed32":
        return _varint(number << 3 | 5) + struct.pack("<I", value[1])
    return _varint(number << 3) + _varint(value)


def _shape(*dims: int) -> bytes:
    return b"".join(_field(2, _field(1, d)) for d in dims)


def _entry(
    dtype: int,
    shape: bytes,
    data: bytes = b"",
    shard: int = 0,
    offset: int = 0,
    slices=(),
    crc=None,
    size=None,
) -> bytes:
    out = _field(1, dtype) + _field(2, shape) + _field(3, shard) + _field(4, offset)
    out += _field(5, len(data) if size is None else size)
    out += _field(6, ("fixed32", tb._mask(tb._crc32c(data)) if crc is None else crc))
    for s in slices:
        out += _field(
            7,
            b"".join(_field(1, _field(1, a) + (b"" if n is None else _field(2, n))) for a, n in s),
        )
    return out


def _header(num_shards=1, endianness=0, producer=1, min_consumer=0, bad=()) -> bytes:
    version = _field(1, producer) + _field(2, min_consumer) + b"".join(_field(3, b) for b in bad)
    return _field(1, num_shards) + _field(2, endianness) + _field(3, version)


def _block(items, restart_interval=2) -> bytes:
    out, restarts, prev = bytearray(), [], b""
    for i, (key, value) in enumerate(items):
        shared = 0
        if i % restart_interval:
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        else:
            restarts.append(len(out))
        out += (
            _varint(shared)
            + _varint(len(key) - shared)
            + _varint(len(value))
            + key[shared:]
            + value
        )
        prev = key
    restarts = restarts or [0]
    return (
        bytes(out)
        + b"".join(struct.pack("<I", r) for r in restarts)
        + struct.pack("<I", len(restarts))
    )


def _table(items, per_block=3, kind=0, compress=lambda b: b) -> bytes:
    out, index = bytearray(), []

    def add(contents):
        handle = _varint(len(out)) + _varint(len(compress(contents)))
        stored = compress(contents) + bytes([kind])
        out.extend(stored + struct.pack("<I", tb._mask(tb._crc32c(stored))))
        return handle

    for i in range(0, len(items), per_block):
        chunk = items[i : i + per_block]
        index.append((chunk[-1][0], add(_block(chunk))))
    meta = add(_block([]))
    idx = add(_block(index, restart_interval=1))
    return bytes(out) + (meta + idx).ljust(40, b"\x00") + struct.pack("<Q", 0xDB4775248B80FB57)


def _write(tmp_path, items, data=b"", name="t", num_data=1, **table_kw) -> str:
    prefix = str(tmp_path / name)
    with open(prefix + ".index", "wb") as f:
        f.write(_table(items, **table_kw))
    for shard in range(num_data):
        with open("%s.data-%05d-of-%05d" % (prefix, shard, num_data), "wb") as f:
            f.write(data)
    return prefix


FLOATS = np.arange(12, dtype=np.float32).tobytes()


def test_hand_built_multi_block_table(tmp_path):
    items = [(b"", _header())]
    data = b""
    for i in range(10):
        chunk = np.full(3, i, np.int64).tobytes()
        items.append((b"var_%02d" % i, _entry(9, _shape(3), chunk, offset=len(data))))
        data += chunk
    prefix = _write(tmp_path, items, data, per_block=3)
    bundle = TF1Bundle(prefix)
    assert list(bundle.entries) == ["var_%02d" % i for i in range(10)]
    for i in range(10):
        np.testing.assert_array_equal(bundle.read("var_%02d" % i), [i, i, i])


def test_big_endian_header_is_refused(tmp_path):
    prefix = _write(
        tmp_path, [(b"", _header(endianness=1)), (b"x", _entry(1, _shape(3), FLOATS[:12]))], FLOATS
    )
    with pytest.raises(
        CheckpointError,
        match=r"checkpoint '.*t' was written on a big-endian machine .*little-endian",
    ):
        TF1Bundle(prefix)


@pytest.mark.parametrize(
    "header", [_header(min_consumer=2), _header(bad=(1,)), _header(producer=-1)]
)
def test_unsupported_versions_are_refused(tmp_path, header):
    prefix = _write(tmp_path, [(b"", header)])
    with pytest.raises(
        CheckpointError, match=r"bundle format version producer=.*this reader understands version 1"
    ):
        TF1Bundle(prefix)


@pytest.mark.parametrize(
    "items, message",
    [
        ([(b"x", _entry(1, _shape(3), FLOATS[:12]))], r"header entry \(empty key\) is missing"),
        ([(b"", _header(num_shards=0))], r"header says num_shards=0, expected >= 1"),
        ([(b"", b"\x0a\xff")], r"header entry cannot be parsed \(truncated"),
        (
            [(b"", _header()), (b"x", b"\x08")],
            r"entry of tensor 'x' cannot be parsed \(truncated varint\)",
        ),
        (
            [(b"", _header()), (b"x", _entry(1, _shape(3)) + b"\x0b")],
            r"entry of tensor 'x' cannot be parsed \(unsupported protobuf wire type 3\)",
        ),
        (
            [(b"", _header()), (b"x", _entry(1, _shape(-2)))],
            r"entry of tensor 'x' cannot be parsed \(the shape has a negative dimension -2\)",
        ),
        (
            [(b"", _header()), (b"x", _entry(1, _field(3, 1)))],
            r"entry of tensor 'x' cannot be parsed \(the shape has unknown rank\)",
        ),
        (
            [(b"", _header()), (b"\xff\xfe", _entry(1, _shape(3)))],
            r"tensor name b'\\xff\\xfe' is not UTF-8",
        ),
    ],
)
def test_bad_index_contents(tmp_path, items, message):
    prefix = _write(tmp_path, items, FLOATS)
    with pytest.raises(CheckpointError, match=rf"index '.*t\.index' is invalid: (the )?{message}"):
        TF1Bundle(prefix)


def test_keys_out_of_order(tmp_path):
    items = [
        (b"", _header()),
        (b"b", _entry(1, _shape(1), FLOATS[:4])),
        (b"a", _entry(1, _shape(1), FLOATS[:4])),
    ]
    prefix = _write(tmp_path, items, FLOATS, per_block=1)
    with pytest.raises(CheckpointError, match=r"keys are not in strictly increasing order"):
        TF1Bundle(prefix)


def test_unknown_compression_type(tmp_path):
    prefix = _write(tmp_path, [(b"", _header())], kind=2)
    with pytest.raises(
        CheckpointError,
        match=r"compression type 2; TensorFlow writes only 0 \(none\) and 1 \(snappy\)",
    ):
        TF1Bundle(prefix)


def test_corrupt_snappy_block_with_valid_crc(tmp_path):
    prefix = _write(tmp_path, [(b"", _header())], kind=1, compress=lambda b: b"\x05\x00a")
    with pytest.raises(
        CheckpointError,
        match=r"index block at offset \d+: snappy output has 1 bytes, its header declares 5",
    ):
        TF1Bundle(prefix)


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            _entry(1, _shape(3), FLOATS[:12], size=8),
            r"tensor 'x' of dtype float32 and shape \(3,\) should take 12 bytes, its entry says 8",
        ),
        (
            _entry(1, _shape(3), FLOATS[:12], shard=1),
            r"tensor 'x' lives in data shard 1, but the checkpoint has 1 shard",
        ),
        (_entry(1, _shape(3), FLOATS[:12], shard=-1), r"tensor 'x' lives in data shard -1"),
        (_entry(1, _shape(3), FLOATS[:12], offset=-4), r"tensor 'x' has negative offset -4"),
    ],
)
def test_inconsistent_entries_fail_on_read(tmp_path, entry, message):
    prefix = _write(tmp_path, [(b"", _header()), (b"x", entry)], FLOATS)
    bundle = TF1Bundle(prefix)
    with pytest.raises(CheckpointError, match=rf"index '.*t\.index' is invalid: (the )?{message}"):
        bundle.read("x")


def test_unknown_and_unsupported_dtypes_are_listed_not_read(tmp_path):
    items = [
        (b"", _header()),
        (b"q", _entry(11, _shape(2), b"\x01\x02")),
        (b"z", _entry(99, _shape(1), b"\x00")),
    ]
    bundle = TF1Bundle(_write(tmp_path, items, b"\x01\x02\x00"))
    assert bundle.entries["q"].tf_dtype == "qint8" and bundle.entries["q"].dtype is None
    assert bundle.entries["z"].tf_dtype == "DT_99"
    with pytest.raises(
        CheckpointError, match=r"Tensor 'z' .* has dtype DT_99, which varstore cannot read"
    ):
        bundle.read("z")


def test_bool_bytes_other_than_0_and_1(tmp_path):
    data = b"\x00\x01\x02"
    bundle = TF1Bundle(
        _write(tmp_path, [(b"", _header()), (b"b", _entry(10, _shape(3), data))], data)
    )
    with pytest.raises(CheckpointError, match=r"bool tensor 'b' holds bytes other than 0 and 1"):
        bundle.read("b")


def _slice_items(full_shape, slices, dtype=1, drop=(), data_chunks=None):
    """A partitioned tensor 'p' of float32 arange values, cut into `slices`."""
    full = np.arange(int(np.prod(full_shape)), dtype=np.float32).reshape(full_shape)
    items, data = [(b"", _header())], b""
    entries = []
    for i, extents in enumerate(slices):
        index = tuple(slice(a, a + n) for a, n in extents)
        chunk = np.ascontiguousarray(full[index]).tobytes()
        key = tb._slice_key(b"p", list(extents))
        if i not in drop:
            entries.append(
                (key, _entry(dtype, _shape(*full[index].shape), chunk, offset=len(data)))
            )
        data += chunk
    items.append((b"p", _entry(dtype, _shape(*full_shape), slices=slices)))
    items += entries
    items.sort()
    return items, data, full


def test_partitioned_assembly_from_hand_built_slices(tmp_path):
    items, data, full = _slice_items((6, 5), [((0, 2), (0, 5)), ((2, 4), (0, 3)), ((2, 4), (3, 2))])
    bundle = TF1Bundle(_write(tmp_path, items, data))
    assert list(bundle.entries) == ["p"]
    np.testing.assert_array_equal(bundle.read("p"), full)


@pytest.mark.parametrize(
    "slices, drop, message",
    [
        (
            [((0, 3), (0, 5)), ((2, 4), (0, 5))],
            (),
            r"saved slices of partitioned tensor 'p' overlap",
        ),
        (
            [((0, 2), (0, 5)), ((2, 2), (0, 5))],
            (),
            r"saved slices of partitioned tensor 'p' cover 20 of its 30 elements",
        ),
        (
            [((0, 2), (0, 5)), ((2, 4), (0, 5))],
            (1,),
            r"slice '2,4:0,5' of partitioned tensor 'p' has no entry",
        ),
        (
            [((0, 2), (0, 5)), ((2, 5), (0, 5))],
            (),
            r"slice '2,5:0,5' of partitioned tensor 'p' lies outside its shape \(6, 5\)",
        ),
    ],
)
def test_bad_partitions(tmp_path, slices, drop, message):
    items, data, _ = _slice_items((6, 5), slices, drop=drop)
    bundle = TF1Bundle(_write(tmp_path, items, data))
    with pytest.raises(CheckpointError, match=rf"index '.*t\.index' is invalid: (the )?{message}"):
        bundle.read("p")


# ---------------------------------------------------------------------------
# Building blocks.


def test_crc32c_known_values_and_fallback():
    assert tb._crc32c(b"123456789") == 0xE3069283
    assert tb._crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 7, 64, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8)
        assert (
            tb._crc32c(data)
            == tb._crc32c_pure(data.tobytes())
            == tb._crc32c(bytearray(data.tobytes()))
        )
    for crc in (0, 1, 0xFFFFFFFF, 0xE3069283):
        assert tb._unmask(tb._mask(crc)) == crc
    assert tb._mask(0) == 0xA282EAD8


def test_ordered_code_matches_tensorflow_examples_and_sorts():
    assert tb._ordered_signed_num_increasing(0x424242) == bytes.fromhex("f0424242")
    assert tb._ordered_signed_num_increasing(-0x800) == bytes.fromhex("3800")
    assert tb._ordered_signed_num_increasing(0) == b"\x80"
    assert tb._ordered_signed_num_increasing(-1) == b"\x7f"
    assert len(tb._ordered_signed_num_increasing(63)) == 1
    assert len(tb._ordered_signed_num_increasing(64)) == 2
    assert len(tb._ordered_signed_num_increasing(-64)) == 1
    assert len(tb._ordered_signed_num_increasing(-65)) == 2
    assert len(tb._ordered_signed_num_increasing(2**63 - 1)) == 10
    assert len(tb._ordered_signed_num_increasing(-(2**63))) == 10
    values = sorted(
        {0, 1, -1} | {s * (2**k + d) for k in range(64) for d in (-1, 0, 1) for s in (1, -1)}
    )
    values = [v for v in values if -(2**63) <= v < 2**63]
    encoded = [tb._ordered_signed_num_increasing(v) for v in values]
    assert encoded == sorted(encoded)  # order-preserving, as OrderedCode promises
    assert tb._ordered_num_increasing(0) == b"\x00"
    assert tb._ordered_num_increasing(2) == b"\x01\x02"
    assert tb._ordered_num_increasing(256) == b"\x02\x01\x00"
    assert tb._ordered_string(b"a\x00b\xffc") == b"a\x00\xffb\xff\x00c\x00\x01"


def test_snappy_decoder():
    assert tb._snappy_decompress(b"\x03\x08abc") == b"abc"
    # literal "ab", then a 1-byte-offset copy of length 6 at offset 2 (overlapping)
    assert tb._snappy_decompress(b"\x08\x04ab" + bytes([((6 - 4) << 2) | 1, 2])) == b"abababab"
    # 2-byte-offset copy
    assert (
        tb._snappy_decompress(b"\x06\x08xyz" + bytes([(3 - 1) << 2 | 2]) + b"\x03\x00") == b"xyzxyz"
    )
    with pytest.raises(tb._FormatError, match="offset 9 outside"):
        tb._snappy_decompress(b"\x08\x04ab" + bytes([((6 - 4) << 2) | 1, 9]))
    with pytest.raises(tb._FormatError, match="truncated snappy literal"):
        tb._snappy_decompress(b"\x03\x08ab")
    with pytest.raises(tb._FormatError, match="longer than its declared"):
        tb._snappy_decompress(b"\x01\x08abc")


def test_protobuf_decoder_edge_cases():
    fields = tb._proto_fields(_field(3, -1) + _field(4, 2**40) + _field(7, b"xy") + _field(3, 5))
    assert tb._int_field(fields, 3, 32) == 5  # last one wins
    assert tb._int_field(tb._proto_fields(_field(3, -1)), 3, 32) == -1
    assert tb._int_field(fields, 4) == 2**40
    packed = _field(3, _varint(1) + _varint(2) + _varint(2**64 - 3))
    assert tb._repeated_ints(tb._proto_fields(packed), 3) == [1, 2, -3]
    with pytest.raises(tb._FormatError, match="does not fit in int32"):
        tb._int_field(tb._proto_fields(_field(3, 2**40)), 3, 32)
    with pytest.raises(tb._FormatError, match="varint longer than 64 bits"):
        tb._varint(b"\xff" * 10 + b"\x01", 0, 11)
