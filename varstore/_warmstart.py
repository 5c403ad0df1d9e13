"""`vs.train.init_from_checkpoint`: TensorFlow's assignment-map warm start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from . import _ckpt_io
from ._errors import CheckpointError
from ._graph import Graph, get_default_graph
from ._restore_plan import Binding, make_plan, raise_for
from ._sources import open_checkpoint
from ._store import VarStore, _new
from ._variable import Variable


def _scope_bindings(ckpt_scope: str, var_scope: str, graph: Graph, entries) -> list[Binding]:
    """TensorFlow's scope form: every graph variable under `var_scope` is read from
    the checkpoint name with `ckpt_scope` in place of `var_scope`."""
    out = []
    for var in graph.variables:
        if var_scope == "/":
            suffix = var.name
        elif var.name.startswith(var_scope):
            suffix = var.name[len(var_scope) :]
        else:
            continue
        ckpt_name = suffix if ckpt_scope == "/" else ckpt_scope + suffix
        out.append(Binding(ckpt_name, var.name, var))
    return out


def init_from_checkpoint(
    ckpt_dir_or_file: str | os.PathLike,
    assignment_map: Mapping[str, Any],
    store: VarStore | None = None,
    graph: Graph | None = None,
) -> VarStore:
    """Initializes variables from a checkpoint, as `tf.train.init_from_checkpoint`.

    Args:
      ckpt_dir_or_file: a checkpoint, or a directory (its latest checkpoint).
      assignment_map: checkpoint name -> variable, in TensorFlow's forms:
        `{"old/var": "new/var"}`, `{"old/var": variable}`,
        `{"old_scope/": "new_scope/"}` (every variable under `new_scope/` from the
        same name under `old_scope/`) and `{"/": "new_scope/"}` (every variable
        under `new_scope/` from its name without the scope).
      store: values to merge into (default: a new store).
      graph: where variable names are looked up (default: the default graph).

    Returns:
      `store` with the mapped variables set, each on its placement.

    Raises:
      CheckpointError: an entry that matches nothing, a missing tensor, or a
        shape mismatch; with several JAX processes, one that calls this while
        the others do not (after `VARSTORE_BARRIER_TIMEOUT` seconds).

    >>> store = vs.train.init_from_checkpoint(path, {"layer1/": "encoder/layer1/"})
    """
    # As Saver.restore: with several processes all of them call this together, and one
    # that calls it alone fails after VARSTORE_BARRIER_TIMEOUT seconds, not in a later hang.
    _ckpt_io.sync_processes(f"init_from_checkpoint from {os.fspath(ckpt_dir_or_file)!r}")
    graph = graph or get_default_graph()
    source = open_checkpoint(ckpt_dir_or_file)
    entries = source.entries()
    binds: list[Binding] = []
    for ckpt_key, target in assignment_map.items():
        if not isinstance(ckpt_key, str):
            raise CheckpointError(
                f"init_from_checkpoint: assignment_map keys are checkpoint names (str), "
                f"got {ckpt_key!r}."
            )
        if isinstance(target, Variable):
            found = [Binding(ckpt_key, target.name, target)]
        elif isinstance(target, str) and (target.endswith("/") or target == "/"):
            if not (ckpt_key.endswith("/") or ckpt_key == "/"):
                raise CheckpointError(
                    f"init_from_checkpoint: {ckpt_key!r} -> {target!r} maps a tensor to "
                    "a scope. Map a scope to a scope ('old/': 'new/') or a tensor to a "
                    "variable ('old/w': 'new/w')."
                )
            found = _scope_bindings(ckpt_key, target, graph, entries)
        elif isinstance(target, str):
            var = graph._lookup(target)
            if var is None:
                raise CheckpointError(
                    f"init_from_checkpoint: {ckpt_key!r} -> {target!r}: there is no "
                    f"variable {target!r} in the graph."
                )
            if ckpt_key.endswith("/"):
                raise CheckpointError(
                    f"init_from_checkpoint: {ckpt_key!r} -> {target!r} maps a scope to "
                    "a variable. Map a scope to a scope ('old/': 'new/')."
                )
            found = [Binding(ckpt_key, var.name, var)]
        else:
            raise CheckpointError(
                f"init_from_checkpoint: the target of {ckpt_key!r} must be a variable, "
                f"a variable name or a scope ending in '/', got {target!r}."
            )
        if not found:
            raise CheckpointError(
                f"init_from_checkpoint: {ckpt_key!r} -> {target!r} matches no variable "
                f"of the graph. Check the scope names: variables are named like "
                f"{graph.variables[0].name!r}." if graph.variables else
                f"init_from_checkpoint: {ckpt_key!r} -> {target!r} matches no variable: "
                "the graph has none."
            )
        binds += found
    plan = make_plan(source, binds, store)
    raise_for(plan, "error", "Fix the assignment_map's checkpoint names (see vs.train.list_variables).")
    targets = {r.ckpt_name: (r.shape, r.dtype, None) for r in plan.restored}
    by_ckpt = {}
    for b in binds:
        by_ckpt.setdefault(b.ckpt_name, []).append(b)
    for name in targets:
        shape, dtype, _ = targets[name]
        targets[name] = (shape, dtype, by_ckpt[name][0].variable.device)
    values = source.read(targets)
    base = {} if store is None else store.to_dict()
    for ckpt_name, value in values.items():
        for b in by_ckpt[ckpt_name]:
            if b.variable.device != value.sharding or b.variable.dtype != value.dtype:
                import jax

                value_b = jax.device_put(value.astype(b.variable.dtype), b.variable.device)
            else:
                value_b = value
            base[b.var_name] = value_b
    return _new(base)
