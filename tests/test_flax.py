import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import varstore as vs
import varstore.flax as vsf
from varstore import _pytree

WIDTH = 8


class Net(nnx.Module):
    def __init__(self, depth, rngs, *, partitioned=False, norm=True):
        kernel_init = nnx.initializers.lecun_normal()
        if partitioned:
            kernel_init = nnx.with_partitioning(kernel_init, (None, "model"))
        self.layers = nnx.List(
            [nnx.Linear(WIDTH, WIDTH, kernel_init=kernel_init, rngs=rngs) for _ in range(depth)]
        )
        self.bn = nnx.BatchNorm(WIDTH, rngs=rngs) if norm else None
        self.drop = nnx.Dropout(0.1, rngs=rngs) if norm else None

    def __call__(self, x):
        for layer in self.layers:
            x = jnp.tanh(layer(x))
        return x


def state_leaves(node):
    """name -> numpy value (PRNG keys as key data) of an NNX node's state."""
    return {k: np.asarray(v) for k, v in vsf.from_nnx(node).items()}


def assert_same_state(a, b):
    la, lb = state_leaves(a), state_leaves(b)
    assert la.keys() == lb.keys()
    for k in la:
        assert la[k].dtype == lb[k].dtype and np.array_equal(la[k], lb[k]), k


@pytest.fixture
def mesh():
    return jax.make_mesh((2, 4), ("data", "model"))


def test_import_varstore_does_not_import_flax():
    code = "import sys, varstore; sys.exit(any(m.split('.')[0] == 'flax' for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- NNX ------------------------------------------------------------------------------
def test_from_nnx_names_every_array_by_its_state_path():
    store = vsf.from_nnx(Net(2, nnx.Rngs(0, dropout=1)))
    assert list(store) == [
        "bn/bias", "bn/mean", "bn/scale", "bn/var",
        "drop/rngs/count", "drop/rngs/key-key_data",
        "layers/0/bias", "layers/0/kernel", "layers/1/bias", "layers/1/kernel",
    ]


def test_update_nnx_writes_every_array_in_place():
    source, target = Net(2, nnx.Rngs(0, dropout=1)), Net(2, nnx.Rngs(7, dropout=8))
    kernel = target.layers[0].kernel
    vsf.update_nnx(target, vsf.from_nnx(source))
    assert_same_state(source, target)
    assert target.layers[0].kernel is kernel  # the same nnx.Variable, updated
    assert isinstance(target.drop.rngs.key[...], jax.Array)
    assert _pytree.is_key(target.drop.rngs.key[...])


def test_params_only_with_a_prefix():
    source, target = Net(2, nnx.Rngs(0)), Net(2, nnx.Rngs(1))
    target.bn.mean[...] = jnp.full(WIDTH, 5.0)
    store = vsf.from_nnx(source, "params", wrt=nnx.Param)
    assert "params/layers/0/kernel" in store and "params/bn/mean" not in store
    vsf.update_nnx(target, store, "params", wrt=nnx.Param)
    assert np.array_equal(target.layers[1].kernel[...], source.layers[1].kernel[...])
    assert np.array_equal(target.bn.mean[...], np.full(WIDTH, 5.0))


def test_update_nnx_errors_leave_the_model_unchanged():
    target = Net(2, nnx.Rngs(1))
    before = state_leaves(target)
    store = vsf.from_nnx(Net(2, nnx.Rngs(0)))
    partial = vs.VarStore({k: v for k, v in store.items() if k != "layers/1/kernel"})
    with pytest.raises(_pytree.MissingPathError, match=r"'layers/1/kernel' \(at \['layers'\]\[1\]\['kernel'\]\)"):
        vsf.update_nnx(target, partial)
    with pytest.raises(_pytree.ExtraPathError, match="'layers/2/bias', 'layers/2/kernel'"):
        vsf.update_nnx(target, vsf.from_nnx(Net(3, nnx.Rngs(0))))
    with pytest.raises(_pytree.LeafMismatchError, match=r"\['layers'\]\[0\]\['kernel'\] has dtype float32"):
        vsf.update_nnx(target, store.merge({"layers/0/kernel": store["layers/0/kernel"].astype(jnp.bfloat16)}))
    after = state_leaves(target)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_on_missing_keep_updates_what_the_store_has():
    source, target = Net(2, nnx.Rngs(0)), Net(2, nnx.Rngs(1))
    old = np.asarray(target.layers[1].kernel[...])
    store = vsf.from_nnx(source).subset(["layers/0/kernel"])
    vsf.update_nnx(target, store, on_missing="keep")
    assert np.array_equal(target.layers[0].kernel[...], source.layers[0].kernel[...])
    assert np.array_equal(target.layers[1].kernel[...], old)


def test_optimizer_state_round_trips():
    model = Net(2, nnx.Rngs(0), norm=False)
    opt = nnx.Optimizer(model, optax.chain(optax.clip(1.0), optax.adam(1e-2)), wrt=nnx.Param)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    store = vsf.from_nnx(opt, "opt")
    assert "opt/step" in store and "opt/opt_state/1/0/mu/layers/0/kernel" in store
    model2 = Net(2, nnx.Rngs(0), norm=False)
    opt2 = nnx.Optimizer(model2, optax.chain(optax.clip(1.0), optax.adam(1e-2)), wrt=nnx.Param)
    vsf.update_nnx(opt2, store, "opt")
    assert_same_state(opt, opt2)


def test_from_nnx_keeps_partitioning_and_update_nnx_restores_it(mesh):
    with jax.set_mesh(mesh):
        source = Net(2, nnx.Rngs(0), partitioned=True)
        target = Net(2, nnx.Rngs(1), partitioned=True)
    store = vsf.from_nnx(source)
    want = NamedSharding(mesh, P(None, "model"))
    assert store["layers/0/kernel"].sharding == want
    # Values on one device (as read without declarations) go back onto the model's sharding.
    local = vs.VarStore({k: np.asarray(v) for k, v in store.items()})
    vsf.update_nnx(target, local)
    assert target.layers[0].kernel[...].sharding == want
    assert_same_state(source, target)


def test_not_an_nnx_node():
    with pytest.raises(vs.GraphError, match="Expected an nnx.Module .* got dict.*from_linen"):
        vsf.from_nnx({"w": jnp.ones(2)})


# -- Linen ----------------------------------------------------------------------------
class LinenNet(nn.Module):
    logical: bool = False

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.lecun_normal()
        if self.logical:
            init = nn.with_logical_partitioning(init, (None, "hidden"), rules=(("hidden", "model"),))
        else:
            init = nn.with_partitioning(init, (None, "model"))
        x = nn.Dense(WIDTH, kernel_init=init)(x)
        return nn.BatchNorm(use_running_average=False)(x)


@pytest.mark.parametrize("logical", [False, True])
def test_linen_round_trip_with_partitioned_boxes(mesh, logical):
    model = LinenNet(logical)
    x = jnp.ones((2, 3))
    variables = model.init(jax.random.key(0), x)
    store = vsf.from_linen(variables, mesh=mesh)
    assert sorted(store) == [
        "batch_stats/BatchNorm_0/mean", "batch_stats/BatchNorm_0/var",
        "params/BatchNorm_0/bias", "params/BatchNorm_0/scale",
        "params/Dense_0/bias", "params/Dense_0/kernel",
    ]
    want = NamedSharding(mesh, P(None, "model"))
    assert store["params/Dense_0/kernel"].sharding == want
    back = vsf.to_linen(store, jax.eval_shape(model.init, jax.random.key(1), x), mesh=mesh)
    box = back["params"]["Dense_0"]["kernel"]
    assert isinstance(box, nn.Partitioned) and box.value.sharding == want
    assert np.array_equal(box.value, variables["params"]["Dense_0"]["kernel"].value)
    assert jax.tree.structure(back) == jax.tree.structure(variables)


def test_linen_params_only_by_prefix():
    model = nn.Dense(4)
    params = model.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
    store = vsf.from_linen({"params": params})
    assert list(store) == ["params/bias", "params/kernel"]
    back = vsf.to_linen(store, params, "params")
    assert np.array_equal(back["kernel"], params["kernel"])


# -- declare --------------------------------------------------------------------------
def test_declare_one_variable_per_array():
    model = Net(2, nnx.Rngs(0, dropout=1))
    variables = vsf.declare(model)
    assert list(variables) == list(vsf.from_nnx(model))
    assert [v.name for v in vs.global_variables()] == list(variables)
    trainable = {v.name for v in vs.trainable_variables()}
    assert trainable == {"bn/bias", "bn/scale", "layers/0/bias", "layers/0/kernel",
                         "layers/1/bias", "layers/1/kernel"}
    assert variables["drop/rngs/key-key_data"].dtype == np.uint32
    store = vs.initialize_all_variables()(0)
    for name, value in vsf.from_nnx(model).items():
        assert np.array_equal(store[name], value), name


def test_declare_takes_placements_from_annotations(mesh):
    with jax.set_mesh(mesh):
        model = Net(1, nnx.Rngs(0), partitioned=True, norm=False)
    variables = vsf.declare(model)
    assert variables["layers/0/kernel"].device == NamedSharding(mesh, P(None, "model"))
    store = vs.initialize_all_variables()(0)
    assert store["layers/0/kernel"].sharding == NamedSharding(mesh, P(None, "model"))


def test_declare_abstract_state_gives_zeros_on_the_annotated_mesh(mesh):
    with jax.set_mesh(mesh):
        abstract = nnx.eval_shape(lambda: Net(1, nnx.Rngs(0), partitioned=True))
    variables = vsf.declare(abstract, mesh=mesh)
    assert variables["layers/0/kernel"].device == NamedSharding(mesh, P(None, "model"))
    assert variables["drop/rngs/key-key_data"].shape == (2,)
    store = vs.initialize_all_variables()(0)
    assert not np.any(store["layers/0/kernel"])


def test_declare_linen_marks_only_params_trainable(mesh):
    variables = LinenNet().init(jax.random.key(0), jnp.ones((2, 3)))
    declared = vsf.declare(variables, mesh=mesh)
    assert declared["params/Dense_0/kernel"].device == NamedSharding(mesh, P(None, "model"))
    assert {v.name for v in vs.trainable_variables()} == {
        n for n in declared if n.startswith("params/")
    }


def test_declare_twice_is_an_error_and_declares_nothing():
    model = Net(1, nnx.Rngs(0), norm=False)
    vsf.declare(model)
    count = len(vs.global_variables())
    with pytest.raises(vs.GraphError, match=r"clash with variables already in the graph, e.g. 'layers/0/bias'.*reset_default_graph"):
        vsf.declare(model)
    vs.Variable(0.0, name="head")
    with pytest.raises(vs.GraphError, match=r"e.g. 'head/bias' \(taken, or a variable and a scope"):
        vsf.declare({"head": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}})
    assert len(vs.global_variables()) == count + 1
    with vs.name_scope("copy"):
        again = vsf.declare(model)
    assert list(again) == ["copy/layers/0/bias", "copy/layers/0/kernel"]


def test_saver_on_a_declared_model(tmp_path):
    source = Net(2, nnx.Rngs(0, dropout=1))
    vsf.declare(source)
    path = vs.train.Saver().save(vsf.from_nnx(source), tmp_path / "model.ckpt")
    vs.reset_default_graph()
    target = Net(2, nnx.Rngs(5, dropout=6))
    vsf.declare(target)
    vsf.update_nnx(target, vs.train.Saver().restore(path))
    assert_same_state(source, target)


def test_plan_and_init_from_checkpoint_on_flax_models(tmp_path):
    trained = Net(2, nnx.Rngs(0), norm=False)
    vsf.declare(trained)
    path = vs.train.Saver().save(vsf.from_nnx(trained), tmp_path / "model.ckpt")
    vs.reset_default_graph()
    encoder = Net(2, nnx.Rngs(1), norm=False)
    vsf.declare(encoder, "encoder")
    plan = vs.train.plan_restore(path)
    assert {v for v, _ in plan.missing} == {f"encoder/layers/{i}/{p}" for i in (0, 1) for p in ("bias", "kernel")}
    store = vs.train.init_from_checkpoint(path, {"layers/": "encoder/layers/"})
    vsf.update_nnx(encoder, store, "encoder")
    assert_same_state(trained, encoder)


def test_load_the_first_5_layers_of_a_trained_model_into_a_6_layer_one(tmp_path):
    shallow = Net(5, nnx.Rngs(0), norm=False)
    opt = nnx.Optimizer(shallow, optax.sgd(0.1), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(0), (16, WIDTH))
    grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(shallow)
    opt.update(shallow, grads)  # "trained"
    vsf.declare(shallow)
    path = vs.train.Saver().save(vsf.from_nnx(shallow), tmp_path / "shallow.ckpt")

    vs.reset_default_graph()
    deep = Net(6, nnx.Rngs(1), norm=False)
    fresh_last = np.asarray(deep.layers[5].kernel[...])
    vsf.declare(deep)
    plan = vs.train.plan_restore(path)
    assert sorted(v for v, _ in plan.missing) == ["layers/5/bias", "layers/5/kernel"]
    store = vs.train.Saver().restore(path, on_missing="skip")
    missing = vs.report_uninitialized_variables(store)
    assert missing == ["layers/5/bias", "layers/5/kernel"]
    store = vs.initialize_variables(missing)(0, store)
    vsf.update_nnx(deep, store)
    for i in range(5):
        assert np.array_equal(deep.layers[i].kernel[...], shallow.layers[i].kernel[...])
        assert np.array_equal(deep.layers[i].bias[...], shallow.layers[i].bias[...])
    assert np.array_equal(deep.layers[5].kernel[...], fresh_last)
    assert deep(x).shape == (16, WIDTH)
