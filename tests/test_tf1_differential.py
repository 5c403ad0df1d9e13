"""Differential test: varstore's TF checkpoint reader against TensorFlow's own.

Writes fresh checkpoints with random contents with ``tf.compat.v1`` (graph
mode, reference variables, ``tf.compat.v1.train.Saver``, ``SaveV2``) and
checks that every tensor varstore reads is bit-identical to what
``tf.train.load_checkpoint(...).get_tensor`` returns. Skipped when TensorFlow
is not importable; CI installs ``tensorflow-cpu`` to run it.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import numpy as np
import pytest

from varstore._errors import CheckpointError
from varstore._tf1_bundle import TF1Bundle

if importlib.util.find_spec("tensorflow") is None:
    pytest.skip(
        "tensorflow is not importable in this environment; install tensorflow-cpu to "
        "compare varstore's checkpoint reader with TensorFlow's",
        allow_module_level=True,
    )

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # TensorFlow's own import-time deprecations
    import ml_dtypes
    import tensorflow as tf

tf1 = tf.compat.v1

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# dtypes tf.compat.v1 reference variables hold on CPU.
VARIABLE_DTYPES = [
    "float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128",
]  # fmt: skip
# dtypes only SaveV2 writes (one byte per element).
RAW_DTYPES = [
    "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz",
    "float8_e5m2fnuz", "int4", "uint4", "int2", "uint2",
]  # fmt: skip
# dtypes TensorFlow's reader can assemble from slices (BundleReader::GetSliceValue).
SLICEABLE_DTYPES = [
    "float32", "float64", "int32", "uint8", "int16", "int8", "complex64",
    "complex128", "int64", "bool", "bfloat16",
]  # fmt: skip


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


def _random(rng: np.random.Generator, dtype_name: str, shape) -> np.ndarray:
    """Random values; floats come from random bit patterns (NaNs, infs, subnormals)."""
    dtype = _np_dtype(dtype_name)
    count = int(np.prod(shape, dtype=np.int64))
    if dtype_name == "bool":
        return rng.integers(0, 2, count).astype(bool).reshape(shape)
    if dtype_name in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(dtype)
        return rng.integers(int(info.min), int(info.max) + 1, count).astype(dtype).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, count, dtype=dtype, endpoint=True).reshape(shape)
    raw = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    return raw.view(dtype).reshape(shape).copy()


def _random_shape(rng: np.random.Generator):
    kind = rng.integers(0, 5)
    if kind == 0:
        return ()
    if kind == 1:
        return (0,) if rng.integers(0, 2) else (3, 0)
    return tuple(int(d) for d in rng.integers(1, 9, size=int(rng.integers(1, 4))))


def _compare_with_tensorflow(prefix: str) -> int:
    """Asserts varstore reads what TF reads; returns the number of tensors compared."""
    reader = tf.train.load_checkpoint(prefix)
    tf_dtypes = reader.get_variable_to_dtype_map()
    tf_shapes = reader.get_variable_to_shape_map()
    bundle = TF1Bundle(prefix)
    assert list(bundle.entries) == sorted(tf_dtypes)
    for name in tf_dtypes:
        info = bundle.entries[name]
        assert info.tf_dtype == tf_dtypes[name].name, name
        assert info.shape == tuple(tf_shapes[name]), name
        if tf_dtypes[name] == tf.string:
            with pytest.raises(CheckpointError, match=rf"Tensor '{name}' .* has dtype string"):
                bundle.read(name)
            continue
        expected = np.array(
            reader.get_tensor(name), order="C"
        )  # keeps 0-d (ascontiguousarray would not)
        ours = bundle.read(name)
        assert ours.dtype == expected.dtype, (name, ours.dtype, expected.dtype)
        assert ours.shape == expected.shape, name
        assert ours.tobytes() == expected.tobytes(), name
    return len(tf_dtypes)


def _save(graph, prefix: str, cpus: int = 1, **saver_kwargs) -> None:
    with graph.as_default():
        saver = tf1.train.Saver(**saver_kwargs)
        config = tf1.ConfigProto(device_count={"CPU": cpus})
        with tf1.Session(graph=graph, config=config) as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False)


@pytest.mark.parametrize("seed", range(3))
def test_random_variables_of_every_dtype(tmp_path, seed):
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        for i in range(40):
            dtype = VARIABLE_DTYPES[i % len(VARIABLE_DTYPES)]
            value = _random(rng, dtype, _random_shape(rng))
            tf1.Variable(tf.constant(value), name=f"scope_{i % 3}/v{i}_{dtype}", use_resource=False)
        tf1.Variable(tf.constant([b"a", b"\x00b"]), name="strings", use_resource=False)
    prefix = str(tmp_path / "model.ckpt")
    _save(graph, prefix)
    assert _compare_with_tensorflow(prefix) == 41


@pytest.mark.parametrize("seed", range(2))
def test_save_v2_only_dtypes(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    graph = tf.Graph()
    prefix = str(tmp_path / "raw")
    with graph.as_default():
        names, tensors = [], []
        for dtype in RAW_DTYPES + VARIABLE_DTYPES:
            shape = _random_shape(rng)
            if dtype in RAW_DTYPES and (not shape or np.prod(shape) < 2):
                shape = (3,)  # tf.constant cannot build float8/int4 tensors of < 2 elements
            names.append("t_" + dtype)
            tensors.append(tf.constant(_random(rng, dtype, shape)))
        save = tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors
        )
        with tf1.Session(graph=graph) as sess:
            sess.run(save)
    assert _compare_with_tensorflow(prefix) == len(RAW_DTYPES) + len(VARIABLE_DTYPES)


@pytest.mark.parametrize("seed", range(3))
def test_sharded_and_partitioned(tmp_path, seed):
    rng = np.random.default_rng(200 + seed)
    graph = tf.Graph()
    counter = [0]

    def round_robin(op):
        if op.type == "VariableV2":
            counter[0] += 1
            return "/cpu:%d" % (counter[0] % 4)
        return op.device

    with graph.as_default():
        with tf1.device(round_robin):
            for i in range(12):
                dtype = VARIABLE_DTYPES[int(rng.integers(len(VARIABLE_DTYPES)))]
                value = _random(rng, dtype, _random_shape(rng))
                tf1.Variable(tf.constant(value), name=f"v{i}", use_resource=False)
            for i in range(6):
                dtype = SLICEABLE_DTYPES[int(rng.integers(len(SLICEABLE_DTYPES)))]
                rank = int(rng.integers(1, 4))
                shape = [int(d) for d in rng.integers(2, 12, size=rank)]
                axis = int(rng.integers(rank))
                shape[axis] = int(rng.choice([5, 70, 130, 9000]))  # 1-, 2- and 3-byte slice offsets
                value = _random(rng, dtype, shape)
                parts = int(rng.integers(2, 5))
                tf1.get_variable(
                    f"part{i}",
                    initializer=tf.constant(value),
                    partitioner=tf1.fixed_size_partitioner(parts, axis=axis),
                    use_resource=False,
                )
    prefix = str(tmp_path / "model.ckpt")
    _save(graph, prefix, cpus=4, sharded=True)
    bundle = TF1Bundle(prefix)
    assert bundle.num_shards == 4
    assert sum(info.partitioned for info in bundle.entries.values()) == 6
    assert _compare_with_tensorflow(prefix) == 18


@pytest.mark.parametrize("seed", range(3))
def test_save_v2_with_arbitrary_slices(tmp_path, seed):
    """Slices cut along several axes at once, with full extents ('-')."""
    rng = np.random.default_rng(300 + seed)
    graph = tf.Graph()
    prefix = str(tmp_path / "slices")
    with graph.as_default():
        names, specs, tensors = [], [], []
        for i in range(5):
            dtype = SLICEABLE_DTYPES[int(rng.integers(len(SLICEABLE_DTYPES)))]
            shape = [int(d) for d in rng.integers(1, 80, size=int(rng.integers(1, 4)))]
            full = _random(rng, dtype, shape)
            cuts = [
                sorted({0, dim, *[int(c) for c in rng.integers(1, dim + 1, size=2)]})
                if dim > 1
                else [0, dim]
                for dim in shape
            ]
            whole = [bool(rng.integers(0, 2)) and len(c) > 2 for c in cuts]  # some axes not cut
            grid = [
                [(0, dim)] if w else list(zip(c[:-1], c[1:], strict=True))
                for c, w, dim in zip(cuts, whole, shape, strict=True)
            ]
            for box in np.ndindex(*[len(g) for g in grid]):
                extents = [grid[d][k] for d, k in enumerate(box)]
                spec = ":".join(
                    "-" if whole[d] else "%d,%d" % (a, b - a) for d, (a, b) in enumerate(extents)
                )
                if all(whole):
                    spec = ":".join("0,%d" % dim for dim in shape)  # an explicit full slice
                names.append(f"sliced{i}")
                specs.append(" ".join(str(d) for d in shape) + " " + spec)
                tensors.append(tf.constant(full[tuple(slice(a, b) for a, b in extents)]))
        save = tf.raw_ops.SaveV2(
            prefix=prefix, tensor_names=names, shape_and_slices=specs, tensors=tensors
        )
        with tf1.Session(graph=graph) as sess:
            sess.run(save)
    assert _compare_with_tensorflow(prefix) == 5
