"""Progress bars of real saves and restores: drawn on a terminal above the threshold,
silent when stderr is not a terminal."""

import io
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs
from varstore import _ckpt_io

from _helpers import drain


@pytest.fixture
def store():
    return vs.VarStore({f"layer{i}/w": jnp.full((64, 1024), i, jnp.float32) for i in range(3)})


@pytest.fixture
def terminal(monkeypatch):
    """A pty; `attach()` (called in the test: pytest sets its own sys.stderr after
    fixtures) makes it stderr."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w")
    monkeypatch.setattr(vs.config, "progress_threshold_bytes", 1000)

    def attach():
        monkeypatch.setattr(sys, "stderr", stream)
        monkeypatch.setenv("COLUMNS", "300")  # rich's width: room for the whole path
        return master, stream

    yield attach
    monkeypatch.undo()
    stream.close()
    os.close(master)


@pytest.mark.parametrize("layout", ["files", "ocdbt"])
def test_save_and_restore_draw_progress_on_a_terminal(tmp_path, store, terminal, layout):
    master, stream = terminal()
    path = tmp_path / "c"
    _ckpt_io.write(path, store.to_dict(), layout=layout)
    stream.flush()
    last = drain(master).strip().split("\r")[-1]
    assert f"Saving {path}" in last and "100%" in last and "3/3 vars" in last
    assert "768.0/768.0 KiB" in last
    targets = {n: ((64, 1024), np.float32, None) for n in store.to_dict()}
    got = _ckpt_io.read(path, targets)
    stream.flush()
    last = drain(master).strip().split("\r")[-1]
    assert f"Restoring {path}" in last and "100%" in last and "3/3 vars" in last
    np.testing.assert_array_equal(got["layer2/w"], np.full((64, 1024), 2, np.float32))


def test_sharded_saver_round_trip_counts_every_variable(tmp_path, terminal):
    master, stream = terminal()
    mesh = jax.make_mesh((4, 2), ("a", "b"), devices=jax.devices()[:8])
    with vs.device(jax.sharding.PartitionSpec("a", "b"), mesh=mesh):
        v = vs.Variable(vs.ones([256, 512]), name="w")
    vs.Variable(vs.zeros([0]), name="empty")
    saver = vs.train.Saver()
    store = vs.initialize_all_variables()(jax.random.key(0))
    path = saver.save(store, str(tmp_path / "m.ckpt"))
    stream.flush()
    assert "2/2 vars" in drain(master).strip().split("\r")[-1]
    restored = saver.restore(path)
    stream.flush()
    last = drain(master).strip().split("\r")[-1]
    assert "Restoring" in last and "2/2 vars" in last and "512.0/512.0 KiB" in last
    assert restored[v].sharding == store[v].sharding


def test_read_numpy_draws_one_variable(tmp_path, store, terminal):
    master, stream = terminal()
    _ckpt_io.write(tmp_path / "c", store.to_dict())
    drain(master)
    _ckpt_io.read_numpy(tmp_path / "c", "layer1/w")
    stream.flush()
    last = drain(master).strip().split("\r")[-1]
    assert "Reading 'layer1/w'" in last and "1/1 vars" in last


def test_silent_when_stderr_is_not_a_terminal(tmp_path, store, monkeypatch):
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    monkeypatch.setattr(vs.config, "progress_threshold_bytes", 1000)
    _ckpt_io.write(tmp_path / "c", store.to_dict())
    _ckpt_io.read(tmp_path / "c", {"layer0/w": ((64, 1024), np.float32, None)})
    assert captured.getvalue() == ""


def test_silent_below_the_threshold(tmp_path, store, terminal, monkeypatch):
    master, stream = terminal()
    monkeypatch.setattr(vs.config, "progress_threshold_bytes", 1 << 30)
    _ckpt_io.write(tmp_path / "c", store.to_dict())
    stream.flush()
    assert drain(master) == ""
