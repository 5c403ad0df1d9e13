import os
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec

import varstore as vs


@pytest.fixture
def howto():
    weights = vs.Variable(vs.random_normal([784, 200], stddev=0.35), name="weights")
    biases = vs.Variable(vs.zeros([200]), name="biases")
    store = vs.initialize_all_variables()(jax.random.key(0))
    return weights, biases, store


def _equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
        assert a[k].dtype == b[k].dtype


def test_save_returns_path_and_restore_is_exact(howto, tmp_path):
    weights, biases, store = howto
    saver = vs.train.Saver()
    path = saver.save(store, str(tmp_path / "model.ckpt"))
    assert path == str(tmp_path / "model.ckpt")
    restored = saver.restore(path)
    _equal(restored, store)


def test_global_step_paths_and_state_file_as_tensorflow(howto, tmp_path):
    *_, store = howto
    saver = vs.train.Saver()
    prefix = str(tmp_path / "model.ckpt")
    paths = [saver.save(store, prefix, global_step=s) for s in (1, 2, 3)]
    assert paths == [prefix + "-1", prefix + "-2", prefix + "-3"]
    text = (tmp_path / "checkpoint").read_text()
    assert text.splitlines()[:4] == [
        'model_checkpoint_path: "model.ckpt-3"',
        'all_model_checkpoint_paths: "model.ckpt-1"',
        'all_model_checkpoint_paths: "model.ckpt-2"',
        'all_model_checkpoint_paths: "model.ckpt-3"',
    ]
    state = vs.train.get_checkpoint_state(str(tmp_path))
    assert state.model_checkpoint_path == prefix + "-3"
    assert list(state.all_model_checkpoint_paths) == paths
    assert vs.train.latest_checkpoint(str(tmp_path)) == prefix + "-3"


def test_global_step_may_be_an_array(howto, tmp_path):
    *_, store = howto
    path = vs.train.Saver().save(store, str(tmp_path / "m"), global_step=jnp.int32(7))
    assert path.endswith("m-7")


def test_bad_global_step(howto, tmp_path):
    *_, store = howto
    with pytest.raises(vs.CheckpointError, match="global_step must be an integer"):
        vs.train.Saver().save(store, str(tmp_path / "m"), global_step=1.5)


def test_max_to_keep_deletes_exactly_the_oldest(howto, tmp_path):
    *_, store = howto
    saver = vs.train.Saver(max_to_keep=2)
    prefix = str(tmp_path / "model.ckpt")
    for step in range(1, 5):
        saver.save(store, prefix, global_step=step)
    assert saver.last_checkpoints == [prefix + "-3", prefix + "-4"]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.ckpt-3", "model.ckpt-4"]
    state = vs.train.get_checkpoint_state(str(tmp_path))
    assert list(state.all_model_checkpoint_paths) == [prefix + "-3", prefix + "-4"]


def test_max_to_keep_none_keeps_all_files_and_lists_newest(howto, tmp_path):
    *_, store = howto
    saver = vs.train.Saver(max_to_keep=None)
    prefix = str(tmp_path / "m")
    for step in range(3):
        saver.save(store, prefix, global_step=step)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "m-0", "m-1", "m-2"]
    state = vs.train.get_checkpoint_state(str(tmp_path))
    assert list(state.all_model_checkpoint_paths) == [prefix + "-2"]


def test_keep_checkpoint_every_n_hours_preserves(howto, tmp_path):
    *_, store = howto
    saver = vs.train.Saver(max_to_keep=1, keep_checkpoint_every_n_hours=1e-9)
    prefix = str(tmp_path / "m")
    for step in range(3):
        saver.save(store, prefix, global_step=step)
    # Each checkpoint is older than the (tiny) interval, so each is preserved.
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "m-0", "m-1", "m-2"]
    assert saver.last_checkpoints == [prefix + "-2"]
    assert vs.train.get_checkpoint_state(str(tmp_path)).last_preserved_timestamp


def test_new_saver_continues_max_to_keep_of_the_directory(howto, tmp_path):
    *_, store = howto
    prefix = str(tmp_path / "m")
    first = vs.train.Saver(max_to_keep=2)
    first.save(store, prefix, global_step=1)
    first.save(store, prefix, global_step=2)
    second = vs.train.Saver(max_to_keep=2)
    second.save(store, prefix, global_step=3)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "m-2", "m-3"]
    assert second.last_checkpoints == [prefix + "-2", prefix + "-3"]


def test_saving_again_to_the_same_path_replaces_it(howto, tmp_path):
    weights, biases, store = howto
    saver = vs.train.Saver()
    path = saver.save(store, str(tmp_path / "m"))
    changed = store.assign(biases, jnp.ones(200))
    assert saver.save(changed, str(tmp_path / "m")) == path
    np.testing.assert_array_equal(saver.restore(path)["biases"], np.ones(200))
    assert saver.last_checkpoints == [path]
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "m"]


def test_checkpoint_restores_with_plain_orbax(howto, tmp_path):
    with vs.name_scope("layer1"):
        vs.Variable(vs.ones([3, 2]), name="w")
    weights, biases, _ = howto
    store = vs.initialize_all_variables()(0)
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    tree = ocp.StandardCheckpointer().restore(path)
    assert set(tree) == {"weights", "biases", "layer1"}
    np.testing.assert_array_equal(tree["layer1"]["w"], np.ones((3, 2)))
    np.testing.assert_array_equal(tree["weights"], store["weights"])


def test_plain_orbax_checkpoint_is_read_by_every_reader(tmp_path):
    tree = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "c": np.int32(4)}
    path = str(tmp_path / "plain")
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, tree)
        ckptr.wait_until_finished()
    assert vs.train.checkpoint_exists(path)
    assert vs.train.list_variables(path) == [("a/b", [2, 3]), ("c", [])]
    np.testing.assert_array_equal(vs.train.load_variable(path, "a/b"), tree["a"]["b"])
    reader = vs.train.load_checkpoint(path)
    assert reader.has_tensor("c") and not reader.has_tensor("a")
    assert reader.get_variable_to_shape_map() == {"a/b": [2, 3], "c": []}
    assert reader.get_variable_to_dtype_map() == {"a/b": np.float32, "c": np.int32}
    assert int(reader.get_tensor("c")) == 4
    b = vs.Variable(vs.zeros([2, 3]), name="a/b")
    store = vs.train.Saver([b]).restore(path)
    np.testing.assert_array_equal(store[b], tree["a"]["b"])
    plan = vs.train.plan_restore(path)
    assert plan.unused == ("c",) and plan.bytes_to_read == 24
    store = vs.train.init_from_checkpoint(path, {"a/b": b})
    np.testing.assert_array_equal(store[b], tree["a"]["b"])


def test_readers_accept_a_directory(howto, tmp_path):
    *_, store = howto
    vs.train.Saver().save(store, str(tmp_path / "m"), global_step=5)
    assert vs.train.list_variables(str(tmp_path)) == [("biases", [200]), ("weights", [784, 200])]
    np.testing.assert_array_equal(
        vs.train.load_variable(str(tmp_path), "weights"), store["weights"]
    )


def test_load_variable_unknown_name_lists_close_names(howto, tmp_path):
    *_, store = howto
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    with pytest.raises(vs.NotFoundError, match="'weight' is not in the checkpoint.*'weights'"):
        vs.train.load_variable(path, "weight")


def test_latest_checkpoint_none_cases(howto, tmp_path):
    *_, store = howto
    assert vs.train.latest_checkpoint(str(tmp_path)) is None
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    assert vs.train.latest_checkpoint(str(tmp_path)) == path
    import shutil

    shutil.rmtree(path)
    assert vs.train.latest_checkpoint(str(tmp_path)) is None
    assert not vs.train.checkpoint_exists(path)


def test_missing_checkpoint_path_errors(tmp_path):
    vs.Variable(vs.zeros([2]), name="v")
    with pytest.raises(vs.CheckpointError, match="does not exist"):
        vs.train.Saver().restore(str(tmp_path / "nope"))
    with pytest.raises(vs.CheckpointError, match="holds no 'checkpoint' state file"):
        vs.train.Saver().restore(str(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(vs.CheckpointError, match="is not a checkpoint"):
        vs.train.list_variables(str(tmp_path / "file"))


def test_dict_var_list_renames(howto, tmp_path):
    weights, biases, store = howto
    v2 = vs.Variable(vs.ones([3]), name="v2")
    store = vs.initialize_variables([v2])(0, store)
    path = vs.train.Saver({"my_v2": v2}).save(store, str(tmp_path / "m"))
    assert vs.train.list_variables(path) == [("my_v2", [3])]
    restored = vs.train.Saver({"my_v2": v2}).restore(path)
    assert list(restored) == ["v2"]
    np.testing.assert_array_equal(restored[v2], np.ones(3))


def test_restore_weights_into_a_new_variable_params(howto, tmp_path):
    weights, biases, store = howto
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    params = vs.Variable(vs.zeros([784, 200]), name="params")
    restored = vs.train.Saver({"weights": params}).restore(path)
    np.testing.assert_array_equal(restored[params], store[weights])


def test_partial_restore_reads_only_its_variables(howto, tmp_path):
    weights, biases, store = howto
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    # Damage the weights entry: restoring biases alone must not touch it.
    restored = vs.train.Saver([biases]).restore(path)
    assert list(restored) == ["biases"]
    plan = vs.train.plan_restore(path, [biases])
    assert plan.unused == ("weights",)
    assert plan.bytes_to_read == 800


def test_restore_merges_into_store(howto, tmp_path):
    weights, biases, store = howto
    path = vs.train.Saver([biases]).save(store, str(tmp_path / "m"))
    other = vs.VarStore({"weights": jnp.zeros((784, 200)), "biases": jnp.ones(200)})
    merged = vs.train.Saver([biases]).restore(path, other)
    np.testing.assert_array_equal(merged["biases"], np.zeros(200))
    np.testing.assert_array_equal(merged["weights"], np.zeros((784, 200)))


def test_missing_variable_is_a_checkpoint_error_naming_it(howto, tmp_path):
    weights, biases, store = howto
    path = vs.train.Saver([weights]).save(store, str(tmp_path / "m"))
    with pytest.raises(vs.CheckpointError, match=r"no value for 1 variable\(s\): 'biases'") as e:
        vs.train.Saver().restore(path)
    assert path in str(e.value)


def test_on_missing_skip_then_initialize(howto, tmp_path):
    weights, biases, store = howto
    path = vs.train.Saver([weights]).save(store, str(tmp_path / "m"))
    restored = vs.train.Saver().restore(path, on_missing="skip")
    assert vs.report_uninitialized_variables(restored) == ["biases"]
    restored = vs.initialize_variables(vs.report_uninitialized_variables(restored))(0, restored)
    vs.assert_variables_initialized(restored)
    with pytest.raises(vs.CheckpointError, match="on_missing must be"):
        vs.train.Saver().restore(path, on_missing="ignore")


def test_shape_mismatch_names_variable_path_and_both_shapes(tmp_path):
    v = vs.Variable(vs.zeros([3]), name="v")
    store = vs.initialize_all_variables()(0)
    path = vs.train.Saver().save(store, str(tmp_path / "m"))
    with vs.Graph().as_default():
        v5 = vs.Variable(vs.zeros([5]), name="v")
        with pytest.raises(vs.CheckpointError, match=r"'v' has shape \(5,\) but .* shape \(3,\)") as e:
            vs.train.Saver([v5]).restore(path)
        assert path in str(e.value)
        free = vs.Variable(vs.zeros([5]), name="free", validate_shape=False)
        restored = vs.train.Saver({"v": free}).restore(path)
        assert restored["free"].shape == (3,)


def test_saved_dtype_is_cast_to_declared_and_reported(tmp_path):
    vs.Variable(vs.ones([4], dtype=jnp.float32), name="v")
    path = vs.train.Saver().save(vs.initialize_all_variables()(0), str(tmp_path / "m"))
    with vs.Graph().as_default():
        v16 = vs.Variable(vs.zeros([4], dtype=jnp.bfloat16), name="v")
        restored = vs.train.Saver([v16]).restore(path)
        assert restored["v"].dtype == jnp.bfloat16
        plan = vs.train.plan_restore(path, [v16])
        assert plan.dtype_casts == (("v", np.dtype("float32"), np.dtype(jnp.bfloat16)),)
        assert "float32 -> bfloat16" in str(plan)


def test_plan_restore_reports_everything(tmp_path):
    a = vs.Variable(vs.zeros([2]), name="a")
    vs.Variable(vs.zeros([3]), name="b")
    path = vs.train.Saver().save(vs.initialize_all_variables()(0), str(tmp_path / "m"))
    with vs.Graph().as_default():
        vs.Variable(vs.zeros([2]), name="a")
        vs.Variable(vs.zeros([4]), name="c")
        vs.Variable(vs.zeros([5]), name="missing")
        with vs.Graph().as_default():
            pass
        plan = vs.train.plan_restore(path, ["a", "c", "missing"])
    assert [r.var_name for r in plan.restored] == ["a"]
    assert plan.missing == (("c", "c"), ("missing", "missing"))
    assert plan.unused == ("b",)
    assert plan.bytes_to_read == 8
    assert not plan.ok
    del a


def test_saver_construction_errors():
    a = vs.Variable(vs.zeros([2]), name="a")
    with pytest.raises(vs.CheckpointError, match="no variables to save"):
        with vs.Graph().as_default():
            vs.train.Saver()
    with vs.Graph().as_default():
        assert vs.train.Saver(allow_empty=True).last_checkpoints == []
    with pytest.raises(vs.CheckpointError, match="'x' and 'x/y' cannot both be saved"):
        vs.train.Saver({"x": a, "x/y": a})
    with pytest.raises(vs.InvalidNameError, match="checkpoint name '../evil'"):
        vs.train.Saver({"../evil": a})
    with pytest.raises(vs.CheckpointError, match="listed twice"):
        vs.train.Saver([a, "a"])
    with pytest.raises(vs.CheckpointError, match="Wrap it in a list"):
        vs.train.Saver(a)
    with pytest.raises(vs.CheckpointError, match="max_to_keep"):
        vs.train.Saver(max_to_keep=-1)


def test_save_with_missing_value_is_an_error_and_writes_nothing(howto, tmp_path):
    weights, biases, store = howto
    with pytest.raises(vs.UninitializedError, match="'biases'"):
        vs.train.Saver().save(store.subset([weights]), str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_async_save_returns_before_the_write_and_loses_nothing(tmp_path):
    big = vs.Variable(vs.random_normal([4096, 4096]), name="big")  # 64 MiB
    store = vs.initialize_all_variables()(0)
    saver = vs.train.Saver()
    path = saver.save(store, str(tmp_path / "m"), global_step=1, blocking=False)
    assert not vs.train.checkpoint_exists(path)  # not written yet
    # The store can change meanwhile; the save keeps the values it was given.
    store2 = store.assign(big, jnp.zeros((4096, 4096)))
    path2 = saver.save(store2, str(tmp_path / "m"), global_step=2, blocking=False)
    saver.wait_until_finished()
    np.testing.assert_array_equal(saver.restore(path)[big], store[big])
    np.testing.assert_array_equal(saver.restore(path2)[big], np.zeros((4096, 4096)))
    assert vs.train.latest_checkpoint(str(tmp_path)) == path2


def test_async_save_survives_deleted_and_donated_arrays(tmp_path, monkeypatch):
    # A background save holds the arrays' buffers instead of copying them (what makes
    # `blocking=False` return at once): deleting them, or donating them to a jit that
    # overwrites its input in place, must not change what is written.
    from varstore import _ckpt_io

    gate = threading.Event()
    real_run = _ckpt_io._SaveJob.run

    def gated_run(self):  # the write starts only after the deletes and donations
        assert gate.wait(60)
        real_run(self)

    monkeypatch.setattr(_ckpt_io._SaveJob, "run", gated_run)
    mesh = jax.make_mesh((8,), ("x",))
    names = [f"v{i}" for i in range(6)]
    for i, name in enumerate(names):
        if i % 2:
            with vs.device(PartitionSpec("x"), mesh=mesh):
                vs.Variable(vs.random_normal([1024, 1024]), name=name)
        else:
            vs.Variable(vs.random_normal([1024, 1024]), name=name)
    store = vs.initialize_all_variables()(3)
    expected = {n: np.array(store[n], copy=True) for n in names}
    saver = vs.train.Saver()
    path = saver.save(store, str(tmp_path / "m"), blocking=False)

    overwrite = jax.jit(lambda a: a * 0.0 - 7.0, donate_argnums=0)
    arrays = dict(store.to_dict())
    del store
    clobbered = [overwrite(arrays.pop(n)) for n in names[:3]]  # donated
    for n in names[3:]:
        arrays.pop(n).delete()
    filler = [jnp.full((1024, 1024), 9.0) + i for i in range(12)]  # reuse freed memory
    jax.block_until_ready((clobbered, filler))
    gate.set()
    saver.wait_until_finished()

    restored = saver.restore(path)
    for n in names:
        np.testing.assert_array_equal(restored[n], expected[n], err_msg=n)


def test_save_inside_jit_is_refused(howto, tmp_path):
    *_, store = howto
    saver = vs.train.Saver()
    with pytest.raises(vs.CheckpointError, match="inside a jax transformation"):
        jax.jit(lambda s: saver.save(s, str(tmp_path / "m")) and 0)(store)


def test_restore_an_undeclared_name(tmp_path):
    path = vs.train.Saver(["x"], allow_empty=True).save(
        vs.VarStore({"x": jnp.arange(3)}), str(tmp_path / "m")
    )
    restored = vs.train.Saver(["x"]).restore(path)
    np.testing.assert_array_equal(restored["x"], np.arange(3))


@pytest.mark.parametrize("writer", ["varstore", "orbax"])
def test_restore_refuses_int64_values_that_int32_would_change(tmp_path, writer):
    # Without jax_enable_x64 an int64 variable is declared int32; a checkpoint step of
    # 2**40 must not come back silently wrapped around (it would be 0).
    path = str(tmp_path / "m")
    values = {"step": np.array([2**40, 5], np.int64), "small": np.array([7, -3], np.int64)}
    if writer == "varstore":
        from varstore import _ckpt_io

        _ckpt_io.write(path, values).wait()
    else:
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(path, values)
        ckptr.wait_until_finished()
    step = vs.Variable(vs.zeros([2], dtype=np.int64), name="step")
    small = vs.Variable(vs.zeros([2], dtype=np.int64), name="small")
    assert step.dtype == np.int32  # what JAX gives without 64-bit types
    with pytest.raises(
        vs.CheckpointError,
        match=r"'step' .* holds int64 values \(1099511627776\) that its declared dtype "
        r"int32 cannot represent.*jax_enable_x64",
    ):
        vs.train.Saver().restore(path)
    restored = vs.train.Saver([small]).restore(path)  # values that fit are cast
    np.testing.assert_array_equal(restored[small], np.array([7, -3], np.int32))
