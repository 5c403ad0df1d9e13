"""`vs.flax`: Flax NNX and Linen models with varstore stores, Savers and graphs.

Names are the model's state paths, escaped as `vs.VarStore.from_pytree` does
(`layers/0/kernel`, `Dense_0/bias`). Partitioning annotations
(`nnx.with_partitioning`, `nn.with_partitioning`) become shardings on the mesh
given as `mesh=`, the annotation's own mesh, the array's mesh, or the current
JAX mesh; with no mesh anywhere (a single-device run) they are not applied.

>>> import varstore.flax as vsf
>>> store = vsf.from_nnx(model)              # a VarStore of the model's state
>>> vsf.update_nnx(model, store)             # and back, in place
>>> variables = vsf.declare(model)           # vs.Variables, for vs.train.Saver

This module imports Flax; `import varstore` does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
from flax import nnx
from flax.core import meta as flax_meta
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import _placement, _pytree
from ._errors import GraphError
from ._expr import zeros
from ._graph import get_default_graph
from ._store import VarStore
from ._variable import Variable

__all__ = ["declare", "from_linen", "from_nnx", "to_linen", "update_nnx"]

# Flax 0.11 renamed the module `nnx.graph` to `nnx.graphlib`.
_is_graph_node = getattr(nnx, "graphlib", getattr(nnx, "graph", None)).is_graph_node


# -- annotations -> shardings ---------------------------------------------------------
def _annotation(box: Any) -> tuple[PartitionSpec | None, Mesh | None]:
    """The partition spec and mesh that a Flax box annotates, if any."""
    if isinstance(box, nnx.Variable):
        meta = box.get_metadata()
        names = next(
            (meta[k] for k in ("out_sharding", "sharding_names", "sharding") if meta.get(k)),
            None,
        )
        mesh = meta.get("mesh")
    elif isinstance(box, flax_meta.Partitioned):
        names, mesh = box.names, box.mesh
        if isinstance(box, nn.LogicallyPartitioned):
            names = nn.logical_to_mesh_axes(names, box.rules)
    else:
        return None, None
    if names is None:
        return None, None
    if isinstance(names, NamedSharding):
        return names.spec, names.mesh
    spec = names if isinstance(names, PartitionSpec) else PartitionSpec(*names)
    if all(axis is None for axis in spec):
        return None, None  # replicated: no placement of its own
    return spec, mesh if isinstance(mesh, Mesh) else None


def _mesh_for(mesh: Mesh | None, box_mesh: Mesh | None, value: Any) -> Mesh | None:
    """`mesh=`, else the annotation's mesh, else the array's, else the current one."""
    value_mesh = getattr(getattr(value, "sharding", None), "mesh", None)
    for candidate in (mesh, box_mesh, value_mesh):
        if isinstance(candidate, Mesh):
            return candidate
    return _placement._current_mesh([])


def _placed(leaf: _pytree.Leaf, value: Any, mesh: Mesh | None) -> Any:
    """`value` on the sharding its box annotates (a no-op when it is there)."""
    spec, box_mesh = _annotation(leaf.box)
    if spec is None or isinstance(value, jax.core.Tracer):
        return value
    use = _mesh_for(mesh, box_mesh, value)
    if use is None:
        return value  # no mesh anywhere: a single-device run keeps its arrays
    sharding = _placement._named(use, spec, leaf.name)
    _placement.check_divisible(sharding, tuple(value.shape), leaf.name)
    return value if value.sharding == sharding else jax.device_put(value, sharding)


# -- NNX ----------------------------------------------------------------------------
def _nnx_state(node: Any, wrt: Any) -> Any:
    if isinstance(node, nnx.State):
        return node if wrt is ... else node.filter(wrt)
    if _is_graph_node(node):
        return nnx.state(node, wrt)
    raise GraphError(
        f"Expected an nnx.Module (or another NNX graph node such as nnx.Optimizer) "
        f"or an nnx.State, got {type(node).__name__}. For Linen variables use "
        "vs.flax.from_linen / to_linen."
    )


def from_nnx(
    node: Any, prefix: str = "", *, wrt: Any = ..., mesh: Mesh | None = None
) -> VarStore:
    """A store of an NNX module's (or optimizer's, or `nnx.State`'s) arrays.

    Names are the state paths (`layers/0/kernel`); RNG keys are stored as key
    data (`rngs/default/key-key_data`). An array annotated with
    `nnx.with_partitioning` is put on that sharding if it is not there already.

    Args:
      node: an `nnx.Module`, `nnx.Optimizer` (any NNX graph node) or `nnx.State`.
      prefix: a name before every name, e.g. "params".
      wrt: an NNX filter of the state to take (default: all of it), e.g.
        `nnx.Param`.
      mesh: the mesh for partitioning annotations (default: the annotation's
        mesh, else the current JAX mesh).

    Returns:
      A new `vs.VarStore`.

    Raises:
      PlacementError: an annotation that does not fit the mesh.

    >>> store = vsf.from_nnx(model, "params", wrt=nnx.Param)
    """
    values = {}
    for leaf in _pytree.named_leaves(_nnx_state(node, wrt), prefix):
        values[leaf.name] = _placed(leaf, _pytree.stored_value(leaf), mesh)
    return VarStore(values)


def update_nnx(
    node: Any,
    store: VarStore,
    prefix: str = "",
    *,
    wrt: Any = ...,
    on_missing: str = "error",
    on_extra: str = "error",
) -> None:
    """Writes the store's values into an NNX module (or optimizer) in place.

    Each value goes onto the sharding of the array it replaces, with its dtype
    checked; RNG keys come back as keys.

    Args:
      node: an `nnx.Module` or other NNX graph node.
      store: the values, named as `from_nnx` names them.
      prefix: where the node's names are in the store.
      wrt: an NNX filter of the state to write (default: all of it).
      on_missing: "error", or "keep" to leave arrays the store lacks unchanged.
      on_extra: "error" for store entries under `prefix` the node does not
        have, or "ignore".

    Raises:
      MissingPathError, ExtraPathError, LeafMismatchError: as
        `VarStore.to_pytree`; the node is left unchanged.

    >>> vsf.update_nnx(model, saver.restore(path), "params", wrt=nnx.Param)
    """
    state = _nnx_state(node, wrt)
    new = _pytree.unflatten(store, state, prefix, on_missing=on_missing, on_extra=on_extra)
    nnx.update(node, new)


# -- Linen --------------------------------------------------------------------------
def from_linen(variables: Any, prefix: str = "", *, mesh: Mesh | None = None) -> VarStore:
    """A store of Linen variables (`model.init(...)`'s `{"params": ...}` dict).

    `nn.Partitioned` boxes add no name part; annotated arrays are put on their
    sharding.

    Args:
      variables: the variables dict (or only its "params"), boxed or not.
      prefix: a name before every name.
      mesh: the mesh for partitioning annotations (default: the box's mesh, else
        the current JAX mesh).

    Returns:
      A new `vs.VarStore`, e.g. with `params/Dense_0/kernel`.

    >>> store = vsf.from_linen(model.init(key, x))
    """
    values = {}
    for leaf in _pytree.named_leaves(variables, prefix):
        values[leaf.name] = _placed(leaf, _pytree.stored_value(leaf), mesh)
    return VarStore(values)


def to_linen(
    store: VarStore,
    like: Any,
    prefix: str = "",
    *,
    mesh: Mesh | None = None,
    on_missing: str = "error",
    on_extra: str = "error",
) -> Any:
    """Linen variables with `like`'s structure (boxes included) from a store.

    Args:
      store: the values, named as `from_linen` names them.
      like: the variables, or their abstract form:
        `jax.eval_shape(model.init, key, x)`.
      prefix: where the variables are in the store.
      mesh: the mesh for partitioning annotations (default: the box's mesh, else
        the current JAX mesh); annotated arrays are put on their sharding, other
        arrays on `like`'s concrete sharding, if any.
      on_missing, on_extra: as `VarStore.to_pytree`.

    Returns:
      The variables dict.

    >>> variables = vsf.to_linen(saver.restore(path), jax.eval_shape(model.init, key, x))
    """
    out = _pytree.unflatten(store, like, prefix, on_missing=on_missing, on_extra=on_extra)
    leaves = [_placed(leaf, leaf.value, mesh) for leaf in _pytree.named_leaves(out, prefix)]
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out), leaves)


# -- declarations -------------------------------------------------------------------
def _trainable(tree: Any, leaf: _pytree.Leaf) -> bool:
    if isinstance(leaf.box, nnx.Variable):
        return isinstance(leaf.box, nnx.Param)
    if isinstance(tree, Mapping) and "params" in tree:  # Linen collections
        return leaf.top == jax.tree_util.DictKey("params")
    return True


def _initial(leaf: _pytree.Leaf) -> Any:
    value = leaf.value
    if isinstance(value, jax.ShapeDtypeStruct):
        if _pytree.is_key(value):
            value = jax.eval_shape(jax.random.key_data, value)
        return zeros(value.shape, value.dtype)
    return _pytree.stored_value(leaf)


def _placement_of(leaf: _pytree.Leaf, mesh: Mesh | None) -> Any:
    """What to pass as `device=`: the annotation, else a concrete mesh sharding of
    the value, else None (the `vs.device` context decides)."""
    spec, box_mesh = _annotation(leaf.box)
    if spec is not None:
        use = _mesh_for(mesh, box_mesh, leaf.value)
        if use is not None:
            return _placement._named(use, spec, leaf.name)
    sharding = getattr(leaf.value, "sharding", None)
    if isinstance(sharding, NamedSharding):
        if isinstance(sharding.mesh, Mesh):
            return sharding
        if mesh is not None:
            return _placement._named(mesh, sharding.spec, leaf.name)
    return None


def declare(
    target: Any,
    prefix: str = "",
    *,
    wrt: Any = ...,
    mesh: Mesh | None = None,
    trainable: bool | None = None,
) -> dict[str, Variable]:
    """Declares one `vs.Variable` per array of a Flax model in the default graph.

    Then `vs.train.Saver()`, `plan_restore`, `init_from_checkpoint` and
    `restore(..., on_missing="skip")` work on the model, and
    `vs.initialize_all_variables()` gives its values. A variable's name is its
    state path (after the current `vs.name_scope` and `prefix`); its initial
    value is the model's current array, or zeros for abstract state
    (`nnx.eval_shape`); its placement is the partitioning annotation on `mesh`,
    else the array's mesh sharding, else the `vs.device` context. `nnx.Param`s
    (Linen: the "params" collection) are trainable, other state is not.

    Args:
      target: an `nnx.Module` (or other NNX graph node), an `nnx.State`
        (concrete or abstract), Linen variables, or any pytree of arrays.
      prefix: a name before every name.
      wrt: for NNX targets, a filter of the state to declare (default: all).
      mesh: the mesh for partitioning annotations.
      trainable: overrides the trainable flag of every variable.

    Returns:
      Name -> `vs.Variable`, in the order of the state's leaves.

    Raises:
      GraphError: a name already declared in the graph; nothing is declared.
      PlacementError: an annotation that does not fit the mesh.

    >>> variables = vsf.declare(model)
    >>> saver = vs.train.Saver()  # every variable of the model
    """
    if isinstance(target, nnx.State) or _is_graph_node(target):
        tree = _nnx_state(target, wrt)
    else:
        tree = target
    graph = get_default_graph()
    scope = graph._scope + "/" if graph._scope else ""
    leaves = _pytree.named_leaves(tree, prefix)
    taken = [scope + leaf.name for leaf in leaves if _clashes(graph, scope + leaf.name)]
    if taken:
        raise GraphError(
            f"vs.flax.declare: {len(taken)} name(s) clash with variables already in the "
            f"graph, e.g. {taken[0]!r} (taken, or a variable and a scope at once); "
            "the model's variables must be named by their paths. Declare each model "
            "once per graph: "
            "call vs.reset_default_graph(), use `with vs.Graph().as_default():`, or "
            "pass another prefix=."
        )
    # Everything that can fail is worked out before the first declaration, so
    # that an error declares nothing.
    specs = []
    for leaf in leaves:
        initial = _initial(leaf)
        placement = _placement_of(leaf, mesh)
        if isinstance(placement, NamedSharding):
            _placement.check_divisible(placement, tuple(initial.shape), scope + leaf.name)
        flag = _trainable(tree, leaf) if trainable is None else trainable
        specs.append((leaf.name, initial, placement, flag))
    out: dict[str, Variable] = {}
    for name, initial, placement, flag in specs:
        var = Variable(initial, name=name, trainable=flag, device=placement)
        out[var.name] = var
    return out


def _clashes(graph: Any, name: str) -> bool:
    """Whether declaring `name` would be renamed or refused by the graph."""
    if name.lower() in graph._names_in_use or name in graph._prefixes:
        return True
    parts = name.split("/")
    return any(graph._lookup("/".join(parts[:i])) for i in range(1, len(parts)))
