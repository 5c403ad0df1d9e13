"""`vs.VarStore`: an immutable mapping from variable names to arrays.

It is a JAX pytree whose names are static and whose arrays are leaves (keyed by
name, so `jax.tree_util.keystr` shows them), so it flows through `jax.jit`,
`jax.grad`, `jax.vmap`, `jax.tree.map` and optax unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey

from . import _display
from ._errors import NotFoundError, ShapeError, VarStoreError, close_names
from ._graph import Graph, get_default_graph, trainable_variables
from ._expr import _numeric
from ._names import check_name
from ._variable import Variable


def _name_of(key: Any) -> str:
    if isinstance(key, Variable):
        return key.name
    if isinstance(key, str):
        return key
    raise VarStoreError(
        f"A VarStore is indexed by a vs.Variable or a variable name (str), got "
        f"{type(key).__name__} {key!r}."
    )


class VarStore(Mapping):
    """Immutable `Mapping[str, jax.Array]` of variable values; a JAX pytree.

    >>> store = vs.VarStore({"w": jnp.zeros(3)})
    >>> store = store.assign("w", jnp.ones(3))
    >>> float(store["w"].sum())
    3.0
    """

    __slots__ = ("_names", "_values")

    def __init__(self, mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = ()) -> None:
        items = dict(mapping.items() if isinstance(mapping, Mapping) else mapping)
        values: dict[str, Any] = {}
        for key, value in items.items():
            name = check_name(_name_of(key))
            if name in values:
                raise VarStoreError(f"VarStore: the name {name!r} is given twice.")
            values[name] = _as_array(value, name)
        _check_nesting(values)
        _set(self, values)

    # -- Mapping -------------------------------------------------------------
    def __getitem__(self, key: Any) -> jax.Array:
        name = _name_of(key)
        try:
            return self._values[name]
        except KeyError:
            raise NotFoundError(
                f"Variable {name!r} is not in this store ({len(self)} variables)."
                f"{close_names(name, self._names)} Initialize it with "
                "vs.initialize_variables([...]) or restore it with a Saver."
            ) from None

    def __contains__(self, key: object) -> bool:
        if isinstance(key, Variable):
            key = key.name
        return isinstance(key, str) and key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        # Element-wise comparison of arrays has no single truth value.
        return self is other

    def __setattr__(self, name: str, value: Any) -> None:
        raise VarStoreError(
            "A VarStore is immutable. Use store.assign(...), store.update(...) or "
            "store.merge(...), which return a new store."
        )

    def __setitem__(self, key: Any, value: Any) -> None:
        raise VarStoreError(
            f"A VarStore is immutable: use store = store.assign({_name_of(key)!r}, value)."
        )

    # -- updates -------------------------------------------------------------
    def assign(self, var: Variable | str, value: jax.typing.ArrayLike) -> VarStore:
        """A new store where `var` holds `value`, with the variable's dtype and
        sharding. A shape change is a `ShapeError` unless the variable was declared
        with `validate_shape=False`."""
        name = _name_of(var)
        variable = _variable_for(var)
        return self._replace({name: self._conformed(name, variable, value, op="assign")})

    def assign_add(self, var: Variable | str, delta: jax.typing.ArrayLike) -> VarStore:
        """A new store where `var` holds `store[var] + delta`."""
        return self._update_by(var, delta, "assign_add", jnp.add)

    def assign_sub(self, var: Variable | str, delta: jax.typing.ArrayLike) -> VarStore:
        """A new store where `var` holds `store[var] - delta`."""
        return self._update_by(var, delta, "assign_sub", jnp.subtract)

    def _update_by(self, var, delta, op: str, fn) -> VarStore:
        name = _name_of(var)
        current = self[name]
        value = _conformed_value(name, current, _near(jnp.asarray(delta), current), op, True)
        return self._replace({name: self._place(current, fn(current, value))})

    def update(self, mapping: Mapping[Any, Any]) -> VarStore:
        """A new store with several variables assigned (existing names keep their
        dtype, sharding and shape rules; new names are added as given)."""
        changes: dict[str, Any] = {}
        for key, value in mapping.items():
            name = check_name(_name_of(key))
            if name in self._values or isinstance(key, Variable):
                changes[name] = self._conformed(name, _variable_for(key), value, "update")
            else:
                changes[name] = _as_array(value, name)
        return self._replace(changes)

    def merge(self, other: Mapping[Any, Any]) -> VarStore:
        """A new store with every entry of `other` added; `other` wins on clashes."""
        other = other if isinstance(other, VarStore) else VarStore(other)
        return self._replace(dict(other._values))

    def subset(self, vars_or_names: Iterable[Variable | str]) -> VarStore:
        """A new store with only the given variables (each must be present)."""
        names = [_name_of(v) for v in vars_or_names]
        return _new({n: self[n] for n in names})

    def trainable(self, graph: Graph | None = None) -> VarStore:
        """The entries that are trainable variables of `graph` (default graph)."""
        names = {v.name for v in trainable_variables(graph)}
        return _new({n: v for n, v in self._values.items() if n in names})

    def to_dict(self) -> dict[str, jax.Array]:
        """A plain dict of name -> array (sorted by name)."""
        return dict(self._values)

    # -- pytrees -------------------------------------------------------------
    @classmethod
    def from_pytree(cls, tree: Any, prefix: str = "") -> VarStore:
        """A store with one entry per leaf of any pytree, named by its key path.

        A name is `prefix` and the leaf's keys (dict keys, sequence indices,
        dataclass and NamedTuple fields, `nnx.State` paths) joined with '/'.
        Each key is escaped so that every name is valid and can be undone: '-'
        escapes, and every character outside `[A-Za-z0-9_.]` ('-' included)
        becomes '-' and the upper-case hex of its UTF-8 bytes ('/' -> '-2F',
        ' ' -> '-20', '-' -> '-2D'); an empty key is '-', a key '.' is '-2E' and
        '..' is '-2E-2E'; non-str keys use `str()`. Flax boxes (`nnx.Variable`,
        `nn.Partitioned`) add no part; a `VarStore` in the tree keeps its names
        (`{"mu": store}` gives `mu/layer/w`). A typed PRNG key is stored as its
        `jax.random.key_data` under its name plus '-key_data'. `None` and empty
        subtrees (optax's `EmptyState()`) have no leaves: `to_pytree` gets them
        back from `like`. Arrays keep their dtype (bfloat16 too) and sharding.

        Args:
          tree: any pytree of arrays (NumPy arrays and Python numbers become JAX
            arrays).
          prefix: a valid name to put before every name, e.g. "params".

        Returns:
          A new store.

        Raises:
          InvalidNameError: a name over 512 bytes, two leaves with one name (keys
            that print alike), or a single leaf without a prefix.
          PytreeError: a leaf that is not an array, or an abstract one.

        >>> store = vs.VarStore.from_pytree({"params": params, "opt": opt_state})
        >>> list(store)[:2]
        ['opt/0/count', 'opt/0/mu/dense/bias']
        """
        from ._pytree import flatten

        return cls(flatten(tree, prefix))

    def to_pytree(
        self,
        like: Any,
        prefix: str = "",
        *,
        on_missing: str = "error",
        on_extra: str = "error",
    ) -> Any:
        """A pytree with the structure of `like`, its leaves read from this store.

        The inverse of `VarStore.from_pytree`: each leaf of `like` (an array, a
        `jax.ShapeDtypeStruct`, a typed PRNG key, a number) is looked up under the
        same name and must have the same shape and dtype; keys come back as keys
        of `like`'s implementation; a leaf whose `like` has a concrete sharding is
        put on it. Flax boxes and their metadata come from `like`.

        Args:
          like: a pytree, possibly abstract (`jax.eval_shape`, `nnx.eval_shape`).
          prefix: read the names under this prefix.
          on_missing: "error", or "keep" to keep `like`'s (concrete) leaf where
            the store has no entry.
          on_extra: "error" when the store has entries under `prefix` that `like`
            does not name, or "ignore".

        Returns:
          The rebuilt pytree.

        Raises:
          MissingPathError: names (and key paths) of leaves the store lacks.
          ExtraPathError: store entries `like` has no leaf for.
          LeafMismatchError: a shape or dtype that differs from `like`'s.

        >>> opt_state = store.to_pytree(jax.eval_shape(tx.init, params), prefix="opt")
        """
        from ._pytree import unflatten

        return unflatten(self, like, prefix, on_missing=on_missing, on_extra=on_extra)

    # -- display -------------------------------------------------------------
    def summary(self) -> str:
        """A table of name, shape, dtype, placement and bytes, with totals."""
        return _display.store_table(self)

    def __repr__(self) -> str:
        return _display.store_repr(self)

    def _repr_html_(self) -> str:
        return _display.store_html(self)

    def __treescope_repr__(self, path, subtree_renderer):
        return _display.treescope_repr(self, path, subtree_renderer)

    # -- internals -----------------------------------------------------------
    def _replace(self, changes: Mapping[str, Any]) -> VarStore:
        values = dict(self._values)
        values.update(changes)
        if any(n not in self._values for n in changes):
            _check_nesting(values)
        return _new(values)

    def _conformed(self, name: str, variable: Variable | None, value: Any, op: str):
        value = value if isinstance(value, jax.Array) else jnp.asarray(value)
        if name in self._values:
            current = self._values[name]
            validate = True if variable is None else variable.validate_shape
            value = _conformed_value(name, current, value, op, validate)
            return self._place(current, value)
        if variable is None:
            raise NotFoundError(
                f"{op}: variable {name!r} is neither in this store nor declared in the "
                f"default graph.{close_names(name, self._names)} Pass the vs.Variable, "
                "or use store.merge({name: value}) to add a new entry."
            )
        like = jax.ShapeDtypeStruct(variable.shape, variable.dtype)
        value = _conformed_value(name, like, value, op, variable.validate_shape)
        if isinstance(value, jax.core.Tracer):
            return value
        return jax.device_put(value, variable.device)

    @staticmethod
    def _place(current: Any, value: Any) -> Any:
        if isinstance(current, jax.Array) and not isinstance(current, jax.core.Tracer):
            if not isinstance(value, jax.core.Tracer) and value.sharding != current.sharding:
                return jax.device_put(value, current.sharding)
        return value


def _conformed_value(name: str, current: Any, value: Any, op: str, validate: bool):
    want = np.dtype(current.dtype)
    got = np.dtype(value.dtype)
    weak = getattr(value, "weak_type", False)
    if got != want and not (weak or jnp.can_cast(got, want, casting="same_kind")):
        raise ShapeError(
            f"{op}: variable {name!r} has dtype {want} but the value has dtype {got}, "
            f"which does not convert without changing its kind. Cast it first, e.g. "
            f"value.astype({str(want)!r})."
        )
    if op in ("assign_add", "assign_sub"):
        try:
            out_shape = jnp.broadcast_shapes(tuple(current.shape), tuple(value.shape))
        except ValueError:
            out_shape = None
        if out_shape != tuple(current.shape):
            raise ShapeError(
                f"{op}: variable {name!r} has shape {tuple(current.shape)} but the delta "
                f"has shape {tuple(value.shape)}, which does not broadcast to it."
            )
    elif validate and tuple(value.shape) != tuple(current.shape):
        raise ShapeError(
            f"{op}: variable {name!r} has shape {tuple(current.shape)} but the value has "
            f"shape {tuple(value.shape)}. Reshape the value, or declare the variable "
            "with validate_shape=False to allow shape changes."
        )
    return value.astype(want) if got != want else value


def _near(value: Any, current: Any) -> Any:
    """`value` moved next to `current` when it lives on other devices."""
    if (
        isinstance(value, jax.Array)
        and isinstance(current, jax.Array)
        and not isinstance(value, jax.core.Tracer)
        and not isinstance(current, jax.core.Tracer)
        and value.sharding.device_set != current.sharding.device_set
    ):
        return jax.device_put(value, current.sharding) if value.shape == current.shape else (
            jnp.asarray(np.asarray(value))
        )
    return value


def _variable_for(key: Any) -> Variable | None:
    if isinstance(key, Variable):
        return key
    return get_default_graph()._lookup(key)


def _as_array(value: Any, name: str) -> Any:
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return value
    try:
        arr = np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise VarStoreError(f"Value of {name!r} is not an array: {e}") from None
    if not _numeric(arr.dtype):
        raise VarStoreError(
            f"Value of {name!r} has NumPy dtype {arr.dtype}: only numeric and bool "
            "arrays can be stored."
        )
    return jnp.asarray(arr)


def _check_nesting(values: Mapping[str, Any]) -> None:
    for name in values:
        parts = name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in values:
                raise VarStoreError(
                    f"A VarStore cannot hold both {prefix!r} and {name!r}: checkpoints "
                    "nest names on '/', so a name cannot be both a variable and a scope."
                )


def _set(store: VarStore, values: Mapping[str, Any]) -> None:
    names = tuple(sorted(values))
    object.__setattr__(store, "_names", names)
    object.__setattr__(store, "_values", {n: values[n] for n in names})


def _new(values: Mapping[str, Any]) -> VarStore:
    store = object.__new__(VarStore)
    _set(store, values)
    return store


def _flatten_with_keys(store: VarStore):
    return [(DictKey(n), store._values[n]) for n in store._names], store._names


def _flatten(store: VarStore):
    return [store._values[n] for n in store._names], store._names


def _unflatten(names: tuple[str, ...], leaves: Iterable[Any]) -> VarStore:
    store = object.__new__(VarStore)
    object.__setattr__(store, "_names", names)
    object.__setattr__(store, "_values", dict(zip(names, leaves)))
    return store


jax.tree_util.register_pytree_with_keys(VarStore, _flatten_with_keys, _unflatten, _flatten)
