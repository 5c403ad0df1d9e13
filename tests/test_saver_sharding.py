"""Restores onto other meshes and device counts (8 CPU devices, see conftest)."""

import os
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

import varstore as vs


@pytest.fixture
def mesh42():
    return jax.make_mesh((4, 2), ("a", "b"))


def test_restore_onto_another_mesh_and_one_device(tmp_path, mesh42):
    with vs.device(P("a", "b"), mesh=mesh42):
        w = vs.Variable(vs.random_normal([16, 8]), name="w")
    with vs.device(P(None, "a"), mesh=mesh42):
        k = vs.Variable(vs.random_uniform([3, 8]), name="k")
    store = vs.initialize_all_variables()(0)
    path = vs.train.Saver().save(store, str(tmp_path / "m"))

    mesh24 = jax.make_mesh((2, 4), ("x", "y"))
    with vs.Graph().as_default():
        with vs.device(P("y", None), mesh=mesh24):
            w2 = vs.Variable(vs.zeros([16, 8]), name="w")
        with vs.device("/cpu:5"):
            k2 = vs.Variable(vs.zeros([3, 8]), name="k")
        restored = vs.train.Saver().restore(path)
    assert restored["w"].sharding == NamedSharding(mesh24, P("y", None))
    assert restored["k"].sharding == SingleDeviceSharding(jax.devices()[5])
    np.testing.assert_array_equal(restored["w"], store[w])
    np.testing.assert_array_equal(restored["k"], store[k])
    del w2, k2


def test_restore_sharded_checkpoint_on_default_device(tmp_path, mesh42):
    with vs.device(P("a", None), mesh=mesh42):
        w = vs.Variable(vs.random_normal([8, 4]), name="w")
    store = vs.initialize_all_variables()(0)
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    np.testing.assert_array_equal(vs.train.load_variable(path, "w"), store[w])
    with vs.Graph().as_default():
        restored = vs.train.Saver(["w"]).restore(path)
    np.testing.assert_array_equal(restored["w"], store[w])


def test_partial_restore_never_reads_other_variables(tmp_path):
    big = vs.Variable(vs.random_normal([1024, 1024]), name="big")
    small = vs.Variable(vs.random_normal([1024]), name="small")
    store = vs.initialize_all_variables()(0)
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    # Remove every stored byte of `big`: a restore of `small` alone must not notice.
    removed = [p for p in os.listdir(path) if p.startswith("big")]
    assert removed, os.listdir(path)
    for p in removed:
        shutil.rmtree(os.path.join(path, p))
    restored = vs.train.Saver([small]).restore(path)
    np.testing.assert_array_equal(restored[small], store[small])
    with pytest.raises(vs.CheckpointError, match="big"):
        vs.train.Saver([big]).restore(path)
