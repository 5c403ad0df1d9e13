"""Several JAX processes on loopback (`python -m varstore.launch`): sharded initialization,
multi-process save, restore with other process counts, and the failures that must not hang.

Each test starts real processes (2 CPU devices each) and compares what they hold, shard by
shard, with a single-process computation in this process.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import varstore as vs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the scripts and the single-process reference: shapes that every mesh used
# here (2x2, 4x2, 1x8 devices as (data, model)) divides.
DECLARE = """
def declare():
    with vs.device(rules):
        for i, (a, b) in enumerate([(16, 8), (8, 4)]):
            with vs.name_scope(f"layer{i}"):
                vs.Variable(vs.glorot_uniform([a, b]), name="kernel")
                vs.Variable(vs.random_normal([b]), name="bias")
        vs.Variable(vs.random_uniform([8, 6]), name="rows")
        vs.Variable(vs.zeros([], "int32"), name="global_step")
"""

SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import numpy as np
    import varstore as vs
    vs.distributed.initialize()
    import jax
    from jax.sharding import PartitionSpec as P

    mode, out = sys.argv[1], sys.argv[2]
    pid, nproc = jax.process_index(), jax.process_count()
    mesh = jax.make_mesh((jax.device_count() // 2, 2), ("data", "model"), devices=jax.devices())
    rules = vs.sharding_rules(
        [(r".*/kernel", P("data", "model")), (r".*/bias", P()), (r"rows", P("data")),
         (r"global_step", P())],
        mesh=mesh,
    )
    """
) + DECLARE + textwrap.dedent(
    """
    declare()
    saver = vs.train.Saver()
    ckpt = os.path.join(out, "ckpt", "model.ckpt")

    def dump(store, tag):
        index = {}
        for v in vs.global_variables():
            for s in store[v].addressable_shards:
                f = f"{tag}-{pid}-{v.name.replace('/', '.')}-{s.device.id}.npy"
                np.save(os.path.join(out, f), np.asarray(s.data))
                region = [list(sl.indices(n)[:2]) for sl, n in zip(s.index, store[v].shape)]
                index.setdefault(v.name, []).append([region, f])
        with open(os.path.join(out, f"{tag}-{pid}.json"), "w") as fh:
            json.dump(index, fh)

    if mode == "init_save":
        store = vs.initialize_all_variables()(jax.random.key(7))
        dump(store, "init")
        print("saved", saver.save(store, ckpt, global_step=5))
        # The other layout (a file per chunk), chosen explicitly.
        from varstore import _ckpt_io
        values = {v.name: store[v] for v in vs.global_variables()}
        _ckpt_io.write(os.path.join(out, "files_layout"), values, layout="files").wait()
        # A background save: every process returns at once, then waits for the commit.
        background = vs.train.Saver()
        background.save(store, os.path.join(out, "async", "model.ckpt"), global_step=1, blocking=False)
        background.wait_until_finished()
        # A value made separately in each process is not one global array: refused everywhere.
        local = vs.VarStore({**store.to_dict(), "global_step": jax.device_put(np.int32(pid), jax.local_devices()[0])})
        try:
            saver.save(local, ckpt, global_step=6)
        except vs.CheckpointError as e:
            print("refused:", e)
        assert not os.path.exists(ckpt + "-6")
        print("latest", vs.train.latest_checkpoint(os.path.dirname(ckpt)))
    elif mode == "restore":  # argv[3], if given: another checkpoint (a TF1 prefix)
        store = saver.restore(sys.argv[3] if len(sys.argv) > 3 else ckpt + "-5")
        dump(store, f"restore{nproc}")
        print("restored")
    elif mode == "alone":  # the common mistake: only process 0 saves / restores
        store = vs.initialize_all_variables()(jax.random.key(7))
        if pid == 0:
            if sys.argv[3] == "save":
                saver.save(store, ckpt)
            elif sys.argv[3] == "init_from_checkpoint":
                vs.train.init_from_checkpoint(ckpt + "-5", {"layer0/": "layer0/"}, store)
            else:
                saver.restore(ckpt + "-5")
        time.sleep(120)
    elif mode == "mixed_layouts":  # a programming error: refused alike everywhere
        from varstore import _ckpt_io
        store = vs.initialize_all_variables()(jax.random.key(7))
        values = {v.name: store[v] for v in vs.global_variables()}
        try:
            _ckpt_io.write(os.path.join(out, "mixed"), values, layout="files" if pid == 0 else "ocdbt")
        except vs.CheckpointError as e:
            print("refused:", e)
        assert not os.path.exists(os.path.join(out, "mixed"))
    elif mode == "killed":
        store = vs.initialize_all_variables()(jax.random.key(7))
        if pid == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        saver.save(store, ckpt + "-killed")
        time.sleep(120)
    """
)


def launch(tmp_path, n, mode, *extra, timeout=120, env=None):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "VARSTORE_BARRIER_TIMEOUT": "4", **(env or {})}
    env.pop("XLA_FLAGS", None)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "varstore.launch", "-n", str(n), "--devices-per-process",
         str(8 // n if mode == "restore" else 2), "--heartbeat-timeout", "5",
         str(script), mode, str(tmp_path), *extra],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    return r, time.monotonic() - t0


def reference(key=7) -> dict[str, np.ndarray]:
    """The full arrays a single unsharded process initializes with the same key."""
    ns = {"vs": vs, "rules": None}
    exec(DECLARE, ns)
    vs.reset_default_graph()
    ns["declare"]()
    store = vs.initialize_all_variables()(jax.random.key(key))
    return {v.name: np.asarray(store[v]) for v in vs.global_variables()}


def check_shards(tmp_path, tag, nproc, expected):
    seen = {}
    for pid in range(nproc):
        index = json.loads((tmp_path / f"{tag}-{pid}.json").read_text())
        for name, shards in index.items():
            for region, f in shards:
                got = np.load(tmp_path / f)
                want = expected[name][tuple(slice(a, b) for a, b in region)]
                np.testing.assert_array_equal(got, want, err_msg=f"{tag} {name} {region}")
                seen.setdefault(name, 0)
                seen[name] += 1
    assert sorted(seen) == sorted(expected)
    return seen


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One 2-process x 2-device run: initialize, dump every shard, save."""
    tmp_path = tmp_path_factory.mktemp("mp")
    r, _ = launch(tmp_path, 2, "init_save")
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp_path, r.stdout


def test_two_processes_initialize_the_single_process_values_shard_by_shard(saved):
    tmp_path, _ = saved
    seen = check_shards(tmp_path, "init", 2, reference())
    assert seen["layer0/kernel"] == 4  # one shard per device of the 2x2 mesh


def test_two_processes_save_one_checkpoint_that_plain_readers_read(saved):
    tmp_path, out = saved
    path = tmp_path / "ckpt" / "model.ckpt-5"
    assert f"[0] saved {path}" in out and f"[1] saved {path}" in out
    expected = reference()
    for name, want in expected.items():
        np.testing.assert_array_equal(vs.train.load_variable(str(path), name), want)
    assert not [n for n in os.listdir(path) if n.startswith("varstore_chunks")]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoint", "model.ckpt-5"]
    # Every process learnt of the commit (and the state file) before save returned.
    assert out.count(f"latest {path}") == 2


def _layout(path) -> tuple[str, list]:
    raw = (path / "varstore_metadata.json").read_text()
    meta = json.loads(raw[: raw.rindex(',"metadata_checksum"')] + "}")
    hints = [loc for e in meta["entries"].values() for loc in e.get("ocdbt_locations", {}).values()]
    return meta["layout"], hints


def test_small_variables_go_into_one_ocdbt_database_per_process_that_orbax_reads(saved):
    import orbax.checkpoint as ocp

    tmp_path, _ = saved
    path = tmp_path / "ckpt" / "model.ckpt-5"
    layout, hints = _layout(path)
    assert layout == "ocdbt"
    assert sorted(n for n in os.listdir(path) if n.startswith("ocdbt.process_")) == [
        "ocdbt.process_0", "ocdbt.process_1"
    ]
    # The root B+tree refers to both processes' data files; the read hints point there.
    assert {h[0].split("/")[0] for h in hints} == {"ocdbt.process_0", "ocdbt.process_1"}
    restored = ocp.StandardCheckpointer().restore(str(path))
    expected = reference()
    for name, want in expected.items():
        got = restored
        for part in name.split("/"):
            got = got[part]
        np.testing.assert_array_equal(np.asarray(got), want)


def test_a_background_save_from_two_processes_commits_one_checkpoint(saved):
    tmp_path, _ = saved
    path = tmp_path / "async" / "model.ckpt-1"
    assert _layout(path)[0] == "ocdbt"
    assert vs.train.latest_checkpoint(str(tmp_path / "async")) == str(path)
    for name, want in reference().items():
        np.testing.assert_array_equal(vs.train.load_variable(str(path), name), want)


def test_the_files_layout_is_still_written_when_asked_for(saved):
    tmp_path, _ = saved
    path = tmp_path / "files_layout"
    assert _layout(path)[0] == "files"
    assert not [n for n in os.listdir(path) if n.startswith("ocdbt")]
    for name, want in reference().items():
        np.testing.assert_array_equal(vs.train.load_variable(str(path), name), want)


def test_a_process_local_value_is_refused_in_every_process(saved):
    _, out = saved
    refused = [line for line in out.splitlines() if "refused:" in line]
    assert len(refused) == 2
    assert all("'global_step' is not the same global array in every process" in r for r in refused)


def test_restore_in_one_process_with_eight_devices(saved):
    tmp_path, _ = saved
    r, _ = launch(tmp_path, 1, "restore")
    assert r.returncode == 0, r.stdout + r.stderr
    seen = check_shards(tmp_path, "restore1", 1, reference())
    assert seen["layer0/kernel"] == 8


def test_restore_in_four_processes(saved):
    tmp_path, _ = saved
    r, _ = launch(tmp_path, 4, "restore", timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = check_shards(tmp_path, "restore4", 4, reference())
    assert seen["layer0/kernel"] == 8


@pytest.mark.parametrize("what", ["save", "restore", "init_from_checkpoint"])
def test_save_or_restore_in_one_process_only_fails_fast(tmp_path, what):
    r, elapsed = launch(tmp_path, 2, "alone", what)
    assert r.returncode != 0
    assert elapsed < 60
    assert "CheckpointError" in r.stdout
    assert "not every JAX process got there within 4 s" in r.stdout
    assert "VARSTORE_BARRIER_TIMEOUT" in r.stdout


def test_processes_asking_for_different_layouts_are_refused_alike(tmp_path):
    r, _ = launch(tmp_path, 2, "mixed_layouts")
    assert r.returncode == 0, r.stdout + r.stderr
    refused = [line for line in r.stdout.splitlines() if "refused:" in line]
    assert len(refused) == 2
    assert all("in different layouts: process 0 as 'files', process 1 as 'ocdbt'" in x for x in refused)


def test_a_killed_process_ends_the_others(tmp_path):
    r, elapsed = launch(tmp_path, 2, "killed")
    assert r.returncode != 0
    assert elapsed < 60  # well within the heartbeat bound, not minutes
    assert not os.path.exists(tmp_path / "ckpt" / "model.ckpt-killed")


TF1_WRITER = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    tf1 = tf.compat.v1
    tf1.disable_eager_execution()
    values = np.load(sys.argv[1])
    with tf1.Graph().as_default():
        for name in values.files:
            tf1.Variable(values[name], name=name)
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            tf1.train.Saver().save(sess, sys.argv[2], write_meta_graph=False)
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None,
    reason="writing a TensorFlow 1.x checkpoint needs tensorflow-cpu",
)
def test_two_processes_restore_a_tensorflow_checkpoint_shard_by_shard(tmp_path):
    expected = reference()
    np.savez(tmp_path / "values.npz", **expected)
    (tmp_path / "tf1_writer.py").write_text(TF1_WRITER)
    prefix = tmp_path / "tf1" / "model.ckpt"
    w = subprocess.run(
        [sys.executable, str(tmp_path / "tf1_writer.py"), str(tmp_path / "values.npz"), str(prefix)],
        capture_output=True, text=True, timeout=300,
    )
    assert w.returncode == 0, w.stdout + w.stderr
    r, _ = launch(tmp_path, 2, "restore", str(prefix))
    assert r.returncode == 0, r.stdout + r.stderr
    seen = check_shards(tmp_path, "restore2", 2, expected)
    assert seen["layer0/kernel"] == 8  # one shard per device of the 4x2 mesh
