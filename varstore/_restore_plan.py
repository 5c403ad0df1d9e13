"""What a restore would do, found from metadata alone.

`bindings(var_list)` turns a Saver's `var_list` (None, a list of variables or
names, or a dict of checkpoint name -> variable) into (checkpoint name, variable
name, variable) triples; `make_plan` matches them against a checkpoint's entries.
`Saver.restore` executes such a plan, and `vs.train.plan_restore` returns it as a
dry run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ._display import shape_str
from ._errors import CheckpointError, InvalidNameError, close_names
from ._names import check_name
from ._sources import Entry, Source, open_checkpoint

if TYPE_CHECKING:  # declarations (and JAX) are imported by the Saver paths that need them
    from ._variable import Variable


@dataclasses.dataclass(frozen=True)
class Binding:
    """One saved variable: its name in the checkpoint and in the store."""

    ckpt_name: str
    var_name: str
    variable: Variable | None  # None: a name with no declaration in the graph


def _var_and_name(item: Any, where: str) -> tuple[str, Variable | None]:
    from ._graph import get_default_graph
    from ._variable import Variable

    if isinstance(item, Variable):
        return item.name, item
    if isinstance(item, str):
        check_name(item)
        return item, get_default_graph()._lookup(item)
    raise CheckpointError(
        f"{where}: expected a vs.Variable or a variable name, got "
        f"{type(item).__name__} {item!r}."
    )


def bindings(var_list: Any, allow_empty: bool = False) -> list[Binding]:
    """Normalizes a Saver's `var_list`.

    Raises:
      CheckpointError: duplicates, nesting clashes, or nothing to save.
      InvalidNameError: a checkpoint name that is not a valid name.
    """
    from ._graph import global_variables
    from ._variable import Variable

    out: list[Binding] = []
    if var_list is None:
        out = [Binding(v.name, v.name, v) for v in global_variables()]
    elif isinstance(var_list, Mapping):
        for ckpt_name, item in var_list.items():
            if not isinstance(ckpt_name, str):
                raise InvalidNameError(
                    f"Saver: checkpoint names must be str, got {ckpt_name!r}."
                )
            check_name(ckpt_name, what="checkpoint name")
            name, var = _var_and_name(item, f"Saver entry {ckpt_name!r}")
            out.append(Binding(ckpt_name, name, var))
    elif isinstance(var_list, (Variable, str)):
        raise CheckpointError(
            f"Saver: var_list must be a list or a dict, got one {type(var_list).__name__}. "
            f"Wrap it in a list: [{var_list!r}]."
        )
    else:
        for item in var_list:
            name, var = _var_and_name(item, "Saver")
            out.append(Binding(name, name, var))
    seen_ckpt: dict[str, Binding] = {}
    seen_var: dict[str, Binding] = {}
    for b in out:
        if b.var_name in seen_var and not isinstance(var_list, Mapping):
            raise CheckpointError(
                f"Saver: variable {b.var_name!r} is listed twice. List each variable once."
            )
        if b.ckpt_name in seen_ckpt:
            raise CheckpointError(
                f"Saver: the checkpoint name {b.ckpt_name!r} is used twice. Give each "
                "variable its own name."
            )
        seen_ckpt[b.ckpt_name] = b
        seen_var[b.var_name] = b
    for b in out:
        parts = b.ckpt_name.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in seen_ckpt:
                raise CheckpointError(
                    f"Saver: checkpoint names {prefix!r} and {b.ckpt_name!r} cannot both "
                    "be saved: a checkpoint nests names on '/', so a name cannot be both "
                    "a variable and a scope. Rename one of them in the dict."
                )
    if not out and not allow_empty:
        raise CheckpointError(
            "Saver: there are no variables to save. Declare variables first, pass "
            "var_list=..., or pass allow_empty=True."
        )
    return out


@dataclasses.dataclass(frozen=True)
class Restored:
    """One variable a restore reads."""

    var_name: str
    ckpt_name: str
    shape: tuple[int, ...]  # the shape it gets
    dtype: np.dtype  # the dtype it gets
    saved_dtype: np.dtype
    nbytes: int  # bytes read from the checkpoint


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A variable whose declared shape differs from the saved one."""

    var_name: str
    ckpt_name: str
    declared_shape: tuple[int, ...]
    saved_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class RestorePlan:
    """What a restore of `path` would do; built from metadata only.

    Attributes:
      path: the checkpoint.
      restored: variables it reads, with the shape and dtype each gets.
      missing: variable names (with checkpoint names) absent from the checkpoint.
      unused: checkpoint entries it does not read.
      shape_mismatches: variables whose declared shape differs from the saved one.
      dtype_casts: `(variable, saved dtype, declared dtype)` for cast variables.
      bytes_to_read: the bytes the restore reads.
    """

    path: str
    restored: tuple[Restored, ...]
    missing: tuple[tuple[str, str], ...]
    unused: tuple[str, ...]
    shape_mismatches: tuple[Mismatch, ...]
    dtype_casts: tuple[tuple[str, np.dtype, np.dtype], ...]
    bytes_to_read: int

    @property
    def ok(self) -> bool:
        """True when a restore would succeed without `on_missing="skip"`."""
        return not self.missing and not self.shape_mismatches

    def __str__(self) -> str:
        lines = [f"Restore plan for {self.path}:"]
        lines.append(
            f"  restores {len(self.restored)} variable(s), "
            f"{self.bytes_to_read:,} bytes to read"
        )
        for r in self.restored:
            rename = f" <- {r.ckpt_name}" if r.ckpt_name != r.var_name else ""
            lines.append(f"    {r.var_name}{rename} {shape_str(r.shape)} {r.dtype}")
        if self.dtype_casts:
            lines.append(f"  casts {len(self.dtype_casts)}:")
            lines += [f"    {n}: {a} -> {b}" for n, a, b in self.dtype_casts]
        if self.shape_mismatches:
            lines.append(f"  shape mismatches {len(self.shape_mismatches)}:")
            lines += [
                f"    {m.var_name}: declared {shape_str(m.declared_shape)}, saved "
                f"{shape_str(m.saved_shape)}"
                for m in self.shape_mismatches
            ]
        if self.missing:
            lines.append(f"  missing from the checkpoint {len(self.missing)}:")
            lines += [
                f"    {v}" + (f" (as {c})" if c != v else "") for v, c in self.missing
            ]
        if self.unused:
            lines.append(f"  checkpoint entries not read {len(self.unused)}:")
            lines += [f"    {n}" for n in self.unused]
        return "\n".join(lines)


def make_plan(source: Source, binds: Sequence[Binding], store: Mapping | None = None) -> RestorePlan:
    """Matches `binds` against the entries of `source`."""
    entries = source.entries()
    restored, missing, mismatches, casts = [], [], [], []
    used: set[str] = set()
    for b in binds:
        entry: Entry | None = entries.get(b.ckpt_name)
        if entry is None:
            missing.append((b.var_name, b.ckpt_name))
            continue
        used.add(b.ckpt_name)
        if entry.dtype is None:
            raise CheckpointError(
                f"Checkpoint {source.path!r} holds {b.ckpt_name!r} as "
                f"{entry.tf_dtype}, which cannot be restored into a JAX array."
            )
        saved_shape = tuple(entry.shape)
        if b.variable is not None:
            declared, dtype = b.variable.shape, b.variable.dtype
            if declared != saved_shape and b.variable.validate_shape:
                mismatches.append(Mismatch(b.var_name, b.ckpt_name, declared, saved_shape))
                continue
        elif store is not None and b.var_name in store:
            dtype = np.dtype(store[b.var_name].dtype)
        else:
            dtype = np.dtype(entry.dtype)
        if dtype != entry.dtype:
            casts.append((b.var_name, np.dtype(entry.dtype), dtype))
        restored.append(
            Restored(b.var_name, b.ckpt_name, saved_shape, dtype, np.dtype(entry.dtype), entry.nbytes)
        )
    unused = tuple(n for n in sorted(entries) if n not in used)
    return RestorePlan(
        source.path,
        tuple(restored),
        tuple(missing),
        unused,
        tuple(mismatches),
        tuple(casts),
        sum(r.nbytes for r in restored),
    )


def plan_restore(path: str | os.PathLike, var_list: Any = None) -> RestorePlan:
    """A dry run of `Saver(var_list).restore(path)`: reads no array.

    >>> plan = vs.train.plan_restore("/tmp/model.ckpt")
    >>> plan.missing, plan.bytes_to_read
    ((), 628000)
    """
    return make_plan(open_checkpoint(path), bindings(var_list, allow_empty=True))


_MISSING_FIX = (
    "Pass on_missing='skip' to restore the others and initialize these with "
    "vs.initialize_variables, or restore with a Saver whose var_list leaves them out."
)


def raise_for(plan: RestorePlan, on_missing: str, missing_fix: str = _MISSING_FIX) -> None:
    """The `CheckpointError` a restore gives for `plan`, if any."""
    if plan.shape_mismatches:
        m = plan.shape_mismatches[0]
        more = len(plan.shape_mismatches) - 1
        raise CheckpointError(
            f"Variable {m.var_name!r} has shape {m.declared_shape} but checkpoint "
            f"{plan.path!r} holds {m.ckpt_name!r} with shape {m.saved_shape}"
            + (f" ({more} more shape mismatches)" if more else "")
            + ". Declare the variable with the saved shape, leave it out of the "
            "Saver's var_list, or declare it with validate_shape=False."
        )
    if plan.missing and on_missing == "error":
        names = [v if v == c else f"{v} (as {c})" for v, c in plan.missing]
        shown = ", ".join(repr(n) for n in names[:10])
        more = f" and {len(names) - 10} more" if len(names) > 10 else ""
        hint = close_names(plan.missing[0][1], plan.unused)
        raise CheckpointError(
            f"Checkpoint {plan.path!r} has no value for {len(names)} variable(s): "
            f"{shown}{more}.{hint} {missing_fix}"
        )
