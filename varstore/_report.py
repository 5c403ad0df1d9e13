"""Which variables a store is missing (TensorFlow's uninitialized-variable reports)."""

from __future__ import annotations

from collections.abc import Sequence

from ._errors import UninitializedError
from ._graph import global_variables
from ._store import VarStore
from ._variable import Variable


def _names(var_list: Sequence[Variable | str] | None) -> list[str]:
    if var_list is None:
        return [v.name for v in global_variables()]
    return [v.name if isinstance(v, Variable) else str(v) for v in var_list]


def report_uninitialized_variables(
    store: VarStore, var_list: Sequence[Variable | str] | None = None
) -> list[str]:
    """Names of the variables in `var_list` (default: all global variables of the
    default graph) that `store` has no value for, in creation order.

    >>> vs.report_uninitialized_variables(store)
    ['layer6/w', 'layer6/b']
    """
    return [n for n in _names(var_list) if n not in store]


def is_variable_initialized(store: VarStore, var: Variable | str) -> bool:
    """Whether `store` holds a value for `var`."""
    return var in store


def assert_variables_initialized(
    store: VarStore, var_list: Sequence[Variable | str] | None = None
) -> None:
    """Raises `UninitializedError` naming every variable `store` is missing."""
    missing = report_uninitialized_variables(store, var_list)
    if missing:
        shown = ", ".join(repr(n) for n in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise UninitializedError(
            f"{len(missing)} variable(s) have no value in the store: {shown}{more}. "
            "Initialize them with vs.initialize_variables([...])(key, store) or "
            "restore them with a Saver."
        )
