"""Hostile input: names, state files and checkpoint metadata that try to escape.

* Variable names and Saver checkpoint names with '..', absolute paths, NUL, newlines
  or too many bytes are refused with an error saying why, and nothing is written.
* A save_path with '..' is a path the user chose and works; the names inside a
  checkpoint never leave its directory.
* A `checkpoint` state file naming paths outside its directory is refused by every
  reader, and a Saver that adopts such a file never deletes anything outside.
* Crafted varstore_metadata.json or Orbax _METADATA cannot make a read touch files
  outside the checkpoint.
* Nothing is ever unpickled or evaluated.
"""

import ast
import glob
import json
import os
import pickle
import shutil

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import varstore as vs
import varstore.inspect_checkpoint

from _helpers import sealed

BAD_NAMES = {
    "dotdot": "..",
    "dot": ".",
    "dotdot-inside": "a/../b",
    "dotdot-end": "a/..",
    "absolute": "/etc/passwd",
    "trailing-slash": "a/",
    "double-slash": "a//b",
    "empty": "",
    "nul": "a\x00b",
    "newline": "a\nb",
    "carriage-return": "a\rb",
    "space": "a b",
    "backslash": "a\\..\\b",
    "too-long": "x" * 513,
    "too-long-utf8": "\u00e9" * 257,
    "non-ascii": "caf\u00e9",
}


def tree(root):
    """Everything under `root`, as {relative path: bytes or 'dir' or 'link'}."""
    out = {}
    for base, dirs, files in os.walk(root):
        for d in dirs:
            p = os.path.join(base, d)
            out[os.path.relpath(p, root)] = "link" if os.path.islink(p) else "dir"
        for f in files:
            p = os.path.join(base, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "link"
            else:
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, root)] = fh.read()
    return out


def store_with(**values):
    return vs.VarStore({k.replace("__", "/"): jnp.asarray(v) for k, v in values.items()})


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_variable_name_is_refused_at_declaration(name):
    with pytest.raises(vs.InvalidNameError, match="Invalid variable name") as info:
        vs.Variable(vs.zeros([2]), name=name)
    assert "valid name is" in str(info.value)  # says the rule
    assert vs.global_variables() == []


@pytest.mark.parametrize("name", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_bad_checkpoint_name_in_a_saver_dict_is_refused_and_nothing_written(tmp_path, name):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    before = tree(tmp_path)
    v = vs.Variable(vs.zeros([2]), name="v")
    with pytest.raises(vs.InvalidNameError, match="Invalid checkpoint name"):
        vs.train.Saver({name: v})
    with pytest.raises(vs.VarStoreError):
        vs.train.Saver([name])
    with pytest.raises(vs.VarStoreError):
        vs.VarStore({name: jnp.zeros(2)})
    assert tree(tmp_path) == before


@pytest.mark.parametrize("scope", ["..", "/abs", "a\nb", "a\x00"])
def test_bad_name_scope_is_refused(scope):
    with pytest.raises(vs.InvalidNameError), vs.name_scope(scope):
        vs.Variable(vs.zeros([1]), name="v")


STORAGE_CLASHES = {
    "reserved-orbax-metadata": ["_METADATA"],
    "reserved-our-metadata": ["varstore_metadata.json"],
    "reserved-ocdbt-manifest": ["manifest.ocdbt"],
    "dotted-dir-over-255-bytes": ["a" * 200 + "/" + "b" * 200],
    "same-dotted-dir": ["x.y", "x/y"],
}


@pytest.mark.parametrize("names", list(STORAGE_CLASHES.values()), ids=list(STORAGE_CLASHES))
def test_names_the_storage_cannot_hold_are_refused_and_nothing_written(tmp_path, names):
    """Valid variable names that the Orbax layout cannot store (reserved file names,
    over-long directory names, two names stored in one directory)."""
    directory = tmp_path / "ckpt"
    directory.mkdir()
    before = tree(tmp_path)
    store = vs.VarStore({n: jnp.zeros(2) for n in names})
    with pytest.raises(vs.CheckpointError, match=r"Checkpoint entr(y|ies) .*"):
        vs.train.Saver(names).save(store, str(directory / "model.ckpt"))
    assert tree(tmp_path) == before


def test_refused_names_do_not_create_the_checkpoint_directory(tmp_path):
    store = vs.VarStore({"_METADATA": jnp.zeros(2)})
    with pytest.raises(vs.CheckpointError):
        vs.train.Saver(["_METADATA"]).save(store, str(tmp_path / "new" / "model.ckpt"))
    assert os.listdir(tmp_path) == []


def test_save_path_named_like_the_state_file_is_refused_before_writing(tmp_path):
    store = store_with(v=np.zeros(2, np.float32))
    with pytest.raises(vs.CheckpointError, match="state file"):
        vs.train.Saver(["v"]).save(store, str(tmp_path / "checkpoint"))
    assert os.listdir(tmp_path) == []
    assert vs.train.latest_checkpoint(str(tmp_path)) is None


def test_save_path_with_dotdot_is_a_path_the_user_chose(tmp_path):
    (tmp_path / "a").mkdir()
    store = store_with(layer__w=np.arange(4, dtype=np.float32))
    path = vs.train.Saver(["layer/w"]).save(store, str(tmp_path / "a" / ".." / "b" / "model.ckpt"))
    assert os.path.isdir(tmp_path / "b" / "model.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]
    assert sorted(os.listdir(tmp_path / "b")) == ["checkpoint", "model.ckpt"]
    np.testing.assert_array_equal(vs.train.load_variable(path, "layer/w"), np.arange(4))
    assert vs.train.latest_checkpoint(str(tmp_path / "b")) == str(tmp_path / "b" / "model.ckpt")


def test_names_inside_a_checkpoint_stay_inside_it(tmp_path):
    """Names that look like paths ('...', dotted parts, deep scopes) are stored as
    entries of the checkpoint directory and nowhere else."""
    names = ["...", "a..b/c", "-x/.y/z_", "deep/" * 20 + "leaf", "_METADATAx", "checkpoint"]
    store = vs.VarStore({n: jnp.full(3, i, jnp.int32) for i, n in enumerate(names)})
    before = tree(tmp_path)
    path = vs.train.Saver(names).save(store, str(tmp_path / "model.ckpt"))
    after = tree(tmp_path)
    new = {k for k in after if k not in before}
    assert all(k == "checkpoint" or k.split(os.sep)[0] == "model.ckpt" for k in new), new
    for i, n in enumerate(names):
        np.testing.assert_array_equal(vs.train.load_variable(path, n), np.full(3, i))


# --------------------------------------------------------------------------- state files


def write_state(directory, model, all_paths=()):
    lines = [f"model_checkpoint_path: {json.dumps(model)}"]
    lines += [f"all_model_checkpoint_paths: {json.dumps(p)}" for p in all_paths]
    (directory / "checkpoint").write_text("\n".join(lines) + "\n")


@pytest.fixture
def outside(tmp_path):
    """A genuine checkpoint and a TensorFlow-style prefix outside the checkpoint
    directory `tmp_path/ckpt`, which a hostile state file points at."""
    out = tmp_path / "outside"
    out.mkdir()
    store = store_with(v=np.arange(3, dtype=np.float32))
    vs.train.Saver(["v"]).save(store, str(out / "model.ckpt-1"))
    (out / "victim.index").write_bytes(b"not really")
    (out / "victim.data-00000-of-00001").write_bytes(b"precious")
    (tmp_path / "ckpt").mkdir()
    return out


ESCAPES = {
    "relative": "../outside/model.ckpt-1",
    "relative-deep": "../../../../../../../../etc/passwd",
    "absolute": None,  # filled in: the outside checkpoint's absolute path
    "dot-dot-inside": "sub/../../outside/model.ckpt-1",
    "the-directory-itself": ".",
}


@pytest.mark.parametrize("kind", list(ESCAPES))
def test_state_file_naming_a_path_outside_is_refused_by_every_reader(tmp_path, outside, kind):
    target = ESCAPES[kind] or str(outside / "model.ckpt-1")
    directory = tmp_path / "ckpt"
    write_state(directory, target, [target])
    d = str(directory)
    v = vs.Variable(vs.zeros([3]), name="v")
    readers = {
        "latest_checkpoint": lambda: vs.train.latest_checkpoint(d),
        "Saver.restore": lambda: vs.train.Saver([v]).restore(d),
        "load_variable": lambda: vs.train.load_variable(d, "v"),
        "load_checkpoint": lambda: vs.train.load_checkpoint(d),
        "list_variables": lambda: vs.train.list_variables(d),
        "plan_restore": lambda: vs.train.plan_restore(d),
        "init_from_checkpoint": lambda: vs.train.init_from_checkpoint(d, {"v": v}),
    }
    before = tree(tmp_path)
    for what, read in readers.items():
        with pytest.raises(vs.CheckpointError, match="not inside the checkpoint directory"):
            read()
            pytest.fail(f"{what} followed the state file")
    assert tree(tmp_path) == before


def test_saver_adopting_a_hostile_state_file_never_deletes_outside(tmp_path, outside):
    directory = tmp_path / "ckpt"
    write_state(
        directory,
        "../outside/model.ckpt-1",
        [str(outside / "victim"), "../outside/model.ckpt-1", "/etc/passwd", "../../x"],
    )
    before = tree(outside)
    saver = vs.train.Saver(["v"], max_to_keep=1)
    prefix = str(directory / "model.ckpt")
    for step in (2, 3, 4):
        saver.save(store_with(v=np.full(3, step, np.float32)), prefix, global_step=step)
    assert tree(outside) == before
    state = vs.train.get_checkpoint_state(str(directory))
    assert list(state.all_model_checkpoint_paths) == [f"{prefix}-4"]
    assert sorted(os.listdir(directory)) == ["checkpoint", "model.ckpt-4"]


def test_saver_never_deletes_through_a_symlink_out_of_its_directory(tmp_path, outside):
    directory = tmp_path / "ckpt"
    os.symlink(outside, directory / "link")
    write_state(directory, "link/model.ckpt-1", ["link/model.ckpt-1"])
    before = tree(outside)
    saver = vs.train.Saver(["v"], max_to_keep=1)
    for step in (2, 3):
        saver.save(
            store_with(v=np.full(3, step, np.float32)), str(directory / "m"), global_step=step
        )
    assert tree(outside) == before


def test_saver_adopting_a_tf1_state_file_deletes_old_tf1_checkpoints_inside(tmp_path):
    fixtures = os.path.join(os.path.dirname(__file__), "fixtures", "tf1", "howto")
    directory = tmp_path / "ckpt"
    shutil.copytree(fixtures, directory)  # state file: model.ckpt-2, model.ckpt-3
    names = [n for n, _ in vs.train.list_variables(str(directory / "model.ckpt-3"))]
    store = vs.train.Saver(names).restore(str(directory))
    saver = vs.train.Saver(names, max_to_keep=2)
    saver.save(store, str(directory / "model.ckpt"), global_step=4)
    assert vs.train.checkpoint_exists(str(directory / "model.ckpt-3"))
    left = glob.glob(str(directory / "model.ckpt-2.index")) + glob.glob(
        str(directory / "model.ckpt-2.data-*")
    )
    assert not left, "model.ckpt-2 should be deleted"


# --------------------------------------------------------------------------- metadata


def plain_orbax_checkpoint(path):
    tree_ = {"w": np.arange(6, dtype=np.float32), "sub": {"x": np.ones(2, np.int32)}}
    handler = ocp.PyTreeCheckpointHandler(use_ocdbt=False, use_zarr3=True)
    ocp.Checkpointer(handler).save(str(path), args=ocp.args.PyTreeSave(tree_))


def decoy(tmp_path):
    """A zarr array directory right outside the checkpoint, where an escaping
    parameter name would lead."""
    plain_orbax_checkpoint(tmp_path / "decoy_src")
    shutil.copytree(tmp_path / "decoy_src" / "w", tmp_path / "w")
    shutil.copytree(tmp_path / "decoy_src" / "w", tmp_path, dirs_exist_ok=True)  # for '..'


HOSTILE_KEYS = {
    "parent": [".."],
    "parent-then-name": ["..", "w"],
    "absolute": ["/etc"],
    "absolute-decoy": None,  # filled in: tmp_path/w
    "slash-inside": ["a/../../w"],
    "empty": [""],
    "dot": ["."],
    "nul": ["w\x00"],
}


@pytest.mark.parametrize("kind", list(HOSTILE_KEYS))
def test_crafted_orbax_metadata_cannot_reach_outside(tmp_path, kind):
    ckpt = tmp_path / "ckpt"
    plain_orbax_checkpoint(ckpt)
    decoy(tmp_path)
    keys = HOSTILE_KEYS[kind] or [str(tmp_path / "w")]
    meta = json.loads((ckpt / "_METADATA").read_text())
    meta["tree_metadata"] = {
        str(tuple(keys)): {
            "key_metadata": [{"key": k, "key_type": 2} for k in keys],
            "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": False},
        }
    }
    (ckpt / "_METADATA").write_text(json.dumps(meta))
    before = tree(tmp_path)
    name = "/".join(keys)
    for read in (
        lambda: vs.train.list_variables(str(ckpt)),
        lambda: vs.train.load_variable(str(ckpt), name),
        lambda: vs.train.load_checkpoint(str(ckpt)).get_tensor(name),
        lambda: vs.train.Saver([name]).restore(str(ckpt)),
    ):
        with pytest.raises(vs.VarStoreError):
            read()
    assert tree(tmp_path) == before


OUR_TAMPERING = {
    "name-parent": lambda m, out: m["entries"].update({"../w": m["entries"]["w"]}),
    "name-absolute": lambda m, out: m["entries"].update({out + "/w": m["entries"]["w"]}),
    "dir-parent": lambda m, out: m["entries"]["w"].update({"dir": "../w"}),
    "dir-dotdot": lambda m, out: m["entries"]["w"].update({"dir": ".."}),
    "dir-absolute": lambda m, out: m["entries"]["w"].update({"dir": out + "/abs"}),
    "chunk-key-escape": lambda m, out: m["entries"]["w"].update(
        {"chunks": {"../../w/0": next(iter(m["entries"]["w"]["chunks"].values()))}}
    ),
    "ocdbt-location-escape": lambda m, out: m["entries"]["w"].update(
        {"ocdbt_locations": {"0": ["../../../w/0", 0]}}
    ),
    # Hints of multi-process saves name files under ocdbt.process_<i>/d/.
    "ocdbt-process-location-escape": lambda m, out: m["entries"]["w"].update(
        {"ocdbt_locations": {"0": ["ocdbt.process_0/d/../../../w/0", 0]}}
    ),
    "ocdbt-process-location-absolute": lambda m, out: m["entries"]["w"].update(
        {"ocdbt_locations": {"0": ["ocdbt.process_0/d/" + out + "/w/0", 0]}}
    ),
}


@pytest.mark.parametrize("layout", ["files", "ocdbt"])
@pytest.mark.parametrize("kind", list(OUR_TAMPERING))
def test_crafted_varstore_metadata_cannot_reach_outside(tmp_path, kind, layout):
    from varstore import _ckpt_io

    ckpt = tmp_path / "ckpt"
    values = {"w": np.arange(6, dtype=np.float32), "v": np.ones(40, np.float32)}
    _ckpt_io.write(str(ckpt), values, layout=layout)
    meta = json.loads((ckpt / "varstore_metadata.json").read_text())
    (ckpt / "varstore_metadata.json").write_bytes(sealed(meta))
    np.testing.assert_array_equal(vs.train.load_variable(str(ckpt), "w"), values["w"])
    if layout == "files":
        # Perfect copies of w's data wherever an escaping name or directory would lead,
        # and none inside: a read of w that succeeds has left the checkpoint.
        for where in ("w", ".", "abs", "tmp/w"):
            os.makedirs(tmp_path / where, exist_ok=True)
            shutil.copy(ckpt / "w" / "0", tmp_path / where / "0")
        os.remove(ckpt / "w" / "0")
    OUR_TAMPERING[kind](meta, str(tmp_path))
    (ckpt / "varstore_metadata.json").write_bytes(sealed(meta))
    before = tree(tmp_path)
    for name in sorted(meta["entries"]):
        for read in (
            lambda name=name: vs.train.load_variable(str(ckpt), name),
            lambda name=name: vs.train.load_checkpoint(str(ckpt)).get_tensor(name),
            lambda name=name: vs.train.Saver([name]).restore(str(ckpt))[name],
        ):
            try:
                got = np.asarray(read())
            except vs.VarStoreError:
                continue
            assert layout == "ocdbt" or name == "v", f"{kind}: {name!r} was read from outside"
            # Only a harmless edit may read, and then the checkpoint's own values.
            assert name in values and got.tobytes() == values[name].tobytes(), (kind, name)
    assert tree(tmp_path) == before


# --------------------------------------------------------------------------- no pickle

FORBIDDEN_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "marshal",
    "shelve",
    "joblib",
}
FORBIDDEN_CALLS = {"eval", "exec", "__import__"}


def varstore_sources():
    root = os.path.dirname(vs.__file__)
    files = sorted(glob.glob(os.path.join(root, "*.py")))
    assert len(files) > 10
    return files


def test_varstore_source_never_imports_pickle_nor_evaluates_code():
    problems = []
    for path in varstore_sources():
        with open(path, encoding="utf-8") as f:
            module = ast.parse(f.read(), path)
        for node in ast.walk(module):
            where = f"{os.path.basename(path)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [
                    f"{where} import {a.name}"
                    for a in node.names
                    if a.name.split(".")[0] in FORBIDDEN_MODULES
                ]
            elif isinstance(node, ast.ImportFrom):
                if (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                    problems.append(f"{where} from {node.module} import ...")
            elif isinstance(node, ast.Call):
                fn = node.func
                if isinstance(fn, ast.Name) and fn.id in FORBIDDEN_CALLS:
                    problems.append(f"{where} calls {fn.id}()")
                if (
                    isinstance(fn, ast.Attribute)
                    and fn.attr in ("loads", "load")
                    and (isinstance(fn.value, ast.Name) and fn.value.id in FORBIDDEN_MODULES)
                ):
                    problems.append(f"{where} calls {fn.value.id}.{fn.attr}()")
                for kw in node.keywords:
                    if kw.arg == "allow_pickle" and not (
                        isinstance(kw.value, ast.Constant) and kw.value.value is False
                    ):
                        problems.append(f"{where} passes allow_pickle")
            elif isinstance(node, ast.Name) and node.id in ("eval", "exec"):
                problems.append(f"{where} refers to {node.id}")
    assert problems == []


class _Payload:
    """Unpickling this creates the sentinel file."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({self.sentinel!r}, 'w').close()",))


def test_pickles_inside_a_checkpoint_are_never_executed(tmp_path, capsys):
    sentinel = str(tmp_path / "PWNED")
    payload = pickle.dumps(_Payload(sentinel))
    store = store_with(w=np.arange(4, dtype=np.float32), s__v=np.ones(3, np.int32))
    path = vs.train.Saver(["w", "s/v"]).save(store, str(tmp_path / "ckpt" / "model.ckpt"))
    # Pickles where a loader might look: as extra files, and instead of the files
    # that Orbax or another reader might unpickle.
    for rel in ("_sharding", "model.pkl", "w/0.pkl", "array_metadatas/process_0",
                "_CHECKPOINT_METADATA", "commit_success.txt"):  # fmt: skip
        p = os.path.join(path, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(payload)
    d = str(tmp_path / "ckpt")
    np.testing.assert_array_equal(vs.train.load_variable(path, "w"), np.arange(4))
    vs.train.Saver(["w", "s/v"]).restore(d)
    vs.train.list_variables(d)
    vs.train.plan_restore(path)
    vs.inspect_checkpoint.print_tensors_in_checkpoint_file(path, "", True)
    capsys.readouterr()
    assert not os.path.exists(sentinel)
    # Pickles instead of the data and metadata files: errors, not execution.
    data_files = glob.glob(os.path.join(path, "w", "0")) + glob.glob(os.path.join(path, "d", "*"))
    assert data_files
    for p in [
        *data_files,
        os.path.join(path, "varstore_metadata.json"),
        os.path.join(path, "_METADATA"),
    ]:
        with open(p, "rb") as f:
            original = f.read()
        with open(p, "wb") as f:
            f.write(payload)
        try:  # an error, or (a file our format does not read) the saved values
            restored = vs.train.Saver(["w", "s/v"]).restore(path)
            assert p.endswith("_METADATA"), f"{p} replaced by a pickle was not noticed"
            np.testing.assert_array_equal(restored["w"], np.arange(4))
        except vs.VarStoreError:
            pass
        with open(p, "wb") as f:
            f.write(original)
    # A state file, a TF1 index and a plain Orbax checkpoint made of pickles.
    (tmp_path / "ckpt" / "checkpoint").write_bytes(payload)
    with pytest.raises(vs.CheckpointError):
        vs.train.latest_checkpoint(d)
    tf1 = tmp_path / "tf1"
    tf1.mkdir()
    (tf1 / "model.ckpt.index").write_bytes(payload)
    (tf1 / "model.ckpt.data-00000-of-00001").write_bytes(payload)
    with pytest.raises(vs.CheckpointError):
        vs.train.load_checkpoint(str(tf1 / "model.ckpt"))
    foreign = tmp_path / "foreign"
    plain_orbax_checkpoint(foreign)
    for f in ("_METADATA", "w/zarr.json"):
        (foreign / f).write_bytes(payload)
    with pytest.raises(vs.CheckpointError):
        vs.train.load_variable(str(foreign), "w")
    assert not os.path.exists(sentinel)


@pytest.mark.parametrize(
    "fname, kept",
    [
        ("0123abcd", True),  # under d/
        ("ocdbt.process_3/d/0123abcd", True),  # a multi-process save's database
        ("../w/0", False),
        ("d/../../w", False),
        ("ocdbt.process_0/d/../../../w/0", False),
        ("ocdbt.process_0/../d/0123abcd", False),
        ("ocdbt.process_x/d/0123abcd", False),
        ("/etc/passwd", False),
        ("ocdbt.process_0/d//etc/passwd", False),
    ],
)
def test_chunk_location_hints_only_name_data_files_inside(tmp_path, fname, kept):
    from varstore import _ckpt_io

    ckpt = tmp_path / "ckpt"
    _ckpt_io.write(str(ckpt), {"w": np.arange(6, dtype=np.float32)}, layout="ocdbt")
    meta = json.loads((ckpt / "varstore_metadata.json").read_text())
    meta["entries"]["w"]["ocdbt_locations"] = {"0": [fname, 0]}
    (ckpt / "varstore_metadata.json").write_bytes(sealed(meta))
    locs = _ckpt_io._open_ckpt(str(ckpt)).entries["w"].locs or {}
    assert (locs.get("0") == (fname, 0)) is kept
    np.testing.assert_array_equal(vs.train.load_variable(str(ckpt), "w"), np.arange(6))
