"""Text and HTML tables for people: VarStore displays and the `varstore` command.

Plain aligned text (no colour, no box drawing) so that the same table reads well
on a terminal, in a log file, in a doctest and piped into `grep`/`awk`.

`store_table`, `store_repr`, `store_html` and `treescope_repr` take any
`Mapping[str, jax.Array]` (a `vs.VarStore` in practice) and never import
`_store`, so `_store` can use them for `summary()`, `__repr__`, `_repr_html_`
and `__treescope_repr__`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "format_table",
    "human_bytes",
    "shape_str",
    "store_html",
    "store_repr",
    "store_table",
    "treescope_repr",
]

REPR_MAX_ROWS = 20  # rows a large store's repr shows before "... N more"
_ONE_LINE_MAX = 8  # stores up to this many variables keep the one-line repr


def human_bytes(n: int) -> str:
    """`1536` -> `'1.5 KiB'`; exact below 1 KiB."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.1f} {unit}"


def shape_str(shape: Sequence[int]) -> str:
    """TensorFlow's `TensorShape::DebugString`: `[784,200]`, `[]` for a scalar."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> list[str]:
    """Aligned lines: the header, a rule of dashes, then one line per row.

    Columns listed in `right` are right-aligned (numbers). Trailing spaces are
    stripped so that output compares cleanly in tests and diffs.
    """
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ]
        return "  ".join(out).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


# --------------------------------------------------------------------------- stores


def _placement_of(value: Any) -> str:
    import jax  # a store is made of JAX arrays, so JAX is imported already

    from . import _placement

    sharding = getattr(value, "sharding", None)
    if isinstance(value, jax.core.Tracer) or sharding is None:
        return "traced"
    return _placement.describe(sharding)


def _store_rows(store: Mapping[str, Any], names: Sequence[str]) -> list[list[str]]:
    rows = []
    for name in names:
        value = store[name]
        size = math.prod(value.shape)
        nbytes = size * np.dtype(value.dtype).itemsize
        shape, dtype = shape_str(value.shape), str(value.dtype)
        rows.append([name, shape, dtype, _placement_of(value), human_bytes(nbytes)])
    return rows


def _totals(store: Mapping[str, Any]) -> tuple[int, int]:
    params = nbytes = 0
    for value in store.values():
        size = math.prod(value.shape)
        params += size
        nbytes += size * np.dtype(value.dtype).itemsize
    return params, nbytes


def _total_line(store: Mapping[str, Any]) -> str:
    params, nbytes = _totals(store)
    return f"{len(store)} variables, {params:,} parameters, {human_bytes(nbytes)}"


_HEADER = ("name", "shape", "dtype", "placement", "bytes")


def store_table(store: Mapping[str, Any], max_rows: int | None = None) -> str:
    """Name, shape, dtype, placement and bytes of every variable, and the totals.

    Args:
      store: a `vs.VarStore` (any mapping of names to arrays).
      max_rows: show at most this many variables, then `... N more`; None: all.

    Returns:
      The table, ending with `Total: N variables, P parameters, B`.

    >>> print(store_table(vs.VarStore({"w": jnp.zeros((2, 3))})))
    name  shape  dtype    placement  bytes
    ----  -----  -------  ---------  -----
    w     [2,3]  float32  CPU:0       24 B
    Total: 1 variables, 6 parameters, 24 B
    """
    names = list(store)
    shown = names if max_rows is None else names[:max_rows]
    lines = format_table(_HEADER, _store_rows(store, shown), right=frozenset({4}))
    if len(shown) < len(names):
        lines.append(f"... {len(names) - len(shown)} more")
    lines.append(f"Total: {_total_line(store)}")
    return "\n".join(lines)


def store_repr(store: Mapping[str, Any], max_rows: int = REPR_MAX_ROWS) -> str:
    """`repr` of a store: one line for a few variables, a truncated table otherwise.

    >>> store_repr(small)
    'VarStore({b: [3] float32, w: [2,3] float32})'
    >>> print(store_repr(large))     # 25 variables
    VarStore(25 variables, 1,000 parameters, 3.9 KiB):
      name  shape ...
      ...
      ... 5 more
    """
    name = type(store).__name__
    if len(store) <= _ONE_LINE_MAX:
        parts = [f"{n}: {list(v.shape)} {v.dtype}" for n, v in store.items()]
        return f"{name}({{{', '.join(parts)}}})"
    names = list(store)[:max_rows]
    lines = format_table(_HEADER, _store_rows(store, names), right=frozenset({4}))
    if len(store) > len(names):
        lines.append(f"... {len(store) - len(names)} more")
    return f"{name}({_total_line(store)}):\n" + "\n".join("  " + ln for ln in lines)


def _html_table(store: Mapping[str, Any], max_rows: int) -> str:
    names = list(store)[:max_rows]
    head = "".join(f"<th>{h}</th>" for h in _HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in _store_rows(store, names)
    )
    more = len(store) - len(names)
    if more:
        body += f'<tr><td colspan="5">... {more} more</td></tr>'
    title = html.escape(f"{type(store).__name__}: {_total_line(store)}")
    return f"<div><p>{title}</p><table><tr>{head}</tr>{body}</table></div>"


class _TreescopeView:
    """Renders a store through `treescope_repr` even when the store class has no
    `__treescope_repr__` of its own."""

    def __init__(self, store: Mapping[str, Any]):
        self.store = store

    def __treescope_repr__(self, path, subtree_renderer):
        return treescope_repr(self.store, path, subtree_renderer)


def store_html(store: Mapping[str, Any], max_rows: int = 200) -> str:
    """HTML for notebooks (`_repr_html_`): treescope's interactive view when
    treescope is installed, otherwise a plain table of at most `max_rows` rows."""
    try:
        import treescope
    except ImportError:
        return _html_table(store, max_rows)
    return treescope.render_to_html(_TreescopeView(store))


def treescope_repr(store: Mapping[str, Any], path: str | None, subtree_renderer: Any):
    """`__treescope_repr__` of a store: `VarStore({'name': array, ...})` with
    treescope's array summaries (it summarizes large arrays without copying them)."""
    from treescope import repr_lib

    return repr_lib.render_dictionary_wrapper(
        object_type=type(store),
        wrapped_dict=dict(store.items()),
        path=path,
        subtree_renderer=subtree_renderer,
    )
