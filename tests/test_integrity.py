"""Damaged checkpoints are reported, never restored as wrong values.

Every byte of a saved checkpoint's data can be flipped, files truncated or deleted,
and the metadata files (varstore_metadata.json, Orbax's _METADATA) corrupted: each
reader (`Saver.restore`, `vs.train.load_variable`, `load_checkpoint(...).get_tensor`)
either raises a `vs.VarStoreError` (a `CheckpointError` naming the variable when the
damage is in its data) or returns exactly the saved values. Both storage layouts are
covered ("files": a few big arrays, one file per chunk; "ocdbt": many small arrays in
one key-value store), and TensorFlow 1.x checkpoints too.
"""

import contextlib
import json
import os
import pathlib
import shutil
import tempfile

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import varstore as vs
from varstore import _ckpt_io

from _helpers import sealed

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "tf1", "howto")
READERS = ["Saver.restore", "load_variable", "get_tensor"]
METADATA = "varstore_metadata.json"


# --------------------------------------------------------------------------- helpers


def read_with(reader, path, names):
    if reader == "Saver.restore":
        store = vs.train.Saver(list(names)).restore(path)
        return {n: np.asarray(store[n]) for n in names}
    if reader == "load_variable":
        return {n: vs.train.load_variable(path, n) for n in names}
    r = vs.train.load_checkpoint(path)
    return {n: r.get_tensor(n) for n in names}


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype and jax.dtypes.canonicalize_dtype(b.dtype) == a.dtype:
        b = b.astype(a.dtype)  # Saver.restore gives int64 as int32 without jax_enable_x64
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def outcome(reader, path, expected, names=None, must_name=None, what=""):
    """'error' or 'exact'; fails the test on wrong values, on an exception that is not
    a VarStoreError, and (with `must_name`) on damage not reported against that name."""
    names = sorted(expected) if names is None else names
    try:
        got = read_with(reader, path, names)
    except vs.VarStoreError as e:
        if must_name is not None:
            assert isinstance(e, vs.CheckpointError), f"{what}: {reader}: {e!r}"
            assert repr(must_name) in str(e), f"{what}: {reader} does not name {must_name!r}: {e}"
        return "error"
    assert must_name is None, f"{what}: {reader} did not report damage of {must_name!r}"
    for n in names:
        assert same(got[n], expected[n]), f"{what}: {reader} returned wrong values for {n!r}"
    return "exact"


@contextlib.contextmanager
def damaged(path, how, arg=None):
    """Damages the file `path` (flip a byte, truncate, delete, rewrite) and restores
    it afterwards. Rewrites go through a new inode (as a real edit would)."""
    with open(path, "rb") as f:
        original = f.read()
    if how == "flip":
        data = bytearray(original)
        data[arg] ^= 0xFF
        new = bytes(data)
    elif how == "xor1":
        data = bytearray(original)
        data[arg] ^= 0x01
        new = bytes(data)
    elif how == "truncate":
        new = original[:arg]
    elif how == "replace":
        new = arg
    elif how == "delete":
        new = None
    else:
        raise ValueError(how)
    tmp = path + ".test-tmp"
    try:
        if new is None:
            os.remove(path)
        else:
            with open(tmp, "wb") as f:
                f.write(new)
            os.replace(tmp, path)
        yield
    finally:
        with open(tmp, "wb") as f:
            f.write(original)
        os.replace(tmp, path)


def metadata_of(path):
    with open(os.path.join(path, METADATA)) as f:
        return json.load(f)


def positions(size, extra=()):
    return sorted(p for p in {0, 1, size // 3, size // 2, size - 1, *extra} if 0 <= p < size)


# --------------------------------------------------------------------------- checkpoints


def files_layout_values():
    rng = np.random.default_rng(0)
    return {
        "dense/w": rng.standard_normal((600, 1024)).astype(np.float32),
        "dense/b": rng.integers(-(2**31), 2**31 - 1, (300, 1000), dtype=np.int32),
        "sharded/w": rng.standard_normal((8, 32768)).astype(np.float32),  # 8 chunks
        "huge": rng.standard_normal(33 * 256 * 1024).astype(np.float32),  # read in ranges
        "step": np.array(7, np.int32),
    }


def ocdbt_layout_values():
    rng = np.random.default_rng(1)
    out = {f"layer{i // 10}/v{i}": rng.standard_normal(64).astype(np.float32) for i in range(40)}
    out.update(
        {f"bf/x{i}": rng.standard_normal((3, 50)).astype(ml_dtypes.bfloat16) for i in range(5)}
    )
    out.update({f"scalars/s{i}": np.array(i * 1.5, np.float32) for i in range(6)})
    out["mask"] = rng.random((9, 9)) > 0.5
    return out


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A module-wide directory, in memory where /dev/shm allows: the tests rewrite
    files thousands of times, and ext4 flushes each file replaced by a rename."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        base = tempfile.mkdtemp(prefix="varstore-integrity-", dir="/dev/shm")
        yield pathlib.Path(base)
        shutil.rmtree(base, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("integrity")


@pytest.fixture(scope="module")
def saved(scratch):
    """{layout: (path, values)}: one checkpoint per layout, saved by a Saver."""
    base = scratch / "saved"
    out = {}
    for layout, vals in (("files", files_layout_values()), ("ocdbt", ocdbt_layout_values())):
        arrays = {k: jax.numpy.asarray(v) for k, v in vals.items()}
        if "sharded/w" in arrays:
            mesh = jax.make_mesh((8,), ("x",))
            arrays["sharded/w"] = jax.device_put(vals["sharded/w"], NamedSharding(mesh, P("x")))
        path = vs.train.Saver(sorted(vals)).save(vs.VarStore(arrays), str(base / layout / "m"))
        assert metadata_of(path)["layout"] == layout, "the variables no longer give this layout"
        out[layout] = (path, vals)
    return out


def chunk_files(path):
    """[(file, variable)] of every chunk file of a "files"-layout checkpoint."""
    out = []
    for name, e in metadata_of(path)["entries"].items():
        for key in e["chunks"]:
            out.append((os.path.join(path, e["dir"], key), name))
    return sorted(out)


def ocdbt_files(path):
    files = [os.path.join(path, "manifest.ocdbt")]
    d = os.path.join(path, "d")
    files += sorted(os.path.join(d, n) for n in os.listdir(d))
    return files


def ocdbt_value_ranges(path, vals):
    """{data file: [(start, stop, variable)]} of the values found verbatim in the OCDBT
    data files (found by content, whatever the metadata records)."""
    out = {}
    for f in ocdbt_files(path):
        with open(f, "rb") as fh:
            data = fh.read()
        for name, v in vals.items():
            raw = np.ascontiguousarray(v).tobytes()
            at = data.find(raw) if len(raw) >= 16 else -1
            if at >= 0:
                out.setdefault(f, []).append((at, at + len(raw), name))
    return out


# --------------------------------------------------------------------------- data damage


def test_flipped_byte_in_any_chunk_file_is_reported_naming_the_variable(saved):
    path, vals = saved["files"]
    files = chunk_files(path)
    assert len(files) == 12  # 8 chunks of sharded/w, one per other variable
    for f, name in files:
        size = os.path.getsize(f)
        for pos in positions(size):
            with damaged(f, "flip", pos):
                for reader in READERS:
                    outcome(reader, path, vals, [name], must_name=name, what=f"{f}@{pos}")
        with damaged(f, "flip", size // 2):  # a full restore reports it too
            outcome("Saver.restore", path, vals, must_name=name, what=f)


def test_flipped_byte_in_ocdbt_files_is_reported(saved):
    path, vals = saved["ocdbt"]
    ranges = ocdbt_value_ranges(path, vals)
    assert sum(map(len, ranges.values())) >= 20, "values should be stored verbatim"
    errors = 0
    for f in ocdbt_files(path):
        size = os.path.getsize(f)
        for pos in positions(size):
            with damaged(f, "flip", pos):
                results = {outcome(r, path, vals, what=f"{f}@{pos}") for r in READERS}
                errors += "error" in results
        for start, stop, name in ranges.get(f, []):
            with damaged(f, "flip", (start + stop) // 2):
                for reader in READERS:
                    outcome(reader, path, vals, [name], must_name=name, what=f"{f} in {name}")
    assert errors, "no flip outside the recorded values was noticed at all"


def test_truncated_or_deleted_chunk_file_is_reported_naming_the_variable(saved):
    path, vals = saved["files"]
    for f, name in chunk_files(path):
        size = os.path.getsize(f)
        for how, arg in (
            ("truncate", size - 1),
            ("truncate", size // 2),
            ("truncate", 0),
            ("delete", None),
        ):
            with damaged(f, how, arg):
                for reader in READERS:
                    outcome(reader, path, vals, [name], must_name=name, what=f"{f} {how} {arg}")
        with damaged(f, "replace", b"\0" * (size + 1)):  # grown
            outcome("get_tensor", path, vals, [name], must_name=name, what=f"{f} grown")


def test_truncated_or_deleted_ocdbt_files_are_reported(saved):
    path, vals = saved["ocdbt"]
    for f in ocdbt_files(path):
        size = os.path.getsize(f)
        for how, arg in (("truncate", size // 2), ("truncate", 0), ("delete", None)):
            with damaged(f, how, arg):
                # Hinted reads may still find every value, verified: exact is fine.
                for reader in READERS:
                    outcome(reader, path, vals, what=f"{f} {how}")
    data = [f for f in ocdbt_files(path) if os.sep + "d" + os.sep in f]
    with contextlib.ExitStack() as stack:
        for f in data:
            stack.enter_context(damaged(f, "delete"))
        for reader in READERS:
            assert outcome(reader, path, vals, what="all data files deleted") == "error"


def test_damage_in_one_variable_does_not_block_the_others(saved):
    """Readers verify exactly the chunks they read."""
    path, vals = saved["files"]
    (f, name), *_ = [(f, n) for f, n in chunk_files(path) if n == "dense/w"]
    others = sorted(n for n in vals if n != name)
    with damaged(f, "flip", 100):
        for reader in READERS:
            assert outcome(reader, path, vals, others) == "exact"
            outcome(reader, path, vals, [name], must_name=name)


# --------------------------------------------------------------------------- metadata


def small_values():
    rng = np.random.default_rng(2)
    return {
        "a/w": rng.standard_normal((3, 5)).astype(np.float32),
        "a/b": np.arange(5, dtype=np.int8),
        "e": np.zeros((0, 4), np.float32),
        "s": np.array(2.5, np.float32),
        "h": rng.standard_normal(6).astype(ml_dtypes.bfloat16),
        "m": np.array([True, False, True]),
    }


@pytest.fixture(scope="module", params=["files", "ocdbt"])
def small_checkpoint(request, scratch):
    vals = small_values()
    path = str(scratch / "small" / request.param)
    _ckpt_io.write(path, vals, layout=request.param)
    return path, vals


def test_every_flipped_byte_of_varstore_metadata_is_an_error_or_harmless(small_checkpoint):
    path, vals = small_checkpoint
    f = os.path.join(path, METADATA)
    size = os.path.getsize(f)
    counts = {"error": 0, "exact": 0}
    for pos in range(size):
        with damaged(f, "xor1", pos):
            counts[outcome("get_tensor", path, vals, what=f"{METADATA}@{pos}")] += 1
            if pos % 16 == 0:
                outcome("Saver.restore", path, vals, what=f"{METADATA}@{pos}")
    assert counts["error"] > size // 2, counts


def test_resealed_metadata_with_another_shape_is_an_error(small_checkpoint):
    """A shape that disagrees with the stored chunks is refused even when the metadata
    checksum was recomputed (a shrunk shape would otherwise crop the array)."""
    path, vals = small_checkpoint
    f = os.path.join(path, METADATA)
    meta = metadata_of(path)
    shapes = []
    for name, entry in meta["entries"].items():
        if 0 in entry["shape"] or not entry["shape"]:
            continue  # no chunk to disagree with
        for i in range(len(entry["shape"])):
            for delta in (-1, 1):
                shape = list(entry["shape"])
                shape[i] += delta
                shapes.append((name, shape))
        shapes.append((name, [0.5] * len(entry["shape"])))  # int(0.5) == 0
        shapes.append((name, list(reversed(entry["shape"])) + [1]))
    assert len(shapes) >= 10
    with damaged(f, "replace", sealed(meta)):  # resealing alone changes nothing
        assert outcome("get_tensor", path, vals) == "exact"
    for name, shape in shapes:
        tampered = json.loads(json.dumps(meta))
        tampered["entries"][name]["shape"] = shape
        with damaged(f, "replace", sealed(tampered)):
            for reader in ("get_tensor", "Saver.restore"):
                assert outcome(reader, path, vals, what=f"{name} shape {shape}") == "error"


BAD_JSON_VALUES = [
    None, "", "../x", "/etc/passwd", -1, 2**64, float("nan"), float("inf"), [], {},
    [1, 2, 3, 4, 5, 6], [-1, 5], [2**64, 1], [float("inf")], [0.5], True, "x" * 300,
]  # fmt: skip


def test_tampered_metadata_fields_are_errors_or_harmless(small_checkpoint):
    """Valid, resealed JSON with wrong types or values in any field: a VarStoreError
    or exact values, never another exception nor wrong values."""
    path, vals = small_checkpoint
    f = os.path.join(path, METADATA)
    meta = metadata_of(path)
    cases = [((key,), v) for key in meta if key != "entries" for v in BAD_JSON_VALUES]
    for name, entry in meta["entries"].items():
        cases += [(("entries", name, field), v) for field in entry for v in BAD_JSON_VALUES]
    cases += [(("entries", "../escape"), meta["entries"]["a/w"])]
    cases += [(("entries", "/abs/olute"), meta["entries"]["a/w"])]
    with damaged(f, "replace", sealed(meta)):  # resealing alone changes nothing
        assert outcome("get_tensor", path, vals) == "exact"
    failures = []
    for i, (keys, value) in enumerate(cases):
        tampered = json.loads(json.dumps(meta))
        node = tampered
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        with damaged(f, "replace", sealed(tampered)):
            for reader in ("get_tensor", "Saver.restore")[: 1 + (i % 4 == 0)]:
                try:
                    outcome(reader, path, vals, what=f"{keys}={value!r}")
                except Exception as e:  # noqa: BLE001 - collected, reported below
                    failures.append(f"{reader} {keys}={value!r}: {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("how", ["truncate", "empty", "not-json", "delete"])
def test_broken_varstore_metadata_file(small_checkpoint, how):
    path, vals = small_checkpoint
    f = os.path.join(path, METADATA)
    size = os.path.getsize(f)
    action = {
        "truncate": ("truncate", size // 2),
        "empty": ("truncate", 0),
        "not-json": ("replace", b"\x80\x04\x95 not json"),
        "delete": ("delete", None),
    }[how]
    with damaged(f, *action):
        results = {outcome(r, path, vals, what=how) for r in READERS}
    if how != "delete":
        assert results == {"error"}
    # Without our metadata the directory is read as a plain Orbax checkpoint; its
    # values are still exact (or unreadable), never wrong.


def test_every_flipped_byte_of_orbax_metadata_is_an_error_or_harmless(small_checkpoint):
    path, vals = small_checkpoint
    f = os.path.join(path, "_METADATA")
    for pos in range(os.path.getsize(f)):
        with damaged(f, "xor1", pos):
            outcome("get_tensor", path, vals, what=f"_METADATA@{pos}")
    with damaged(f, "delete"):
        assert {outcome(r, path, vals) for r in READERS} == {"error"}  # not a checkpoint


def test_corrupt_metadata_of_a_plain_orbax_checkpoint(tmp_path):
    vals = {"a": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, "s": np.int32(3)}
    flat = {"a/w": vals["a"]["w"], "s": np.asarray(np.int32(3))}
    path = str(tmp_path / "plain")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, vals)
        ckptr.wait_until_finished()
    assert outcome("get_tensor", path, flat) == "exact"
    f = os.path.join(path, "_METADATA")
    counts = {"error": 0, "exact": 0}
    for pos in range(0, os.path.getsize(f), 5):
        with damaged(f, "xor1", pos):
            counts[outcome("get_tensor", path, flat, what=f"_METADATA@{pos}")] += 1
    assert counts["error"], counts
    with damaged(f, "replace", b"[]"):
        assert outcome("Saver.restore", path, flat) == "error"


def test_infinite_shape_in_plain_orbax_zarr_metadata_is_a_checkpoint_error(tmp_path):
    path = str(tmp_path / "plain")
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=True)
    ocp.Checkpointer(handler).save(path, args=ocp.args.PyTreeSave({"w": np.arange(6.0)}))
    f = os.path.join(path, "w", "zarr.json")
    with open(f) as fh:
        zarr = json.load(fh)
    zarr["shape"] = [float("inf")]
    with damaged(f, "replace", json.dumps(zarr).encode()):
        for reader in READERS:
            assert outcome(reader, path, {"w": np.arange(6.0)}) == "error"


# --------------------------------------------------------------------------- TF1


@pytest.fixture
def tf1_copy(tmp_path):
    d = tmp_path / "howto"
    shutil.copytree(FIXTURES, d)
    prefix = str(d / "model.ckpt-3")
    names = [n for n, _ in vs.train.list_variables(prefix)]
    reader = vs.train.load_checkpoint(prefix)
    return prefix, {n: reader.get_tensor(n) for n in names}


def test_flipped_bytes_in_tf1_data_file_are_reported(tf1_copy):
    prefix, vals = tf1_copy
    f = prefix + ".data-00000-of-00001"
    size = os.path.getsize(f)
    assert sum(v.nbytes for v in vals.values()) == size  # every byte is tensor data
    for pos in positions(size, extra=range(0, size, 997)):
        with damaged(f, "flip", pos):
            assert outcome("Saver.restore", prefix, vals, what=f"data@{pos}") == "error"
    with damaged(f, "flip", size - 1):
        for reader in READERS:
            outcome(reader, prefix, vals, ["weights"], must_name="weights")
    with damaged(f, "truncate", size - 1):
        for reader in READERS:
            assert outcome(reader, prefix, vals, what="truncated") == "error"


def test_every_flipped_byte_of_tf1_index_is_an_error_or_harmless(tf1_copy):
    prefix, vals = tf1_copy
    f = prefix + ".index"
    counts = {"error": 0, "exact": 0}
    for pos in range(os.path.getsize(f)):
        with damaged(f, "flip", pos):
            counts[outcome("Saver.restore", prefix, vals, what=f"index@{pos}")] += 1
            outcome("get_tensor", prefix, vals, what=f"index@{pos}")
    assert counts["error"] > os.path.getsize(f) // 2, counts
