"""Tests of varstore._ckpt_io: the Orbax-compatible checkpoint backend."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import json  # noqa: E402
import threading  # noqa: E402

import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
import pytest  # noqa: E402
from jax.sharding import NamedSharding, SingleDeviceSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from varstore import _ckpt_io as io  # noqa: E402
from varstore._errors import CheckpointError, VarStoreError  # noqa: E402

LAYOUTS = ["files", "ocdbt"]
needs8 = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 CPU devices")


def bits(a) -> bytes:
    a = np.ascontiguousarray(np.asarray(a))
    return a.dtype.str.encode() + repr(a.shape).encode() + a.reshape(-1).view(np.uint8).tobytes()


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "layer1/w": rng.standard_normal((3, 5)).astype(np.float32),
        "layer1/b": rng.standard_normal(5).astype(np.float16),
        "layer2/w": rng.standard_normal((4, 2)).astype(ml_dtypes.bfloat16),
        "q/i8": rng.integers(-128, 127, (7,), dtype=np.int8),
        "q/i32": rng.integers(-(2**31), 2**31 - 1, (2, 3), dtype=np.int32),
        "q/u8": rng.integers(0, 255, (9,), dtype=np.uint8),
        "mask": rng.random((3, 3)) > 0.5,
        "c": (rng.standard_normal(4) + 1j * rng.standard_normal(4)).astype(np.complex64),
        "scalar_f": np.array(np.nan, np.float32),
        "scalar_i": np.array(-7, np.int32),
        "empty": np.zeros((0, 3), np.float32),
        "empty1": np.zeros((0,), np.int8),
        "step": jax.numpy.asarray(12, jax.numpy.int32),
        "dev/w": jax.device_put(np.arange(6, dtype=np.float32).reshape(2, 3)),
    }


def nested_get(tree, name):
    for k in name.split("/"):
        tree = tree[k]
    return tree


def orbax_restore(path):
    return ocp.StandardCheckpointer().restore(str(path))


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("layout", LAYOUTS)
def test_roundtrip_bit_exact_all_dtypes(tmp_path, layout):
    arrays = sample_arrays()
    path = tmp_path / "ckpt"
    h = io.write(path, arrays, layout=layout, extra_metadata={"step": 12, "note": "x"})
    assert h.done()
    h.wait()
    assert io.is_checkpoint(path)
    meta = json.loads((path / io.VARSTORE_METADATA).read_text())
    assert meta["layout"] == layout and meta["hash"] == "xxh3_64"

    entries = io.read_entries(path)
    assert list(entries) == sorted(arrays)
    for name, a in arrays.items():
        a = np.asarray(a)
        e = entries[name]
        assert e.name == name and e.shape == a.shape and e.dtype == a.dtype
        assert e.nbytes == a.nbytes
        assert (e.checksum is None) == (a.size == 0)
        assert bits(io.read_numpy(path, name)) == bits(a)

    targets = {n: (np.shape(a), np.asarray(a).dtype, None) for n, a in arrays.items()}
    got = io.read(path, targets)
    for name, a in arrays.items():
        assert isinstance(got[name], jax.Array)
        assert bits(got[name]) == bits(a), name

    restored = orbax_restore(path)  # plain Orbax: our extra JSON file is ignored
    for name, a in arrays.items():
        assert bits(nested_get(restored, name)) == bits(a), name
    assert io.read_extra_metadata(path) == {"step": 12, "note": "x"}


def test_checksum_is_xxh3_of_the_logical_bytes(tmp_path):
    import xxhash

    a = np.arange(1000, dtype=np.float32).reshape(10, 100)
    io.write(tmp_path / "c", {"w": a})
    want = f"xxh3_64:{xxhash.xxh3_64_intdigest(a.tobytes()):016x}"
    assert io.read_entries(tmp_path / "c")["w"].checksum == want


def test_auto_layout_choice():
    small = [io._plan_entry(f"v{i}", (f"v{i}",), np.zeros(4096, np.float32), False) for i in range(500)]
    assert io._choose_layout(small) == "ocdbt"
    big = [io._plan_entry("w", ("w",), np.zeros((1024, 4096), np.float32), False)]
    assert io._choose_layout(big) == "files"
    assert io._choose_layout(small[:3]) == "ocdbt"
    mid = [io._plan_entry(f"m{i}", (f"m{i}",), np.zeros(1 << 20, np.float32), False) for i in range(3)]
    assert io._choose_layout(mid) == "files"  # 4 MiB each
    assert io._choose_layout(small + mid) == "ocdbt"  # mostly small


def test_read_casts_and_places(tmp_path):
    a = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    io.write(tmp_path / "c", {"w": a})
    dev = jax.devices()[-1]
    got = io.read(tmp_path / "c", {"w": ((3, 4), ml_dtypes.bfloat16, SingleDeviceSharding(dev))})["w"]
    assert got.dtype == ml_dtypes.bfloat16 and got.devices() == {dev}
    np.testing.assert_array_equal(np.asarray(got), a.astype(ml_dtypes.bfloat16))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_only_named_entries(tmp_path, layout):
    arrays = {"a": np.arange(64, dtype=np.float32), "b": np.arange(64, dtype=np.float32) * 2}
    path = tmp_path / "c"
    io.write(path, arrays, layout=layout)
    if layout == "files":
        os.remove(path / "a" / "0")  # damage 'a'; reading 'b' must not touch it
    got = io.read(path, {"b": ((64,), np.float32, None)})
    assert list(got) == ["b"]
    np.testing.assert_array_equal(np.asarray(got["b"]), arrays["b"])


# --------------------------------------------------------------------------- sharding


@needs8
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_save_restore_other_meshes(tmp_path, layout):
    mesh42 = jax.make_mesh((4, 2), ("a", "b"))
    mesh24 = jax.make_mesh((2, 4), ("x", "y"))
    host = np.arange(16 * 8, dtype=np.float32).reshape(16, 8)
    arrays = {
        "sh/w": jax.device_put(host, NamedSharding(mesh42, P("a", "b"))),
        "sh/rows": jax.device_put(host[:, :4] + 1, NamedSharding(mesh42, P("a", None))),
        "sh/repl": jax.device_put(host[:2] * 3, NamedSharding(mesh42, P())),
        "sh/bf": jax.device_put(host.astype(ml_dtypes.bfloat16), NamedSharding(mesh42, P(None, "b"))),
    }
    path = tmp_path / "sharded"
    io.write(path, arrays, layout=layout)
    entries = io.read_entries(path)
    assert "a=4" in entries["sh/w"].sharding and "b=2" in entries["sh/w"].sharding
    assert entries["sh/w"].checksum.startswith("xxh3_64-chunks:")
    meta = json.loads((path / io.VARSTORE_METADATA).read_text())
    assert len(meta["entries"]["sh/w"]["chunks"]) == 8
    assert meta["entries"]["sh/w"]["chunk_shape"] == [4, 4]
    assert len(meta["entries"]["sh/repl"]["chunks"]) == 1

    expect = {n: np.asarray(a) for n, a in arrays.items()}
    targets = {
        "sh/w": ((16, 8), np.float32, NamedSharding(mesh24, P("x", "y"))),
        "sh/rows": ((16, 4), np.float32, NamedSharding(mesh24, P("y", "x"))),
        "sh/repl": ((2, 8), np.float32, NamedSharding(mesh24, P(None, "y"))),
        "sh/bf": ((16, 8), ml_dtypes.bfloat16, NamedSharding(mesh24, P())),
    }
    got = io.read(path, targets)
    for n, (_, _, sharding) in targets.items():
        assert got[n].sharding == sharding
        assert bits(got[n]) == bits(expect[n]), n
        for shard in got[n].addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), expect[n][shard.index])
    one = io.read(path, {n: (e.shape, e.dtype, None) for n, e in entries.items()})
    for n in arrays:
        assert len(one[n].devices()) == 1
        assert bits(one[n]) == bits(expect[n])
    same = io.read(path, {"sh/w": ((16, 8), np.float32, NamedSharding(mesh42, P("a", "b")))})["sh/w"]
    assert bits(same) == bits(expect["sh/w"])

    restored = orbax_restore(path)
    for n in arrays:
        assert bits(nested_get(restored, n)) == bits(expect[n])
    tgt = {"sh": {"w": jax.ShapeDtypeStruct((16, 8), np.float32, sharding=NamedSharding(mesh24, P("x", "y")))}}
    r = ocp.PyTreeCheckpointer().restore(
        str(path),
        args=ocp.args.PyTreeRestore(
            tgt, restore_args=ocp.checkpoint_utils.construct_restore_args(tgt), partial_restore=True
        ),
    )
    np.testing.assert_array_equal(np.asarray(r["sh"]["w"]), expect["sh/w"])


# --------------------------------------------------------------------------- foreign Orbax


@pytest.mark.parametrize(
    "kind", ["default", "no_ocdbt_zarr3", "no_ocdbt_zarr2"]
)
def test_read_foreign_orbax_checkpoints(tmp_path, kind):
    rng = np.random.default_rng(1)
    tree = {
        "layer1": {"w": rng.standard_normal((4, 6)).astype(np.float32), "b": np.arange(6, dtype=np.int32)},
        "bf": rng.standard_normal(5).astype(ml_dtypes.bfloat16),
        "s": np.array(2.5, np.float32),
    }
    if len(jax.devices()) >= 8:
        mesh = jax.make_mesh((4, 2), ("a", "b"))
        tree["sh"] = jax.device_put(
            np.arange(64, dtype=np.float32).reshape(8, 8), NamedSharding(mesh, P("a", "b"))
        )
    path = tmp_path / "foreign"
    if kind == "default":
        c = ocp.StandardCheckpointer()
        c.save(str(path), tree)
        c.wait_until_finished()
        c.close()
        assert (path / "manifest.ocdbt").exists()
    else:
        handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=(kind == "no_ocdbt_zarr3"))
        ocp.Checkpointer(handler).save(str(path), args=ocp.args.PyTreeSave(tree))
    flat = {
        "layer1/w": tree["layer1"]["w"],
        "layer1/b": tree["layer1"]["b"],
        "bf": tree["bf"],
        "s": tree["s"],
    }
    if "sh" in tree:
        flat["sh"] = np.asarray(tree["sh"])
    assert io.is_checkpoint(path)
    entries = io.read_entries(path)
    assert sorted(entries) == sorted(flat)
    for n, a in flat.items():
        assert entries[n].shape == a.shape and entries[n].dtype == a.dtype
        assert entries[n].checksum is None
        assert bits(io.read_numpy(path, n)) == bits(a)
    if "sh" in tree:
        assert "a=4" in entries["sh"].sharding
    targets = {n: (a.shape, a.dtype, None) for n, a in flat.items()}
    if "sh" in flat:
        mesh24 = jax.make_mesh((2, 4), ("x", "y"))
        targets["sh"] = ((8, 8), np.float32, NamedSharding(mesh24, P("y", "x")))
    got = io.read(path, targets)
    for n, a in flat.items():
        assert bits(got[n]) == bits(a)
    if "sh" in flat:
        assert got["sh"].sharding == targets["sh"][2]
    assert io.read_extra_metadata(path) == {}


# --------------------------------------------------------------------------- integrity


def test_flipped_byte_raises_naming_variable(tmp_path):
    arrays = {"good": np.arange(100, dtype=np.float32), "model/bad": np.arange(100, dtype=np.float32)}
    path = tmp_path / "c"
    io.write(path, arrays, layout="files")
    f = path / "model.bad" / "0"
    data = bytearray(f.read_bytes())
    data[57] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model/bad.*checksum") as exc:
        io.read(path, {"model/bad": ((100,), np.float32, None)})
    assert str(path) in str(exc.value)
    with pytest.raises(CheckpointError, match="model/bad"):
        io.read_numpy(path, "model/bad")
    np.testing.assert_array_equal(io.read_numpy(path, "good"), arrays["good"])


def test_truncated_and_missing_files_raise(tmp_path):
    arrays = {"w": np.arange(1000, dtype=np.float32), "v": np.ones(10, np.float32)}
    path = tmp_path / "c"
    io.write(path, arrays, layout="files")
    f = path / "w" / "0"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match=r"'w'.*(truncated|bytes)"):
        io.read_numpy(path, "w")
    os.remove(path / "v" / "0")
    with pytest.raises(CheckpointError, match=r"'v'"):
        io.read(path, {"v": ((10,), np.float32, None)})


def test_ocdbt_damage_raises_naming_variable(tmp_path):
    big = np.arange(64 * 1024, dtype=np.float32)  # 256 KiB: the bulk of the data file
    path = tmp_path / "c"
    io.write(path, {"tiny": np.ones(3, np.float32), "net/big": big}, layout="ocdbt")
    files = sorted((path / "d").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(files[-1].read_bytes())
    assert len(data) > big.nbytes
    data[len(data) // 2] ^= 0xFF
    files[-1].write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"net/big") as exc:
        io.read_numpy(path, "net/big")
    assert str(path) in str(exc.value)
    files[-1].write_bytes(bytes(data[: len(data) // 3]))
    with pytest.raises(CheckpointError):
        io.read(path, {"net/big": (big.shape, big.dtype, None)})


def test_malformed_metadata_raises(tmp_path):
    path = tmp_path / "c"
    io.write(path, {"w": np.ones(3, np.float32)})
    (path / io.VARSTORE_METADATA).write_text("{not json")
    with pytest.raises(CheckpointError, match="metadata"):
        io.read_entries(path)
    meta = {"format": io.FORMAT_NAME, "version": 1, "layout": "files", "hash": "xxh3_64",
            "entries": {"../x": {"dtype": "float32", "shape": [3], "dir": "..", "chunk_shape": [3],
                                 "chunks": {"0": "xxh3_64:0"}}}}
    (path / io.VARSTORE_METADATA).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        io.read_entries(path)
    with pytest.raises(CheckpointError):
        io.read_entries(tmp_path / "nothing-here")
    assert not io.is_checkpoint(tmp_path / "nothing-here")
    (tmp_path / "plain").mkdir()
    assert not io.is_checkpoint(tmp_path / "plain")


# --------------------------------------------------------------------------- errors


def test_missing_name_and_shape_mismatch(tmp_path):
    path = tmp_path / "c"
    io.write(path, {"layer1/weights": np.ones((2, 3), np.float32)})
    with pytest.raises(CheckpointError, match=r"layer1/weight'.*Did you mean 'layer1/weights'") as exc:
        io.read(path, {"layer1/weight": ((2, 3), np.float32, None)})
    assert str(path) in str(exc.value)
    with pytest.raises(CheckpointError, match=r"layer1/weights.*\(2, 3\).*\(3, 2\)") as exc:
        io.read(path, {"layer1/weights": ((3, 2), np.float32, None)})
    assert str(path) in str(exc.value)
    with pytest.raises(CheckpointError):
        io.read_numpy(path, "nope")
    assert issubclass(CheckpointError, VarStoreError)


@pytest.mark.parametrize(
    "arrays",
    [
        {"a.b": np.ones(1), "a/b": np.ones(1)},
        {"a": np.ones(1), "a/b": np.ones(1)},
        {"_METADATA": np.ones(1)},
        {"../evil": np.ones(1)},
        {"a//b": np.ones(1)},
        {"": np.ones(1)},
        {"x": np.array(["str"], dtype=object)},
        {"k": jax.random.key(0)},
    ],
)
def test_bad_names_and_values_rejected(tmp_path, arrays):
    with pytest.raises(CheckpointError):
        io.write(tmp_path / "c", arrays)
    assert os.listdir(tmp_path) in ([], ["c"]) and not (tmp_path / "c").exists()


def test_refuses_to_replace_non_checkpoint_dir(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        io.write(target, {"w": np.ones(2)})
    assert (target / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["data"]


# --------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("fallback", [False, True])
def test_replace_existing_checkpoint(tmp_path, monkeypatch, fallback):
    monkeypatch.setattr(io, "_force_rename_fallback", fallback)
    path = tmp_path / "ckpt"
    io.write(path, {"w": np.zeros(4, np.float32), "old_only": np.ones(2)})
    io.write(path, {"w": np.full(4, 2.0, np.float32)}, layout="ocdbt")
    assert sorted(io.read_entries(path)) == ["w"]
    np.testing.assert_array_equal(io.read_numpy(path, "w"), np.full(4, 2.0, np.float32))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no tmp or old directories left
    np.testing.assert_array_equal(orbax_restore(path)["w"], np.full(4, 2.0, np.float32))


def test_leftover_tmp_dirs_ignored_and_cleaned(tmp_path):
    good = tmp_path / "ckpt"
    io.write(good, {"w": np.arange(3, dtype=np.float32)})
    # An interrupted save of another (dead) process: a complete-looking copy under a tmp name.
    dead = tmp_path / f"ckpt2{io._TMP_MARK}{io._HOST}-999999999-abcd1234"
    io.write(tmp_path / "src", {"w": np.ones(3, np.float32)})
    os.rename(tmp_path / "src", dead)
    partial = tmp_path / f"ckpt{io._TMP_MARK}{io._HOST}-999999998-00ff"
    partial.mkdir()
    (partial / "w").mkdir()
    assert not io.is_checkpoint(dead) and not io.is_checkpoint(partial)
    with pytest.raises(CheckpointError, match="temporary"):
        io.read_entries(dead)
    # A crash inside the fallback replace: the old checkpoint renamed away, nothing at its path.
    io.write(tmp_path / "src3", {"w": np.full(3, 5.0, np.float32)})
    old = tmp_path / f"ckpt3{io._OLD_MARK}{io._HOST}-999999997-beef"
    os.rename(tmp_path / "src3", old)

    removed = io.cleanup_tmp(tmp_path)
    assert sorted(removed) == sorted([str(dead), str(partial)])
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "ckpt3"]
    np.testing.assert_array_equal(io.read_numpy(tmp_path / "ckpt3", "w"), np.full(3, 5.0, np.float32))
    np.testing.assert_array_equal(io.read_numpy(good, "w"), np.arange(3, dtype=np.float32))
    assert io.cleanup_tmp(tmp_path / "missing") == []


def test_cleanup_never_removes_running_save(tmp_path, monkeypatch):
    gate = threading.Event()
    entered = threading.Event()
    real = io._SaveJob._commit

    def slow_commit(self):
        entered.set()
        assert gate.wait(30)
        real(self)

    monkeypatch.setattr(io._SaveJob, "_commit", slow_commit)
    h = io.write(tmp_path / "c", {"w": np.ones(8, np.float32)}, blocking=False)
    try:
        assert entered.wait(30)
        assert not h.done()
        assert not io.is_checkpoint(tmp_path / "c")
        tmps = [n for n in os.listdir(tmp_path) if io._TMP_MARK in n]
        assert len(tmps) == 1
        assert io.cleanup_tmp(tmp_path) == []
        assert tmps[0] in os.listdir(tmp_path)
    finally:
        gate.set()
    h.wait()
    assert os.listdir(tmp_path) == ["c"]


# --------------------------------------------------------------------------- async


def test_async_write_copies_then_returns(tmp_path, monkeypatch):
    gate = threading.Event()
    real = io._SaveJob.run

    def gated_run(self):
        assert gate.wait(30)
        real(self)

    monkeypatch.setattr(io._SaveJob, "run", gated_run)
    src = np.arange(1000, dtype=np.float32)
    dsrc = jax.device_put(np.arange(10, dtype=np.int32))
    h = io.write(tmp_path / "a", {"w": src, "d": dsrc}, blocking=False)
    assert not h.done()
    src[:] = -1  # the save must have its own copy
    gate.set()
    h.wait()
    assert h.done()
    np.testing.assert_array_equal(io.read_numpy(tmp_path / "a", "w"), np.arange(1000, dtype=np.float32))
    np.testing.assert_array_equal(io.read_numpy(tmp_path / "a", "d"), np.arange(10, dtype=np.int32))


def test_async_saves_are_serialized_and_all_land(tmp_path):
    handles = [
        io.write(tmp_path / f"s{i}", {"w": np.full(2000, i, np.float32)}, blocking=False) for i in range(4)
    ]
    handles.append(io.write(tmp_path / "s0", {"w": np.full(2000, 9, np.float32)}, blocking=False))
    io.wait_all()
    assert all(h.done() for h in handles)
    for h in handles:
        h.wait()
    for i in range(1, 4):
        np.testing.assert_array_equal(io.read_numpy(tmp_path / f"s{i}", "w"), np.full(2000, i, np.float32))
    np.testing.assert_array_equal(io.read_numpy(tmp_path / "s0", "w"), np.full(2000, 9, np.float32))
    assert sorted(os.listdir(tmp_path)) == ["s0", "s1", "s2", "s3"]


def test_async_failure_reraised_as_checkpoint_error(tmp_path, monkeypatch):
    def boom(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io._SaveJob, "_write_files_layout", boom)
    h = io.write(tmp_path / "c", {"w": np.ones(4)}, blocking=False, layout="files")
    with pytest.raises(CheckpointError, match="No space left"):
        h.wait()
    assert os.listdir(tmp_path) == []  # tmp dir removed, nothing at the path
    h2 = io.write(tmp_path / "c2", {"w": np.ones(4)}, blocking=False, layout="files")
    with pytest.raises(CheckpointError, match="No space left"):
        io.wait_all()
    assert h2.done()
    io.wait_all()  # reported once
    with pytest.raises(CheckpointError):
        io.write(tmp_path / "c3", {"w": np.ones(4)}, layout="files")


def test_pending_async_save_lands_when_the_process_exits(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "exit"
    code = (
        "import numpy as np\n"
        "from varstore import _ckpt_io as io\n"
        f"io.write({str(path)!r}, {{f'v{{i}}': np.full((64, 256), i, np.float32) for i in range(30)}},"
        " blocking=False)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert io.is_checkpoint(path)
    assert len(io.read_entries(path)) == 30
    np.testing.assert_array_equal(io.read_numpy(path, "v29"), np.full((64, 256), 29, np.float32))


def test_all_io_paths_with_small_thresholds(tmp_path, monkeypatch):
    # Shrink the size thresholds so that small arrays take every write/read path:
    # batched small files, streamed (fused hash) chunks, and parallel byte ranges.
    monkeypatch.setattr(io, "_SMALL_FILE_BYTES", 16 << 10)
    monkeypatch.setattr(io, "_FUSED_BLOCK", 8 << 10)
    monkeypatch.setattr(io, "_HASH_BLOCK", 256 << 10)
    monkeypatch.setattr(io, "_RANGE_BYTES", 64 << 10)
    rng = np.random.default_rng(3)
    arrays = {
        "small": rng.standard_normal(1000).astype(np.float32),  # 4 KB
        "streamed": rng.standard_normal(50_001).astype(np.float32),  # 200 KB
        "huge": rng.standard_normal((300, 1001)).astype(np.float32),  # 1.2 MB
    }
    path = tmp_path / "c"
    io.write(path, arrays, layout="files")
    entries = io.read_entries(path)
    assert entries["huge"].checksum.startswith(f"xxh3_64/b{256 << 10}:")  # two-level digest
    assert entries["streamed"].checksum.startswith("xxh3_64:")
    for n, a in arrays.items():
        assert bits(io.read_numpy(path, n)) == bits(a)
    io.write(tmp_path / "o", arrays, layout="ocdbt")  # same digests through OCDBT
    assert {n: e.checksum for n, e in io.read_entries(tmp_path / "o").items()} == {
        n: e.checksum for n, e in entries.items()
    }
    for n, a in arrays.items():
        assert bits(io.read_numpy(tmp_path / "o", n)) == bits(a)
    monkeypatch.setattr(io, "_HASH_BLOCK", 32 << 20)  # the reader follows the recorded scheme
    got = io.read(path, {n: (a.shape, a.dtype, None) for n, a in arrays.items()})
    for n, a in arrays.items():
        assert bits(got[n]) == bits(a)
    assert bits(nested_get(orbax_restore(path), "huge")) == bits(arrays["huge"])
    for n in ("streamed", "huge"):
        f = path / n / ("0" if n == "streamed" else "0.0")
        data = bytearray(f.read_bytes())
        data[len(data) - 3] ^= 0x10
        f.write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=f"'{n}'.*checksum"):
            io.read_numpy(path, n)


def test_without_xxhash_falls_back_to_crc32(tmp_path, monkeypatch):
    a = np.arange(5000, dtype=np.float32)
    io.write(tmp_path / "x", {"w": a})
    monkeypatch.setattr(io, "_xxhash", None)
    io.write(tmp_path / "c", {"w": a, "big": np.ones(300_000, np.float32)}, layout="files")
    assert json.loads((tmp_path / "c" / io.VARSTORE_METADATA).read_text())["hash"] == "crc32"
    assert io.read_entries(tmp_path / "c")["w"].checksum.startswith("crc32:")
    np.testing.assert_array_equal(io.read_numpy(tmp_path / "c", "w"), a)
    with pytest.raises(CheckpointError, match="xxhash"):
        io.read_numpy(tmp_path / "x", "w")


def test_ocdbt_chunks_get_exact_location_hints(tmp_path):
    # Restores of many small variables pread each chunk at its recorded location; the
    # hints come from TensorStore's dump of the B+tree, whatever order it wrote in.
    rng = np.random.default_rng(0)
    arrays = {f"layer{i // 10}/w{i % 10}": rng.standard_normal(1024).astype(np.float32) for i in range(400)}
    path = tmp_path / "m"
    io.write(path, arrays, layout="ocdbt")
    entries = json.loads((path / io.VARSTORE_METADATA).read_text())["entries"]
    data_files = {}
    for name, value in arrays.items():
        (fname, offset), = entries[name]["ocdbt_locations"].values()
        if fname not in data_files:
            data_files[fname] = (path / "d" / fname).read_bytes()
        assert data_files[fname][offset : offset + value.nbytes] == value.tobytes(), name


def _small_vars(n=300, size=1024):
    rng = np.random.default_rng(1)
    return {f"layer{i // 10}/w{i % 10}": rng.standard_normal(size).astype(np.float32) for i in range(n)}


def test_ocdbt_wrong_location_hints_still_restore_exact_values(tmp_path, monkeypatch):
    # Hints are only hints: chunks read together in one preadv that do not verify are
    # read again through TensorStore, so every value comes back exact.
    from varstore import _ckpt_write

    real = _ckpt_write._record_location

    def shifted(chunk, reference):
        real(chunk, reference)
        if chunk is not None and chunk.loc is not None:
            chunk.loc = (chunk.loc[0], chunk.loc[1] + 8)

    monkeypatch.setattr(_ckpt_write, "_record_location", shifted)
    arrays = _small_vars()
    io.write(tmp_path / "m", arrays, layout="ocdbt")
    monkeypatch.undo()
    got = io.read(tmp_path / "m", {n: (v.shape, v.dtype, None) for n, v in arrays.items()})
    for name, value in arrays.items():
        np.testing.assert_array_equal(np.asarray(got[name]), value, err_msg=name)


def test_ocdbt_damage_inside_a_run_of_small_chunks_names_the_variable(tmp_path):
    arrays = _small_vars()
    path = tmp_path / "m"
    io.write(path, arrays, layout="ocdbt")
    entries = json.loads((path / io.VARSTORE_METADATA).read_text())["entries"]
    (fname, offset), = entries["layer7/w3"]["ocdbt_locations"].values()
    with open(path / "d" / fname, "r+b") as f:
        f.seek(offset + 100)
        byte = f.read(1)
        f.seek(offset + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    targets = {n: (v.shape, v.dtype, None) for n, v in arrays.items()}
    with pytest.raises(CheckpointError, match=r"is damaged: variable 'layer7/w3' fails its checksum"):
        io.read(path, targets)
    del targets["layer7/w3"]  # the others still restore
    got = io.read(path, targets)
    np.testing.assert_array_equal(np.asarray(got["layer7/w4"]), arrays["layer7/w4"])


def test_entry_metadata_is_parsed_once_read_only_and_renewed_by_a_new_save(tmp_path):
    # Restores of thousands of variables reuse the parsed entries; a caller must not be
    # able to change them, and a save over the same path must not see the old ones.
    p = str(tmp_path / "ck")
    io.write(p, {"a": np.zeros(3, np.float32)}).wait()
    first = io.read_entries(p)
    assert io.read_entries(p) is first
    with pytest.raises(TypeError):
        first["b"] = first["a"]  # type: ignore[index]
    io.write(p, {"a": np.zeros(3, np.float32), "b": np.ones(2, np.int32)}).wait()
    second = io.read_entries(p)
    assert second is not first
    assert list(second) == ["a", "b"] and second["b"].shape == (2,)
    assert list(first) == ["a"]
