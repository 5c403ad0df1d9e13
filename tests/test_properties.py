"""Property tests of saving and restoring, over random graphs of variables.

Random valid names (nested scopes), shapes (scalars, 0-sized), dtypes and raw bit
patterns (NaN payloads, -0.0, subnormals) for: bit-exact save/restore, partial
restores, renaming through bijective Saver dicts, and init_from_checkpoint's scope
form against its explicit per-variable form.
"""

import string

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import varstore as vs

DTYPES = [
    np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.int8),
    np.dtype(np.int32), np.dtype(np.uint8), np.dtype(np.bool_), np.dtype(np.complex64),
]  # fmt: skip
# File names the Orbax layout reserves at a checkpoint's root (see varstore._ckpt_io).
RESERVED = {
    "_metadata", "_checkpoint_metadata", "varstore_metadata.json", "manifest.ocdbt",
    "_sharding", "array_metadatas", "commit_success.txt",
}  # fmt: skip

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

PART = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=6).filter(
    lambda p: p not in (".", "..")
)
NAME = st.lists(PART, min_size=1, max_size=3).map("/".join)
SHAPE = st.lists(st.integers(0, 4), max_size=3).map(tuple)


def compatible(names):
    """Drops names a checkpoint could not hold next to the earlier ones: case-folded
    duplicates (TensorFlow's uniquing is case-insensitive), a name that is a scope of
    another, two names in one dotted Orbax directory, reserved file names."""
    kept, lowered, dotted = [], [], set()
    for n in names:
        low = n.lower()
        if low in lowered or low.replace("/", ".") in dotted or low.replace("/", ".") in RESERVED:
            continue
        if any(m.startswith(low + "/") or low.startswith(m + "/") for m in lowered):
            continue
        kept.append(n)
        lowered.append(low)
        dotted.add(low.replace("/", "."))
    return kept


@st.composite
def graphs(draw, min_size=1, max_size=6):
    """[(name, shape, dtype)] plus a seed for the values."""
    names = compatible(draw(st.lists(NAME, min_size=min_size, max_size=max_size)))
    specs = [(n, draw(SHAPE), draw(st.sampled_from(DTYPES))) for n in names]
    return specs, draw(st.integers(0, 2**32 - 1))


def random_values(specs, seed):
    """Raw random bit patterns of each dtype (bool: 0 or 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype in specs:
        n = int(np.prod(shape, dtype=np.int64))
        if dtype == np.bool_:
            out[name] = rng.integers(0, 2, n).astype(np.bool_).reshape(shape)
        else:
            out[name] = np.frombuffer(rng.bytes(n * dtype.itemsize), dtype).reshape(shape).copy()
    return out


def declare(specs, prefix=""):
    out = {}
    for name, shape, dtype in specs:
        v = vs.Variable(vs.zeros(shape, dtype=dtype), name=prefix + name)
        assert v.name == prefix + name and v.shape == shape and v.dtype == dtype
        out[name] = v
    return out


def bits(a):
    a = np.asarray(a)
    return a.dtype, a.shape, a.tobytes()


def store_of(values, prefix=""):
    return vs.VarStore({prefix + k: v for k, v in values.items()})


@pytest.fixture(scope="module")
def new_dir(tmp_path_factory):
    return lambda: tmp_path_factory.mktemp("prop")


@PROPERTY
@given(graphs())
def test_save_then_restore_is_bit_exact(new_dir, graph):
    specs, seed = graph
    values = random_values(specs, seed)
    with vs.Graph().as_default():
        variables = declare(specs)
        path = vs.train.Saver().save(store_of(values), str(new_dir() / "m"), global_step=1)
        restored = vs.train.Saver().restore(path)
        assert sorted(restored) == sorted(values)
        reader = vs.train.load_checkpoint(path)
        for name, want in values.items():
            assert bits(restored[variables[name]]) == bits(want), name
            assert bits(reader.get_tensor(name)) == bits(want), name
        assert vs.train.list_variables(path) == sorted((n, list(s)) for n, s, _ in specs)


@PROPERTY
@given(graphs(), st.data())
def test_partial_restore_equals_the_subset_of_a_full_restore(new_dir, graph, data):
    specs, seed = graph
    values = random_values(specs, seed)
    subset = data.draw(st.lists(st.sampled_from(sorted(values)), unique=True), label="subset")
    with vs.Graph().as_default():
        variables = declare(specs)
        path = vs.train.Saver().save(store_of(values), str(new_dir() / "m"))
        full = vs.train.Saver().restore(path)
        if not subset:
            with pytest.raises(vs.CheckpointError, match="no variables"):
                vs.train.Saver([])
            return
        part = vs.train.Saver([variables[n] for n in subset]).restore(path)
        assert sorted(part) == sorted(subset)
        for n in subset:
            assert bits(part[n]) == bits(full[n]) == bits(values[n])


@PROPERTY
@given(graphs(), st.data())
def test_restore_through_any_bijective_dict_is_exact(new_dir, graph, data):
    """Saved under one set of names, restored into variables of other names."""
    specs, seed = graph
    values = random_values(specs, seed)
    new_names = data.draw(
        st.lists(NAME, min_size=len(specs), max_size=len(specs))
        .map(compatible)
        .filter(lambda ns: len(ns) == len(specs)),
        label="new names",
    )
    order = data.draw(st.permutations(range(len(specs))), label="pairing")
    with vs.Graph().as_default():
        declare(specs)
        path = vs.train.Saver().save(store_of(values), str(new_dir() / "m"))
    with vs.Graph().as_default():
        # old name i -> new variable order[i], with the shape and dtype of old i
        new_specs = [(new_names[order[i]], s, d) for i, (_, s, d) in enumerate(specs)]
        targets = declare(new_specs)
        mapping = {old: targets[new_names[order[i]]] for i, (old, _, _) in enumerate(specs)}
        restored = vs.train.Saver(mapping).restore(path)
        assert sorted(restored) == sorted(v.name for v in mapping.values())
        for old, var in mapping.items():
            assert bits(restored[var]) == bits(values[old])


@PROPERTY
@given(graphs(), st.data())
def test_save_through_a_renaming_dict_then_restore_is_exact(new_dir, graph, data):
    specs, seed = graph
    values = random_values(specs, seed)
    ckpt_names = data.draw(
        st.lists(NAME, min_size=len(specs), max_size=len(specs))
        .map(compatible)
        .filter(lambda ns: len(ns) == len(specs)),
        label="checkpoint names",
    )
    with vs.Graph().as_default():
        variables = declare(specs)
        mapping = {c: variables[n] for c, (n, _, _) in zip(ckpt_names, specs)}
        path = vs.train.Saver(mapping).save(store_of(values), str(new_dir() / "m"))
        assert [n for n, _ in vs.train.list_variables(path)] == sorted(ckpt_names)
        restored = vs.train.Saver(mapping).restore(path)
        for c, var in mapping.items():
            assert bits(restored[var]) == bits(values[var.name])
            assert bits(vs.train.load_variable(path, c)) == bits(values[var.name])


@PROPERTY
@given(graphs(), graphs(max_size=2), st.sampled_from(["src/", "/"]))
def test_init_from_checkpoint_scope_map_agrees_with_the_explicit_map(new_dir, graph, others, src):
    """{'src/': 'dst/'} (or {'/': 'dst/'}) gives what the per-variable map gives,
    and leaves variables outside 'dst/' alone."""
    specs, seed = graph
    values = random_values(specs, seed)
    ckpt_prefix = "" if src == "/" else src
    with vs.Graph().as_default():
        declare(specs, prefix=ckpt_prefix)
        path = vs.train.Saver().save(store_of(values, ckpt_prefix), str(new_dir() / "m"))
    with vs.Graph().as_default() as g:
        declare(specs, prefix="dst/")
        outside = declare(others[0], prefix="other/")
        base = vs.VarStore({v.name: np.zeros(v.shape, v.dtype) for v in outside.values()})
        by_scope = vs.train.init_from_checkpoint(path, {src: "dst/"}, store=base, graph=g)
        explicit = vs.train.init_from_checkpoint(
            path, {ckpt_prefix + n: "dst/" + n for n, _, _ in specs}, store=base, graph=g
        )
        assert (
            sorted(by_scope)
            == sorted(explicit)
            == sorted(["dst/" + n for n, _, _ in specs] + [v.name for v in outside.values()])
        )
        for n, _, _ in specs:
            assert bits(by_scope["dst/" + n]) == bits(explicit["dst/" + n]) == bits(values[n])
        for v in outside.values():
            assert bits(by_scope[v]) == bits(base[v])
