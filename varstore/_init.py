"""Compiled initialization: one jit-compiled XLA program per device set.

`initialize_all_variables()` / `initialize_variables(var_list)` return an
`Initializer`; calling it with a key evaluates the initial values of its
variables inside the compiled programs of its plan (`_plan.py`), creating each
array directly with its variable's sharding (`out_shardings`), and returns a
`VarStore`. Programs are compiled once per set of store entries they read and
reused for every later key.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _placement
from ._errors import GraphError, InitializationError, NotFoundError, close_names
from ._expr import Const, Expr, VarRef, walk
from ._graph import Graph, get_default_graph, global_variables
from ._plan import Plan, Program, build
from ._store import VarStore, _new
from ._variable import Variable


def _derive_all(key: jax.Array, rows: np.ndarray) -> jax.Array:
    """The keys of many random leaves, derived in one batched computation:
    `fold_in(fold_in(fold_in(key, h_hi), h_lo), position)` for each row."""

    def derive(row):
        k = jax.random.fold_in(key, row[0])
        k = jax.random.fold_in(k, row[1])
        return jax.random.fold_in(k, row[2])

    if len(rows) == 0:
        return jax.random.split(key, 0)
    return jax.vmap(derive)(jnp.asarray(rows, dtype=jnp.uint32))


def as_key(key: Any) -> jax.Array:
    """A typed JAX PRNG key from a key, a legacy uint32[2] key or an int seed."""
    if isinstance(key, numbers.Integral) and not isinstance(key, bool):
        return jax.random.key(int(key))
    if isinstance(key, (jax.Array, np.ndarray)):
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ():
            return key
        if key.dtype == np.uint32 and key.shape == (2,):
            return jax.random.wrap_key_data(jnp.asarray(key))
    shape = getattr(key, "shape", None)
    dtype = getattr(key, "dtype", None)
    raise InitializationError(
        f"An initializer needs one JAX PRNG key or an int seed, got "
        f"{type(key).__name__}"
        + (f" of shape {shape} and dtype {dtype}" if shape is not None else f" {key!r}")
        + ". Pass jax.random.key(0) or 0."
    )


def _pin(value: jax.Array, zero: jax.Array) -> jax.Array:
    """The same floating-point value, behind an integer op XLA cannot fold away.

    XLA may duplicate a value's computation into each consumer's fusion, where
    FMA contraction with the consumer's arithmetic can change its last bit, so
    `c = a.initialized_value() + 1` would not equal `store[a] + 1` exactly.
    (`optimization_barrier` is dropped before fusion on CPU.) XOR with a runtime
    zero ends every contraction at the bits of the value itself.
    """
    value = jnp.asarray(value)
    if jnp.issubdtype(value.dtype, jnp.complexfloating):
        return jax.lax.complex(_pin(value.real, zero), _pin(value.imag, zero))
    if not jnp.issubdtype(value.dtype, jnp.floating):
        return value  # integer and bool arithmetic is exact
    bits = jnp.dtype(f"uint{value.dtype.itemsize * 8}")
    raw = jax.lax.bitcast_convert_type(value, bits) ^ zero.astype(bits)
    return jax.lax.bitcast_convert_type(raw, value.dtype)


class _Env:
    """Evaluates expressions inside a traced program, memoizing shared nodes."""

    def __init__(self, graph, deps, consts, leaf_key: Callable, zero):
        self.graph = graph
        self.zero = zero
        self.deps = deps
        self.consts = consts
        self.leaf_key = leaf_key
        self.memo: dict[int, jax.Array] = {}

    def _shared(self, node: Expr, root: Expr, user: Variable) -> bool:
        if self.graph is None:
            return False
        if node is root and user.name in self.graph._referenced:
            return True
        return self.graph._node_users.get(id(node), (None, 0))[1] > 1

    def value_of(self, var: Variable) -> jax.Array:
        if var.name in self.deps:
            return self.deps[var.name]
        return self.eval(var.initial_value, var)

    def eval(self, root: Expr, user: Variable) -> jax.Array:
        position = 0
        for node in walk(root):
            if node.needs_key:
                position += 1
            if id(node) in self.memo:
                continue
            if isinstance(node, VarRef):
                value = self.value_of(node.variable)
            elif isinstance(node, Const):
                value = self.consts[id(node)]
            else:
                key = self.leaf_key(node, position - 1) if node.needs_key else None
                args = [self.memo[id(c)] for c in node._children()]
                value = node._compute(key, *args)
                if self._shared(node, root, user):
                    value = _pin(value, self.zero)
            self.memo[id(node)] = value
        return self.memo[id(root)]


def _program_fn(program: Program, graph: Graph, impl):
    def run(key_data, zero, consts, deps):
        # Key data comes in as a host array: replicated input in every process.
        key = jax.random.wrap_key_data(key_data, impl=impl)
        const_values = {id(c): v for c, v in zip(program.consts, consts)}
        dep_values = dict(zip(program.deps, deps))
        keys = _derive_all(key, program.leaf_rows)
        index = program.leaf_index
        env = _Env(graph, dep_values, const_values, lambda n, _: keys[index[id(n)]], zero)
        singles = tuple(
            jnp.asarray(env.eval(v.initial_value, v), v.dtype) for v in program.singles
        )
        stacks = []
        for group in program.groups:
            rep = group.representative

            def one(keys, rep=rep):
                sub = _Env(graph, {}, {}, lambda _, i: keys[i], zero)
                return jnp.asarray(sub.eval(rep.initial_value, rep), rep.dtype)

            n, n_leaves, _ = group.derivations.shape
            keys = _derive_all(key, group.derivations.reshape(n * n_leaves, 3))
            stacks.append(jax.vmap(one)(keys.reshape(n, n_leaves)))
        return singles, tuple(stacks)

    out_shardings = (
        tuple(v.device for v in program.singles),
        tuple(_placement.stacked(g.representative.device) for g in program.groups),
    )
    return jax.jit(run, out_shardings=out_shardings)


class Initializer:
    """Initializes a fixed list of variables; call it with a key (and a store).

    >>> init_op = vs.initialize_all_variables()
    >>> store = init_op(jax.random.key(0))
    """

    def __init__(self, variables: Sequence[Variable], graph: Graph | None = None):
        self._variables = list(variables)
        self._graph = graph
        self._cache: dict[frozenset[str], tuple[Plan, list]] = {}

    @property
    def variables(self) -> list[Variable]:
        return list(self._variables)

    def _compiled(self, store_names: frozenset[str], impl):
        cache_key = (store_names, str(impl))
        if cache_key not in self._cache:
            plan = build(self._variables, store_names)
            graph = self._variables[0].graph if self._variables else None
            fns = [_program_fn(p, graph, impl) for p in plan.programs]
            self._cache[cache_key] = (plan, fns)
        return self._cache[cache_key]

    def __call__(self, key: Any, store: VarStore | None = None) -> VarStore:
        """Runs the initializer.

        Args:
          key: a JAX PRNG key or an int seed.
          store: values to keep; its entries are also what `initialized_value()`
            reads for the variables it holds.

        Returns:
          `store` (or an empty store) with every variable of this initializer set.
        """
        key = as_key(key)
        if store is not None and not isinstance(store, VarStore):
            raise InitializationError(
                f"An initializer's second argument must be a vs.VarStore, got "
                f"{type(store).__name__}. Wrap a dict with vs.VarStore(...)."
            )
        base = {} if store is None else store.to_dict()
        relevant = frozenset(n for n in base if n in _referenced_names(self._variables))
        impl = jax.random.key_impl(key)
        plan, fns = self._compiled(relevant, impl)
        key_data = np.asarray(jax.random.key_data(key))
        values: dict[str, jax.Array] = {}
        for v in plan.direct:
            values[v.name] = _place_host(np.asarray(v.initial_value.value), v.device)
        for program, fn in zip(plan.programs, fns):
            where = _placement.replicated_on(program.devices)
            consts = [_const_input(c.value, program.devices) for c in program.consts]
            deps = [_dep_input(base[n], program.devices, where) for n in program.deps]
            # Values must not depend on the sharding, and each device must compute
            # only its shard: both need the partitionable threefry.
            with jax.threefry_partitionable(True):
                singles, stacks = fn(key_data, np.uint32(0), consts, deps)
            for v, value in zip(program.singles, singles):
                values[v.name] = value
            for group, stack in zip(program.groups, stacks):
                values.update(zip((v.name for v in group.members), _split(stack, group)))
            del stacks
        base.update(values)
        return _new(base)

    def __repr__(self) -> str:
        return f"<vs.Initializer of {len(self._variables)} variables>"


# Members split per call of `_unstack`: few enough outputs to compile in a fraction
# of a second, many enough that 2,000 variables need only 250 dispatches.
SPLIT_CHUNK = 8


@functools.partial(jax.jit, static_argnums=(2, 3))
def _unstack(stack: jax.Array, start: jax.Array, count: int, sharding) -> tuple:
    block = jax.lax.dynamic_slice_in_dim(stack, start, count, axis=0)
    return tuple(jax.lax.with_sharding_constraint(block[i], sharding) for i in range(count))


def _split(stack: jax.Array, group) -> list[jax.Array]:
    """One array per member of a stacked group, on the member's sharding.

    Splitting inside the initializer would mean one output per variable, which is
    what makes XLA's compile time explode; a small program that unstacks a few
    members per call compiles once per stacked shape and keeps the per-variable
    cost at a fraction of a dispatch.
    """
    n = len(group.members)
    sharding = group.representative.device
    count = min(SPLIT_CHUNK, n)
    parts: list[jax.Array] = []
    for first in range(0, n, count):
        start = min(first, n - count)  # the last block overlaps the one before
        block = _unstack(stack, np.int32(start), count, sharding)
        parts.extend(block[first - start :])
    return parts


def _referenced_names(variables: Sequence[Variable]) -> set[str]:
    names: set[str] = set()
    seen: set[str] = set()
    todo = list(variables)
    while todo:
        v = todo.pop()
        for node in walk(v.initial_value):
            if isinstance(node, VarRef):
                names.add(node.variable.name)
                if node.variable.name not in seen:
                    seen.add(node.variable.name)
                    todo.append(node.variable)
    return names


def _place_host(value: np.ndarray, sharding) -> jax.Array:
    """A host array placed on `sharding`, each device receiving only its part
    (also when the sharding spans several processes)."""
    if sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    return jax.make_array_from_callback(value.shape, sharding, lambda idx: value[idx])


def _elsewhere(value: Any, devices: tuple) -> bool:
    """Whether a concrete array lives on other devices (or in another order) than
    the program's, which one jit call cannot mix."""
    return isinstance(value, jax.Array) and (
        _placement.device_assignment(value.sharding) != tuple(devices)
    )


def _const_input(value, devices) -> Any:
    return np.asarray(value) if _elsewhere(value, devices) else value


def _dep_input(value, devices, where) -> Any:
    return jax.device_put(value, where) if _elsewhere(value, devices) else value


def _resolve_list(var_list: Any, graph: Graph | None, what: str) -> list[Variable]:
    if isinstance(var_list, (Variable, str)):
        raise InitializationError(
            f"{what} takes a list of variables, got one {type(var_list).__name__}. "
            f"Wrap it in a list: [{var_list!r}]."
        )
    out: list[Variable] = []
    seen: set[int] = set()
    graphs = set()
    for item in var_list:
        if isinstance(item, str):
            g = graph or get_default_graph()
            var = g._lookup(item)
            if var is None:
                raise NotFoundError(
                    f"{what}: no variable named {item!r} in the default graph."
                    f"{close_names(item, g._variables)}"
                )
        elif isinstance(item, Variable):
            var = item
        else:
            raise InitializationError(
                f"{what}: expected vs.Variable objects or names, got "
                f"{type(item).__name__} {item!r}."
            )
        if id(var) in seen:
            raise InitializationError(
                f"{what}: variable {var.name!r} is listed twice. List each variable once."
            )
        seen.add(id(var))
        graphs.add(var.graph)
        out.append(var)
    if graph is not None and any(v.graph is not graph for v in out):
        bad = next(v for v in out if v.graph is not graph)
        raise GraphError(
            f"{what}: variable {bad.name!r} belongs to another graph than the one "
            "given. Declare it in that graph, or pass its own graph."
        )
    if len(graphs) > 1:
        raise GraphError(
            f"{what}: the variables come from {len(graphs)} different graphs "
            f"(e.g. {out[0].name!r} and "
            f"{next(v for v in out if v.graph is not out[0].graph).name!r}). "
            "Initialize each graph's variables separately."
        )
    return out


def initialize_variables(var_list: Sequence[Variable | str], name: str | None = None) -> Initializer:
    """An initializer of the given variables (or names in the default graph).

    >>> init_some = vs.initialize_variables([w2])
    >>> store = init_some(jax.random.key(0), store)
    """
    del name  # accepted for TensorFlow compatibility
    return Initializer(_resolve_list(var_list, None, "initialize_variables"))


variables_initializer = initialize_variables


def initialize_all_variables(graph: Graph | None = None) -> Initializer:
    """An initializer of every global variable of the default graph (as it is now).

    >>> store = vs.initialize_all_variables()(jax.random.key(0))
    """
    return Initializer(global_variables(graph), graph)


global_variables_initializer = initialize_all_variables
