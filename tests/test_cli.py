"""The `varstore` command (`python -m varstore._cli`), run as a real subprocess on
real checkpoints, and the display and progress helpers it uses."""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import treescope
from click.testing import CliRunner
from jax.sharding import NamedSharding, PartitionSpec

import varstore as vs
from varstore import _display, _progress
from varstore._cli import cli as click_cli

from _helpers import drain

FIXTURES = Path(__file__).parent / "fixtures" / "tf1"
HOWTO = FIXTURES / "howto"


def _one_device_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "varstore._cli", *args],
        capture_output=True,
        text=True,
        env=_one_device_env(),
        timeout=120,
    )


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


def _save(path: str, values: dict, mesh=None) -> str:
    """Saves `values` ({name: array}) with a vs.train.Saver in a graph of their own."""
    g = vs.Graph()
    sharded = mesh is not None
    with g.as_default(), vs.device(PartitionSpec("x"), mesh=mesh) if sharded else vs.device(None):
        for name, value in values.items():
            vs.Variable(vs.constant(value), name=name)
        store = vs.initialize_all_variables()(0)
        return vs.train.Saver().save(store, path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    a_values = {
        "v": np.arange(6, dtype=np.float32).reshape(2, 3),
        "w": np.ones((2, 3), np.float32),
        "b": np.zeros(3, np.float32),
        "old": np.array([1, 2], np.int32),
    }
    b_values = {
        "v": a_values["v"] + np.array([[0, 0, 0.5], [0, 0, 0]], np.float32),
        "w": np.ones((3, 2), np.float32),
        "b": np.zeros(3, np.float16),
        "new": np.arange(4, dtype=np.int32),
    }
    train = root / "train"
    g = vs.Graph()
    with g.as_default():  # a second step through the Saver, so the state file lists both
        for name, value in a_values.items():
            vs.Variable(vs.constant(value), name=name)
        saver = vs.train.Saver()
        store = vs.initialize_all_variables()(0)
        a = saver.save(store, str(train / "model.ckpt"), global_step=1)
        saver.save(store, str(train / "model.ckpt"), global_step=2)
    b = _save(str(root / "other" / "model.ckpt"), b_values)
    leftover = train / "model.ckpt-3.varstore-tmp-0123abcd-999999-ff"
    leftover.mkdir()
    (leftover / "_METADATA").write_text("{}")

    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("x",))
    kernel = np.arange(32.0).reshape(8, 4)
    sharded = _save(str(root / "sharded" / "model.ckpt"), {"kernel": kernel}, mesh)
    orbax_path = str(train / "orbax-7")
    ckptr = ocp.StandardCheckpointer()
    array = jax.device_put(
        np.arange(16, dtype=np.float32).reshape(8, 2), NamedSharding(mesh, PartitionSpec("x"))
    )
    ckptr.save(orbax_path, {"enc": {"kernel": array}})
    ckptr.wait_until_finished()

    damaged = str(root / "damaged.ckpt")
    shutil.copytree(a, damaged)
    _damage(damaged)
    (root / "empty").mkdir()
    return {
        "root": str(root),
        "train": str(train),
        "a": a,
        "b": b,
        "sharded": sharded,
        "orbax": orbax_path,
        "damaged": damaged,
        "empty": str(root / "empty"),
    }


@pytest.fixture(scope="module")
def runs(ckpts):
    """Every subprocess run of this module, started together (each one pays JAX's
    import time, so they overlap on the available cores)."""
    c = ckpts
    commands = {
        "inspect": ["inspect", c["a"]],
        "inspect_json": ["inspect", c["a"], "--json", "--values", "-t", "v", "--tensor", "old"],
        "inspect_sharded": ["inspect", c["sharded"], "--values"],
        "inspect_orbax": ["inspect", c["orbax"], "--values"],
        "inspect_tf1": ["inspect", str(HOWTO), "--tensor", "biases", "--values"],
        "inspect_missing": ["inspect", os.path.join(c["root"], "nope")],
        "inspect_not_ckpt": ["inspect", c["empty"]],
        "inspect_damaged": ["inspect", c["damaged"]],
        "inspect_damaged_values": ["inspect", c["damaged"], "--values"],
        "inspect_unknown": ["inspect", c["a"], "--tensor", "vv"],
        "ls": ["ls", c["train"]],
        "ls_tf1": ["ls", str(HOWTO)],
        "ls_missing": ["ls", os.path.join(c["root"], "nope")],
        "diff_same": ["diff", c["a"], c["a"], "--values"],
        "diff": ["diff", c["a"], c["b"], "--values"],
        "diff_missing": ["diff", c["a"], os.path.join(c["root"], "nope")],
        "plan_ok": ["plan", c["train"], "--like", c["a"]],
        "plan_fail": ["plan", c["a"], "--like", c["b"]],
        "plan_tf1_index": ["plan", str(HOWTO / "model.ckpt-3.index"), "--like", c["a"]],
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(commands, pool.map(_run, commands.values())))


def _ok(r: subprocess.CompletedProcess, code: int = 0) -> list[str]:
    assert (r.returncode, r.stderr) == (code, ""), r.stderr
    return r.stdout.splitlines()


def _failed(r: subprocess.CompletedProcess, command: str) -> str:
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"varstore {command}: error: ")
    return lines[0]


# --------------------------------------------------------------------------- inspect


def test_inspect_prints_a_table_with_totals(runs, ckpts):
    assert _ok(runs["inspect"]) == [
        f"Checkpoint: {ckpts['a']} (varstore checkpoint)",
        "name  shape  dtype    bytes  saved sharding",
        "----  -----  -------  -----  ---------------------------",
        "b     [3]    float32   12 B  SingleDeviceSharding(cpu:0)",
        "old   [2]    int32      8 B  SingleDeviceSharding(cpu:0)",
        "v     [2,3]  float32   24 B  SingleDeviceSharding(cpu:0)",
        "w     [2,3]  float32   24 B  SingleDeviceSharding(cpu:0)",
        "Total: 4 tensors, 17 parameters, 68 B",
    ]


def test_inspect_json_with_values(runs, ckpts):
    doc = json.loads(runs["inspect_json"].stdout)
    assert runs["inspect_json"].returncode == 0
    assert doc["path"] == ckpts["a"] and doc["format"] == "varstore"
    assert [t["name"] for t in doc["tensors"]] == ["v", "old"]
    v = doc["tensors"][0]
    assert [v["shape"], v["dtype"], v["tf_dtype"]] == [[2, 3], "float32", "DT_FLOAT"]
    assert v["nbytes"] == 24
    assert v["value"] == [[0, 1, 2], [3, 4, 5]]
    assert doc["tensors"][1]["value"] == [1, 2]
    assert (doc["total_tensors"], doc["total_parameters"], doc["total_bytes"]) == (2, 8, 32)


def test_inspect_reads_an_8_device_checkpoint_on_1_device(runs):
    out = _ok(runs["inspect_sharded"])
    assert "NamedSharding(mesh=(x=8), spec=('x',))" in out[3]
    kernel = np.arange(32.0, dtype=np.float32).reshape(8, 4)
    assert "\n".join(out[-9:]) == f"kernel [8,4] float32:\n{kernel}"


def test_inspect_reads_a_plain_orbax_checkpoint_saved_on_8_devices(runs, ckpts):
    out = _ok(runs["inspect_orbax"])
    assert out[0] == f"Checkpoint: {ckpts['orbax']} (Orbax checkpoint)"
    assert out[3].split()[:4] == ["enc/kernel", "[8,2]", "float32", "64"]
    kernel = np.arange(16.0, dtype=np.float32).reshape(8, 2)
    assert "\n".join(out[-9:]) == f"enc/kernel [8,2] float32:\n{kernel}"


def test_inspect_reads_a_tf1_checkpoint_directory(runs):
    expected = json.loads((HOWTO / "model.ckpt-3.expected.json").read_text())["tensors"]["biases"]
    biases = np.frombuffer(base64.b64decode(expected["b64"]), np.float32)
    out = _ok(runs["inspect_tf1"])
    assert out[0] == f"Checkpoint: {HOWTO / 'model.ckpt-3'} (TensorFlow 1.x checkpoint)"
    assert out[3].split() == ["biases", "[8]", "float32", "32", "B", "-"]
    assert out[-2:] == ["biases [8] float32:", str(biases)]


def test_inspect_missing_path(runs, ckpts):
    line = _failed(runs["inspect_missing"], "inspect")
    assert f"Checkpoint '{ckpts['root']}/nope' does not exist" in line


def test_inspect_not_a_checkpoint(runs):
    assert "not a checkpoint" in _failed(runs["inspect_not_ckpt"], "inspect")


def test_inspect_damaged_checkpoint_lists_metadata_but_fails_on_values(runs):
    assert _ok(runs["inspect_damaged"])[-1] == "Total: 4 tensors, 17 parameters, 68 B"
    r = runs["inspect_damaged_values"]
    assert r.returncode == 2
    (line,) = r.stderr.splitlines()
    assert line.startswith("varstore inspect: error: ")
    assert "is damaged: variable '" in line


def test_inspect_unknown_tensor_suggests_close_names(runs):
    line = _failed(runs["inspect_unknown"], "inspect")
    assert "Tensor 'vv' is not in checkpoint" in line and "Did you mean 'v'?" in line


_HEAVY = ("jax", "jaxlib", "tensorstore", "orbax.checkpoint", "flax")

_REPORT_IMPORTS = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
print("EXIT", code, "HEAVY", sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize(
    "module, args",
    [
        ("varstore._cli", ["inspect", "{a}"]),
        ("varstore._cli", ["inspect", "{a}", "--json"]),
        ("varstore._cli", ["ls", "{train}"]),
        ("varstore._cli", ["diff", "{a}", "{b}"]),
        ("varstore._cli", ["plan", "{a}", "--like", "{b}"]),
        ("varstore._cli", ["inspect", str(HOWTO)]),
        ("varstore.inspect_checkpoint", ["--file_name={a}"]),
    ],
)
def test_metadata_commands_never_import_jax(ckpts, module, args):
    # What keeps `varstore inspect` under a second: answering from metadata never pays
    # the import of JAX, tensorstore or Orbax (about a second on a small machine).
    r = subprocess.run(
        [sys.executable, "-c", _REPORT_IMPORTS.format(heavy=_HEAVY), module]
        + [a.format(**ckpts) for a in args],
        capture_output=True,
        text=True,
        env=_one_device_env(),
        timeout=120,
    )
    assert r.stdout.splitlines()[-1] in ("EXIT 0 HEAVY []", "EXIT 1 HEAVY []"), r.stderr


def test_import_varstore_is_lazy_but_complete():
    code = (
        "import sys, varstore as vs\n"
        "print('jax' in sys.modules)\n"
        "missing = [n for n in vs.__all__ if not hasattr(vs, n)]\n"
        "print(missing, 'jax' in sys.modules, set(vs.__all__) <= set(dir(vs)))\n"
        "from varstore import *\n"
        "print(Variable is vs.Variable, train.Saver is vs.train.Saver)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        env=_one_device_env(), timeout=120,
    )
    assert r.stdout.splitlines() == ["False", "[] True True", "True True"], r.stderr
    with pytest.raises(AttributeError, match="has no attribute 'Varaible'"):
        vs.Varaible  # noqa: B018


# --------------------------------------------------------------------------- ls

_ROW = re.compile(
    r"^(?P<mark>[* ]) (?P<name>\S+)\s+(?P<kind>\S+)\s+(?P<step>\S+)\s+"
    r"(?P<saved>\S+ \S+|-)\s+(?P<size>\S+ \S+|-)\s+(?P<status>.+)$"
)


def _ls_rows(lines):
    return {m["name"]: m for m in map(_ROW.match, lines[2:]) if m}


def test_ls_lists_steps_times_sizes_status_and_latest(runs):
    out = _ok(runs["ls"])
    assert out[0].split() == ["name", "kind", "step", "saved", "size", "status"]
    rows = _ls_rows(out)
    assert list(rows) == [
        "model.ckpt-1",
        "model.ckpt-2",
        "model.ckpt-3.varstore-tmp-0123abcd-999999-ff",
        "orbax-7",
    ]
    assert [(r["kind"], r["step"], r["status"]) for r in rows.values()] == [
        ("varstore", "1", "complete"),
        ("varstore", "2", "complete"),
        ("?", "3", "incomplete"),
        ("orbax", "7", "complete"),
    ]
    assert [r["mark"] for r in rows.values()] == [" ", "*", " ", " "]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows["model.ckpt-1"]["saved"])
    assert rows["model.ckpt-1"]["size"].endswith(("B", "KiB"))
    assert out[-2:] == ["latest: model.ckpt-2 (the 'checkpoint' state file)", "1 not complete"]


def test_ls_tf1_directory(runs):
    rows = _ls_rows(_ok(runs["ls_tf1"]))
    assert [(n, r["kind"], r["step"], r["status"], r["mark"]) for n, r in rows.items()] == [
        ("model.ckpt-2", "tf1", "2", "complete", " "),
        ("model.ckpt-3", "tf1", "3", "complete", "*"),
    ]


def test_ls_missing_directory(runs):
    assert "does not exist" in _failed(runs["ls_missing"], "ls")


def _invoke(*args):
    return CliRunner().invoke(click_cli, [*args], prog_name="varstore")


def test_ls_shows_a_missing_latest_checkpoint_and_names_none(ckpts, tmp_path):
    shutil.copytree(ckpts["a"], tmp_path / "model.ckpt-1")
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-9"\n'
        'all_model_checkpoint_paths: "model.ckpt-1"\n'
        'all_model_checkpoint_paths: "model.ckpt-9"\n'
    )
    r = _invoke("ls", str(tmp_path))
    assert (r.exit_code, r.stderr) == (0, "")
    rows = _ls_rows(r.stdout.splitlines())
    assert [(n, m["status"], m["mark"]) for n, m in rows.items()] == [
        ("model.ckpt-1", "complete", " "),
        ("model.ckpt-9", "missing", " "),
    ]
    assert r.stdout.splitlines()[-2:] == [
        "latest: none (the 'checkpoint' state file names model.ckpt-9, which is missing)",
        "1 not complete",
    ]


def test_ls_warns_about_a_corrupt_state_file_and_still_lists(ckpts, tmp_path):
    shutil.copytree(ckpts["a"], tmp_path / "model.ckpt-1")
    (tmp_path / "checkpoint").write_text("garbage {{")
    r = _invoke("ls", str(tmp_path))
    assert r.exit_code == 0
    assert r.stderr.startswith("varstore ls: warning: Checkpoint state file")
    assert "latest: model.ckpt-1 (highest step: the state file is unreadable)" in r.stdout


def test_ls_lists_tf1_data_without_its_index_as_incomplete(tmp_path):
    for f in (HOWTO / "model.ckpt-3.data-00000-of-00001", HOWTO / "model.ckpt-2.index"):
        shutil.copy(f, tmp_path)
    rows = _ls_rows(_invoke("ls", str(tmp_path)).stdout.splitlines())
    assert {n: m["status"] for n, m in rows.items()} == {
        "model.ckpt-2": "incomplete",  # its data file is missing
        "model.ckpt-3": "incomplete",  # its index is missing
    }


def test_ls_of_a_checkpoint_points_to_inspect(ckpts):
    r = _invoke("ls", ckpts["a"])
    assert r.exit_code == 2
    assert "is a checkpoint, not a directory of checkpoints" in r.stderr


# --------------------------------------------------------------------------- diff


def test_diff_without_values_compares_metadata_only(ckpts, tmp_path):
    r = _invoke("diff", ckpts["a"], ckpts["damaged"])  # damaged data, same metadata
    assert r.exit_code == 0
    assert r.stdout.splitlines()[-2:] == [
        "No differences in names, shapes or dtypes (4 variables).",
        "Values were not compared; pass --values to compare them.",
    ]


def test_diff_identical_checkpoints_exits_0(runs, ckpts):
    assert _ok(runs["diff_same"]) == [
        f"--- A: {ckpts['a']}",
        f"+++ B: {ckpts['a']}",
        "No differences in names, shapes, dtypes or values (4 variables).",
    ]


def test_diff_reports_each_kind_of_difference_and_exits_1(runs, ckpts):
    assert _ok(runs["diff"], code=1) == [
        f"--- A: {ckpts['a']}",
        f"+++ B: {ckpts['b']}",
        "added          new  [4] int32",
        "removed        old  [2] int32",
        "reshaped       w    [2,3] -> [3,2]",
        "dtype changed  b    float32 -> float16",
        "changed        v    max |A-B| = 0.5",
        "5 differences: 1 added, 1 removed, 1 reshaped, 1 dtype changed, 1 changed",
    ]


def test_diff_missing_checkpoint_exits_2(runs):
    assert "does not exist" in _failed(runs["diff_missing"], "diff")


# --------------------------------------------------------------------------- plan


def test_plan_of_a_matching_checkpoint_exits_0(runs, ckpts):
    out = _ok(runs["plan_ok"])
    latest = os.path.join(ckpts["train"], "model.ckpt-2")
    assert out[0] == f"Variables of {ckpts['a']} (4), restored from {latest}:"
    assert "  restores 4 variable(s), 68 bytes to read" in out
    assert out[-1] == "The restore would succeed."


def test_plan_reports_missing_mismatches_and_casts_and_exits_1(runs):
    out = _ok(runs["plan_fail"], code=1)
    text = "\n".join(out)
    assert "  casts 1:\n    b: float32 -> float16" in text
    assert "  shape mismatches 1:\n    w: declared [3,2], saved [2,3]" in text
    assert "  missing from the checkpoint 1:\n    new" in text
    assert "  checkpoint entries not read 1:\n    old" in text
    assert out[-1] == "The restore would fail: 1 missing, 1 shape mismatches."


def test_plan_of_a_tf1_index_file_points_to_the_prefix(runs):
    line = _failed(runs["plan_tf1_index"], "plan")
    assert line.endswith(f"; pass the checkpoint prefix: {HOWTO / 'model.ckpt-3'}")


# --------------------------------------------------------------------------- usage (in process)


@pytest.mark.parametrize("command", [[], ["inspect"], ["ls"], ["diff"], ["plan"]])
def test_every_command_has_help(command):
    r = CliRunner().invoke(click_cli, [*command, "--help"], prog_name="varstore")
    assert r.exit_code == 0
    assert r.output.startswith(f"Usage: {' '.join(['varstore', *command])} ")


def test_usage_errors_exit_2():
    r = CliRunner().invoke(click_cli, ["plan", "somewhere"], prog_name="varstore")
    assert r.exit_code == 2
    assert "Missing option '--like'" in r.output


# --------------------------------------------------------------------------- display helpers


def test_format_table_aligns_columns():
    assert _display.format_table(("a", "n"), [["xyz", "1"], ["b", "100"]], frozenset({1})) == [
        "a      n",
        "---  ---",
        "xyz    1",
        "b    100",
    ]


@pytest.mark.parametrize(
    "n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (2 << 30, "2.0 GiB")]
)
def test_human_bytes(n, text):
    assert _display.human_bytes(n) == text


def test_store_table_truncates_and_totals():
    store = vs.VarStore({f"v{i:02d}": jnp.zeros((2, 3)) for i in range(25)})
    lines = _display.store_table(store, max_rows=20).splitlines()
    assert lines[0].split() == ["name", "shape", "dtype", "placement", "bytes"]
    assert lines[2].split() == ["v00", "[2,3]", "float32", "CPU:0", "24", "B"]
    assert lines[-2:] == ["... 5 more", "Total: 25 variables, 150 parameters, 600 B"]


def test_store_repr_is_one_line_for_small_stores_and_a_table_for_large_ones():
    small = vs.VarStore({"b": jnp.zeros(3), "w": jnp.zeros((2, 3))})
    assert _display.store_repr(small) == "VarStore({b: [3] float32, w: [2, 3] float32})"
    large = vs.VarStore({f"v{i:02d}": jnp.zeros(4) for i in range(30)})
    lines = _display.store_repr(large).splitlines()
    assert lines[0] == "VarStore(30 variables, 120 parameters, 480 B):"
    assert len(lines) == 1 + 2 + 20 + 1 and lines[-1] == "  ... 10 more"


def test_store_html_uses_treescope_and_falls_back_to_a_table(monkeypatch):
    store = vs.VarStore({"layer/w": jnp.zeros((2, 3))})
    assert "treescope" in _display.store_html(store)
    text = treescope.render_to_text(_display._TreescopeView(store))
    assert text.startswith("VarStore({\n  'layer/w': # jax.Array float32(2, 3)")
    monkeypatch.setitem(sys.modules, "treescope", None)  # as if not installed
    html = _display.store_html(store)
    assert html.startswith("<div><p>VarStore: 1 variables, 6 parameters, 24 B</p><table>")
    assert "<td>layer/w</td><td>[2,3]</td><td>float32</td><td>CPU:0</td><td>24 B</td>" in html


# --------------------------------------------------------------------------- progress


def test_progress_is_a_no_op_off_a_terminal():
    stream = io.StringIO()
    with _progress.progress(1 << 40, 3, "Saving", stream=stream) as p:
        p.advance(1 << 39, 1)
    assert stream.getvalue() == ""


@pytest.fixture
def terminal():
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w")
    yield master, stream
    stream.close()
    os.close(master)


def test_progress_draws_bytes_variables_and_rates_on_a_terminal(terminal):
    master, stream = terminal
    with _progress.progress(1 << 30, 4, "Saving model", stream=stream) as p:
        for _ in range(4):
            p.advance(1 << 28, 1)
            time.sleep(0.01)
    stream.flush()
    last = drain(master).strip().split("\r")[-1]
    assert "Saving model" in last and "100%" in last
    assert "1.0/1.0 GiB" in last and "/s" in last and "4/4 vars" in last


def test_progress_respects_the_threshold_and_the_switch(terminal, monkeypatch):
    master, stream = terminal
    assert not _progress.enabled(vs.config.progress_threshold_bytes, stream)
    assert _progress.enabled(vs.config.progress_threshold_bytes + 1, stream)
    monkeypatch.setattr(vs.config, "progress", False)
    assert not _progress.enabled(1 << 40, stream)
    with _progress.progress(1 << 40, 1, "Saving", stream=stream) as p:
        p.advance(1 << 40, 1)
    stream.flush()
    assert drain(master) == ""


def test_a_second_concurrent_progress_is_silent(terminal):
    master, stream = terminal
    with _progress.progress(1 << 30, 1, "outer", stream=stream):
        with _progress.progress(1 << 30, 1, "inner", stream=stream) as inner:
            assert inner is _progress._NO_PROGRESS
    stream.flush()
    assert "inner" not in drain(master)


def test_convert_writes_a_tf1_checkpoint_as_a_varstore_one_bit_for_bit(tmp_path):
    import orbax.checkpoint as ocp

    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "tf1")
    out = tmp_path / "converted"
    done = subprocess.run(
        [sys.executable, "-m", "varstore._cli", "convert", os.path.join(fixtures, "howto"), str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    path = str(out / "model.ckpt-3")  # the step comes from the TF prefix
    assert "converted 5 tensors" in done.stdout and path in done.stdout
    assert vs.train.latest_checkpoint(str(out)) == path
    tf_prefix = os.path.join(fixtures, "howto", "model.ckpt-3")
    for name, _ in vs.train.list_variables(tf_prefix):
        want = vs.train.load_variable(tf_prefix, name)
        got = vs.train.load_variable(path, name)
        assert got.dtype == want.dtype and np.array_equal(got, want), name
    tree = ocp.StandardCheckpointer().restore(path)
    np.testing.assert_array_equal(tree["weights"], vs.train.load_variable(tf_prefix, "weights"))


def test_convert_leaves_out_strings_and_fails_cleanly_on_a_missing_source(tmp_path):
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "tf1")
    done = subprocess.run(
        [sys.executable, "-m", "varstore._cli", "convert",
         os.path.join(fixtures, "string", "model.ckpt"), str(tmp_path / "a")],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "left out: vocab (string" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "varstore._cli", "convert", str(tmp_path / "nope"), str(tmp_path / "b")],
        capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("varstore convert: error:") and "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "b").exists()
