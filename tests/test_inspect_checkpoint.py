"""`vs.inspect_checkpoint`: TensorFlow 1.x's output, line for line.

The expected lines are derived from TensorFlow 1.15's
tensorflow/python/tools/inspect_checkpoint.py: `print("tensor_name: ", key)`
(two spaces), `print(reader.debug_string().decode("utf-8"))` where the C++
debug string is `name (DT_NAME) [d0,d1]\\n` per tensor (hence the blank line),
then `# Total number of params: N`.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import varstore as vs
import varstore.inspect_checkpoint as ic
from varstore._sources import Entry

FIXTURES = Path(__file__).parent / "fixtures" / "tf1"
HOWTO = FIXTURES / "howto" / "model.ckpt-3"


def _damage(checkpoint: str) -> None:
    """Truncates the biggest data file of a checkpoint, whatever its layout."""
    meta = {"_METADATA", "_CHECKPOINT_METADATA", "varstore_metadata.json", "manifest.ocdbt"}
    files = [
        os.path.join(root, f)
        for root, _, names in os.walk(checkpoint)
        for f in names
        if f not in meta and f != "zarr.json"
    ]
    biggest = max(files, key=os.path.getsize)
    os.truncate(biggest, os.path.getsize(biggest) // 2)


def _one_device_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "varstore.inspect_checkpoint", *args],
        capture_output=True,
        text=True,
        env=_one_device_env(),
        timeout=120,
    )


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A small varstore checkpoint (2x3 float32 `v`, int32 scalar `step`), a
    damaged copy, and an Orbax checkpoint sharded over 8 devices."""
    root = tmp_path_factory.mktemp("inspect")
    g = vs.Graph()
    with g.as_default():
        vs.Variable(vs.constant(np.arange(6, dtype=np.float32).reshape(2, 3)), name="v")
        vs.Variable(vs.constant(np.int32(7)), name="step")
        store = vs.initialize_all_variables()(0)
        small = vs.train.Saver().save(store, str(root / "model.ckpt"))
    damaged = str(root / "damaged.ckpt")
    shutil.copytree(small, damaged)
    _damage(damaged)
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("x",))
    sharded = jax.device_put(
        np.arange(32, dtype=np.float32).reshape(8, 4), NamedSharding(mesh, PartitionSpec("x"))
    )
    orbax_path = str(root / "orbax")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(orbax_path, {"enc": {"kernel": sharded}, "count": np.int64(3)})
    ckptr.wait_until_finished()
    return {"small": small, "damaged": damaged, "orbax": orbax_path, "root": str(root)}


@pytest.fixture(scope="module")
def cli(ckpts):
    """Every command-line run of this module, started together (each pays JAX's
    import time, so they overlap on the available cores)."""
    small = ckpts["small"]
    commands = {
        "list": [f"--file_name={small}"],
        "tensor": [f"--file_name={small}", "--tensor_name=v"],
        "printoptions": [
            f"--file_name={small}", "--all_tensors", "--printoptions", "sign=+", "linewidth=12"
        ],
        "unknown_tensor": [f"--file_name={small}", "--tensor_name=vv"],
        "missing": [f"--file_name={ckpts['root']}/nope.ckpt"],
        "no_file_name": [],
        "bad_printoption": [f"--file_name={small}", "--printoptions", "nosuch=1"],
        "damaged": [f"--file_name={ckpts['damaged']}", "--all_tensors"],
        "tf1": [f"--file_name={HOWTO}", "--tensor_name=biases"],
        "orbax_1_device": [f"--file_name={ckpts['orbax']}", "--all_tensors"],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(commands, pool.map(_run, commands.values())))
    return results


# ---------------------------------------------------------------- the function


def test_lists_names_dtypes_and_shapes_like_tensorflow(ckpts, capsys):
    ic.print_tensors_in_checkpoint_file(ckpts["small"], "", False)
    assert capsys.readouterr().out == (
        "step (DT_INT32) []\n"
        "v (DT_FLOAT) [2,3]\n"
        "\n"
        "# Total number of params: 7\n"
    )


def test_prints_one_tensor_like_tensorflow(ckpts, capsys):
    ic.print_tensors_in_checkpoint_file(ckpts["small"], "v", False)
    assert capsys.readouterr().out == (
        "tensor_name:  v\n"
        "[[0. 1. 2.]\n"
        " [3. 4. 5.]]\n"
        "# Total number of params: 7\n"
    )


def test_all_tensor_names_prints_only_names(ckpts, capsys):
    ic.print_tensors_in_checkpoint_file(ckpts["small"], "", False, all_tensor_names=True)
    assert capsys.readouterr().out == (
        "tensor_name:  step\n"
        "tensor_name:  v\n"
        "# Total number of params: 7\n"
    )


def test_all_tensors_prints_names_and_values(ckpts, capsys):
    ic.print_tensors_in_checkpoint_file(ckpts["small"], "", True)
    assert capsys.readouterr().out == (
        "tensor_name:  step\n"
        "7\n"
        "tensor_name:  v\n"
        "[[0. 1. 2.]\n"
        " [3. 4. 5.]]\n"
        "# Total number of params: 7\n"
    )


def test_count_exclude_pattern(ckpts, capsys):
    ic.print_tensors_in_checkpoint_file(ckpts["small"], "", False, count_exclude_pattern="^st")
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "# Excluding 1 tensors (1 params) that match ^st when counting.",
        "# Total number of params: 6",
    ]


def test_unknown_tensor_prints_tensorflows_message_with_close_names(ckpts, capsys):
    assert ic.print_tensors_in_checkpoint_file(ckpts["small"], "vv", False) is None
    assert capsys.readouterr().out == (
        "tensor_name:  vv\nKey vv not found in checkpoint. Did you mean 'v'?\n"
    )


def test_missing_checkpoint_prints_tensorflows_message(tmp_path, capsys):
    ic.print_tensors_in_checkpoint_file(str(tmp_path / "model.ckpt-9"), "", False)
    assert capsys.readouterr().out == (
        "Unsuccessful TensorSliceReader constructor: Failed to find any matching files "
        f"for {tmp_path / 'model.ckpt-9'}\n"
    )


def test_an_index_file_name_gets_tensorflows_prefix_hint(capsys):
    ic.print_tensors_in_checkpoint_file(str(HOWTO) + ".index", "", False)
    out = capsys.readouterr().out.splitlines()
    assert "is not a checkpoint" in out[0]
    assert out[1:] == [
        "",
        "It's likely that this is a V2 checkpoint and you need to provide the filename",
        "*prefix*.  Try removing the '.' and extension.  Try:",
        f"inspect checkpoint --file_name = {HOWTO}",
    ]


def test_tf1_checkpoint_lists_like_tensorflow(capsys):
    ic.print_tensors_in_checkpoint_file(str(HOWTO), "", False)
    assert capsys.readouterr().out == (
        "biases (DT_FLOAT) [8]\n"
        "global_step (DT_INT64) []\n"
        "w2 (DT_FLOAT) [784,8]\n"
        "w_twice (DT_FLOAT) [784,8]\n"
        "weights (DT_FLOAT) [784,8]\n"
        "\n"
        "# Total number of params: 18825\n"
    )


def test_tf1_dtypes_get_tensorflows_enum_names(capsys):
    ic.print_tensors_in_checkpoint_file(str(FIXTURES / "dtypes" / "model.ckpt"), "", False)
    lines = set(capsys.readouterr().out.splitlines())
    for line in [
        "v_bfloat16 (DT_BFLOAT16) [6]",
        "v_float16 (DT_HALF) [7]",
        "v_float64 (DT_DOUBLE) [2,2]",
        "v_complex64 (DT_COMPLEX64) [3]",
        "v_complex128 (DT_COMPLEX128) [1,1]",
        "v_uint64 (DT_UINT64) [3]",
        "v_int8 (DT_INT8) [5]",
        "scalar_bool (DT_BOOL) []",
        "empty_int32_3x0x2 (DT_INT32) [3,0,2]",
    ]:
        assert line in lines


def test_tf1_string_tensor_is_listed_and_its_value_is_not_converted(capsys):
    ic.print_tensors_in_checkpoint_file(str(FIXTURES / "string" / "model.ckpt"), "", True)
    out = capsys.readouterr().out.splitlines()
    assert out[out.index("tensor_name:  vocab") + 1] == "<not convertible to a numpy dtype>"


def test_tf1_partitioned_variable_is_listed_once_with_its_full_shape(capsys):
    ic.print_tensors_in_checkpoint_file(str(FIXTURES / "partitioned" / "model.ckpt"), "", False)
    assert "emb (DT_FLOAT) [200,3]" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize(
    "dtype, name",
    [
        ("float32", "DT_FLOAT"),
        ("float64", "DT_DOUBLE"),
        ("float16", "DT_HALF"),
        ("bfloat16", "DT_BFLOAT16"),
        ("int8", "DT_INT8"),
        ("int16", "DT_INT16"),
        ("int32", "DT_INT32"),
        ("int64", "DT_INT64"),
        ("uint8", "DT_UINT8"),
        ("uint16", "DT_UINT16"),
        ("uint32", "DT_UINT32"),
        ("uint64", "DT_UINT64"),
        ("bool", "DT_BOOL"),
        ("complex64", "DT_COMPLEX64"),
        ("complex128", "DT_COMPLEX128"),
        ("float8_e4m3fn", "DT_FLOAT8_E4M3FN"),
        ("int4", "DT_INT4"),
        ("float8_e3m4", "DT_FLOAT8_E3M4"),  # not a TensorFlow dtype: our spelling
    ],
)
def test_orbax_dtypes_get_tensorflow_names(dtype, name):
    assert ic.tf_dtype_name(Entry("x", (1,), np.dtype(getattr(jax.numpy, dtype)), 1)) == name


# ---------------------------------------------------------------- the command


def test_cli_lists_like_tensorflow(cli):
    r = cli["list"]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == "step (DT_INT32) []\nv (DT_FLOAT) [2,3]\n\n# Total number of params: 7\n"


def test_cli_prints_a_tensor(cli):
    r = cli["tensor"]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == "tensor_name:  v\n[[0. 1. 2.]\n [3. 4. 5.]]\n# Total number of params: 7\n"


def test_cli_applies_printoptions(cli):
    r = cli["printoptions"]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert "tensor_name:  v\n[[+0. +1.\n  +2.]\n [+3. +4.\n  +5.]]\n" in r.stdout


def test_cli_unknown_tensor_exits_2_with_one_line_on_stderr(cli):
    r = cli["unknown_tensor"]
    assert r.returncode == 2, r.stderr
    assert r.stdout == "tensor_name:  vv\n"
    assert r.stderr == "Key vv not found in checkpoint. Did you mean 'v'?\n"


def test_cli_missing_checkpoint_exits_2(cli, ckpts):
    r = cli["missing"]
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr == (
        "Unsuccessful TensorSliceReader constructor: Failed to find any matching files for "
        f"{ckpts['root']}/nope.ckpt. Did you mean 'model.ckpt'?\n"
    )


def test_cli_without_file_name_prints_usage_and_exits_2(cli):
    r = cli["no_file_name"]
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    assert r.stderr.startswith("Usage: inspect_checkpoint --file_name=checkpoint_file_name")


def test_cli_rejects_an_unknown_printoption(cli):
    r = cli["bad_printoption"]
    assert r.returncode == 2, r.stderr
    assert "'nosuch' is not a valid printoption." in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_damaged_checkpoint_exits_2_naming_the_variable(cli):
    r = cli["damaged"]
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert "is damaged: variable '" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_reads_a_tf1_checkpoint(cli):
    expected = json.loads((FIXTURES / "howto" / "model.ckpt-3.expected.json").read_text())
    biases = np.frombuffer(base64.b64decode(expected["tensors"]["biases"]["b64"]), np.float32)
    r = cli["tf1"]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout == f"tensor_name:  biases\n{biases}\n# Total number of params: 18825\n"


def test_cli_reads_an_8_device_orbax_checkpoint_on_1_device(cli):
    r = cli["orbax_1_device"]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    kernel = np.arange(32, dtype=np.float32).reshape(8, 4)
    assert r.stdout == (
        f"tensor_name:  count\n3\ntensor_name:  enc/kernel\n{kernel}\n"
        "# Total number of params: 33\n"
    )
