"""Any pytree in and out of a store: leaves named by their key paths.

A leaf's name is its key path joined with '/', one part per key (a dict key, a
sequence index, a dataclass or NamedTuple field), after `prefix`. Each part is
escaped so that every name is valid and the mapping can be undone:

- the escape character is '-'; every character outside `[A-Za-z0-9_.]`, '-'
  itself included, becomes '-' and the two upper-case hex digits of each of its
  UTF-8 bytes ('/' -> '-2F', ' ' -> '-20', '-' -> '-2D', 'é' -> '-C3-A9');
- an empty part is '-'; a part '.' is '-2E' and '..' is '-2E-2E';
- a key that is not a str is written with `str()` (an int index 0 is '0').

So any str key round-trips through `escape_part` / `unescape_part`, '/' inside a
key never splits it, and two different str keys never get the same part.

Flax metadata boxes (`nnx.Variable`, Linen's `nn.Partitioned` and other
`AxisMetadata`) add no part: `nnx.State` paths name the variables
(`layers/0/kernel`, not `layers/0/kernel/value`) and the box is rebuilt, with its
metadata, from `like`.

A typed PRNG key array (`jax.random.key`) is stored as its key data
(`jax.random.key_data`, uint32) under its name plus `-key_data` (`rng` ->
`rng-key_data`); no escaped part can end that way. `like`'s key dtype gives the
implementation back.

A `vs.VarStore` inside the tree keeps its names as they are (they are valid
already): optax's state over `store.trainable()` names Adam's first moment of
`layer/w` as `0/mu/layer/w`.

`None` and empty containers (optax's `EmptyState()`) have no leaves, so they
take no name and come back from `like`'s structure.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey

from ._errors import (
    ExtraPathError,
    InvalidNameError,
    LeafMismatchError,
    MissingPathError,
    PytreeError,
    close_names,
)
from ._names import check_name, name_problem

ESCAPE = "-"
KEY_SUFFIX = "-key_data"
_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.")
_HEX = frozenset("0123456789ABCDEF")


# -- escaping -----------------------------------------------------------------------
def escape_part(text: str) -> str:
    """One key as a valid name part; `unescape_part` undoes it.

    >>> escape_part("mlp/~/linear_0")
    'mlp-2F-7E-2Flinear_0'
    """
    if text == "":
        return ESCAPE
    if text in (".", ".."):
        return "-2E" * len(text)
    out = []
    for ch in text:
        if ch in _SAFE:
            out.append(ch)
        else:
            out.extend(f"-{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
    return "".join(out)


def unescape_part(part: str) -> str:
    """The key text that `escape_part` turned into `part`.

    Raises:
      InvalidNameError: `part` is not something `escape_part` returns.
    """
    if part == ESCAPE:
        return ""
    raw = bytearray()
    i = 0
    while i < len(part):
        ch = part[i]
        if ch == ESCAPE:
            code = part[i + 1 : i + 3]
            if len(code) != 2 or not set(code) <= _HEX:
                raise InvalidNameError(
                    f"{part!r} is not an escaped key: '-' at position {i} is not "
                    "followed by two upper-case hex digits."
                )
            raw.append(int(code, 16))
            i += 3
        elif ch in _SAFE:
            raw += ch.encode()
            i += 1
        else:
            raise InvalidNameError(f"{part!r} is not an escaped key: it has {ch!r}.")
    return raw.decode("utf-8", "surrogatepass")


def _key_text(key: Any) -> str:
    if isinstance(key, DictKey):
        key = key.key
    elif isinstance(key, GetAttrKey):
        key = key.name
    elif isinstance(key, (SequenceKey, FlattenedIndexKey)):
        key = key.idx
    return key if isinstance(key, str) else str(key)


# -- flattening ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Leaf:
    """One leaf of a pytree with its store name.

    Attributes:
      name: the store name (with `-key_data` for a typed PRNG key).
      where: the key path as `jax.tree_util.keystr` writes it, for messages.
      value: the leaf (an array, a `jax.ShapeDtypeStruct`, a scalar, ...).
      box: the Flax metadata box holding it (`nnx.Variable`, `nn.Partitioned`),
        or None.
      top: the first key of its path (None for a leaf at the root).
    """

    name: str
    where: str
    value: Any
    box: Any
    top: Any


def _box_types() -> tuple[type, ...]:
    # Flax is only consulted when the caller has imported it: a tree with Flax
    # boxes in it cannot exist otherwise, and importing Flax costs a second.
    types: list[type] = []
    nnx = sys.modules.get("flax.nnx")
    if nnx is not None:
        types.append(nnx.Variable)
    meta = sys.modules.get("flax.core.meta")
    if meta is not None:
        types.append(meta.AxisMetadata)
    return tuple(types)


def is_key(value: Any) -> bool:
    """True for a typed PRNG key array (or its `ShapeDtypeStruct`)."""
    dtype = getattr(value, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str):
        raise InvalidNameError(f"prefix must be a str, got {type(prefix).__name__} {prefix!r}.")
    prefix = prefix[:-1] if prefix.endswith("/") else prefix
    if prefix:
        check_name(prefix, what="prefix")
    return prefix


def named_leaves(tree: Any, prefix: str = "") -> list[Leaf]:
    """The leaves of `tree` in `jax.tree_util` order, each with its store name.

    Raises:
      InvalidNameError: a bad prefix, a name over the length limit, a leaf at the
        root with no prefix to name it, or two leaves with one name.
    """
    from ._store import VarStore  # at call time: the store layer sits above this one

    prefix = _check_prefix(prefix)
    boxes = _box_types()
    flat, _ = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, (VarStore, *boxes))
    )
    out: list[Leaf] = []
    seen: dict[str, str] = {}
    for path, node in flat:
        base = [escape_part(_key_text(k)) for k in path]
        if isinstance(node, VarStore):
            # Its names are valid already: they stay as they are, '/' included.
            items = [(base + [n], path + (DictKey(n),), v, None) for n, v in node.items()]
        elif boxes and isinstance(node, boxes):
            items = []
            for sub, leaf in jax.tree_util.tree_flatten_with_path(node)[0]:
                sub = sub[1:] if sub and sub[0] == GetAttrKey("value") else sub
                parts = base + [escape_part(_key_text(k)) for k in sub]
                items.append((parts, path + sub, leaf, node))
        else:
            items = [(base, path, node, None)]
        for parts, full, leaf, box in items:
            name = "/".join(([prefix] if prefix else []) + parts)
            where = jax.tree_util.keystr(full) or "<root>"
            if not name:
                raise InvalidNameError(
                    "The pytree is a single leaf, which has no key path to name it. "
                    "Pass prefix='a_name'."
                )
            if is_key(leaf):
                name += KEY_SUFFIX
            problem = name_problem(name)
            if problem is not None:
                raise InvalidNameError(
                    f"The leaf at {where} gets the name {name[:80]!r}"
                    f"{'...' if len(name) > 80 else ''}, which is not valid: {problem}. "
                    "Use shorter keys or a shorter prefix."
                )
            if name in seen:
                raise InvalidNameError(
                    f"The leaves at {seen[name]} and {where} both get the name {name!r} "
                    "(keys that print alike, e.g. 0 and '0' in a custom node). Rename one of "
                    "the keys."
                )
            seen[name] = where
            out.append(Leaf(name, where, leaf, box, full[0] if full else None))
    return out


def stored_value(leaf: Leaf) -> Any:
    """The array a store holds for `leaf` (key data for a PRNG key)."""
    value = leaf.value
    if isinstance(value, jax.ShapeDtypeStruct):
        raise PytreeError(
            f"The leaf at {leaf.where} ({leaf.name!r}) is abstract ({value}): a store "
            "holds values. Pass concrete arrays, or use the abstract tree as `like` "
            "in store.to_pytree(like)."
        )
    if is_key(value):
        return jax.random.key_data(value)
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return value
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        arr = None
        reason = str(e)
    if arr is None or arr.dtype == object or arr.dtype.kind in "SU":
        raise PytreeError(
            f"The leaf at {leaf.where} ({leaf.name!r}) is {type(value).__name__} "
            f"{value!r:.60}, not an array. Only numeric and bool leaves can be stored; "
            "make it static (not a pytree leaf) or drop it from the tree."
            + (f" ({reason})" if arr is None else "")
        )
    return jnp.asarray(arr)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Name -> array for every leaf of `tree` (see the module docstring)."""
    return {leaf.name: stored_value(leaf) for leaf in named_leaves(tree, prefix)}


# -- rebuilding ---------------------------------------------------------------------
def _expected(value: Any) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and dtype that the store must hold for `like`'s leaf `value`."""
    if is_key(value):
        data = jax.eval_shape(jax.random.key_data, value)
        return tuple(data.shape), np.dtype(data.dtype)
    if isinstance(value, (jax.Array, jax.ShapeDtypeStruct, jax.core.Tracer)):
        return tuple(value.shape), np.dtype(value.dtype)
    try:
        dtype = np.result_type(value)
    except TypeError:
        raise PytreeError(
            f"`like` has the leaf {value!r:.60} ({type(value).__name__}), which is not "
            "an array, a jax.ShapeDtypeStruct or a number."
        ) from None
    return tuple(np.shape(value)), np.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _key_impl(value: Any) -> Any:
    if isinstance(value, jax.Array):
        return jax.random.key_impl(value)
    impl = getattr(value.dtype, "_impl", None)  # no public accessor for abstract keys
    if impl is None:
        raise PytreeError(
            f"Cannot tell the PRNG implementation of the abstract key {value}. Pass a "
            "concrete key (e.g. jax.random.key(0)) in `like` instead."
        )
    return impl


def _target_sharding(value: Any) -> Any:
    """The concrete sharding of `like`'s leaf, or None when it has none."""
    sharding = getattr(value, "sharding", None)
    if sharding is None or isinstance(value, jax.core.Tracer):
        return None
    mesh = getattr(sharding, "mesh", None)
    if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
        return None  # an AbstractMesh (from eval_shape) names no devices
    return sharding


def _rebuilt(leaf: Leaf, stored: Any) -> Any:
    shape, dtype = _expected(leaf.value)
    got_shape, got_dtype = tuple(stored.shape), np.dtype(stored.dtype)
    what = "key data" if is_key(leaf.value) else "array"
    if got_shape != shape:
        raise LeafMismatchError(
            f"The leaf at {leaf.where} has shape {shape} in `like` but the store's "
            f"{what} {leaf.name!r} has shape {got_shape}. Build `like` from the model "
            "that was saved, or reshape the entry with store.merge({...})."
        )
    if got_dtype != dtype:
        raise LeafMismatchError(
            f"The leaf at {leaf.where} has dtype {dtype} in `like` but the store's "
            f"{what} {leaf.name!r} has dtype {got_dtype}. Cast the entry first, e.g. "
            f"store.merge({{{leaf.name!r}: store[{leaf.name!r}].astype({str(dtype)!r})}}), "
            "or build `like` with that dtype."
        )
    value = stored
    if is_key(leaf.value):
        value = jax.random.wrap_key_data(stored, impl=_key_impl(leaf.value))
    sharding = _target_sharding(leaf.value)
    if (
        sharding is not None
        and not isinstance(value, jax.core.Tracer)
        and value.sharding != sharding
    ):
        value = jax.device_put(value, sharding)
    return value


def _listed(names: list[str], limit: int = 10, quote: bool = True) -> str:
    shown = ", ".join(repr(n) if quote else n for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def unflatten(
    store: Mapping[str, Any],
    like: Any,
    prefix: str = "",
    *,
    on_missing: str = "error",
    on_extra: str = "error",
) -> Any:
    """A pytree with `like`'s structure and the store's arrays (see `to_pytree`)."""
    if on_missing not in ("error", "keep"):
        raise PytreeError(f"on_missing must be 'error' or 'keep', got {on_missing!r}.")
    if on_extra not in ("error", "ignore"):
        raise PytreeError(f"on_extra must be 'error' or 'ignore', got {on_extra!r}.")
    prefix = _check_prefix(prefix)
    leaves = named_leaves(like, prefix)
    treedef = jax.tree_util.tree_structure(like)
    out: list[Any] = []
    missing: list[Leaf] = []
    for leaf in leaves:
        if leaf.name in store:
            out.append(_rebuilt(leaf, store[leaf.name]))
        elif on_missing == "keep" and not isinstance(leaf.value, jax.ShapeDtypeStruct):
            out.append(leaf.value)
        else:
            missing.append(leaf)
    used = {leaf.name for leaf in leaves}
    scope = prefix + "/" if prefix else ""
    extra = [n for n in store if n.startswith(scope) and n not in used]
    under = repr(scope) if scope else "the root"
    if missing:
        extra_note = (
            f" The store has {len(extra)} entries under {under} that "
            f"`like` does not name: {_listed(extra, 5)}."
            if extra
            else ""
        )
        first = missing[0]
        raise MissingPathError(
            f"The store has no entry for {len(missing)} leaf/leaves of `like`: "
            + _listed([f"{m.name!r} (at {m.where})" for m in missing], quote=False)
            + f".{close_names(first.name, extra or list(store))}{extra_note} Check "
            "prefix= and that `like` has the structure that was saved, or pass "
            "on_missing='keep' to keep `like`'s values for these leaves."
        )
    if extra and on_extra == "error":
        raise ExtraPathError(
            f"The store has {len(extra)} entries under {under} that "
            f"`like` does not name: {_listed(extra)}. Pass the matching prefix= "
            "(e.g. prefix='params'), a `like` with these leaves, or "
            "on_extra='ignore'."
        )
    return jax.tree_util.tree_unflatten(treedef, out)
