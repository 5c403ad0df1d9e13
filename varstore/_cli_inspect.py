"""`varstore inspect` and `varstore diff`: what checkpoints hold, and how two differ."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import click
import numpy as np

from ._cli_common import UsageFailure, _dtype, _kind, _open
from ._display import format_table, human_bytes, shape_str
from ._errors import close_names
from ._progress import progress
from ._sources import Entry, Source
from .inspect_checkpoint import tf_dtype_name

__all__ = ["diff", "inspect"]

_KIND_TITLE = {
    "varstore": "varstore checkpoint",
    "orbax": "Orbax checkpoint",
    "tf1": "TensorFlow 1.x checkpoint",
}


def _select(source: Source, names: tuple[str, ...]) -> list[str]:
    entries = source.entries()
    for n in names:
        if n not in entries:
            raise UsageFailure(
                f"Tensor {n!r} is not in checkpoint {source.path!r} ({len(entries)} "
                f"tensors).{close_names(n, entries)} List them with `varstore inspect "
                f"{source.path}`."
            )
    return list(dict.fromkeys(names)) if names else sorted(entries)


def _plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _jsonable(value: np.ndarray):
    if value.dtype.kind == "c":
        return np.stack([value.real, value.imag], axis=-1).astype(np.float64).tolist()
    if value.dtype.kind in "biu":
        return value.tolist()
    return value.astype(np.float64).tolist()  # float16/32/64, bfloat16, float8...


def _json_doc(source: Source, entries: Mapping[str, Entry], names: list[str], values) -> str:
    """One JSON document; each tensor on one line so that values stay compact.

    `values`: None, or an iterator of (name, array or None) in `names` order.
    """
    items = []
    unread = object()
    for n, value in values if values is not None else ((n, unread) for n in names):
        e = entries[n]
        item = {
            "name": n,
            "shape": list(e.shape),
            "dtype": _dtype(e),
            "tf_dtype": tf_dtype_name(e),
            "nbytes": e.nbytes,
            "sharding": e.sharding,
        }
        if value is not unread:
            item["value"] = None if value is None else _jsonable(value)
        items.append("  " + json.dumps(item))
    head = {"path": source.path, "format": _kind(source)}
    tail = {
        "total_tensors": len(names),
        "total_parameters": sum(math.prod(entries[n].shape) for n in names),
        "total_bytes": sum(entries[n].nbytes for n in names),
    }
    fields = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    fields.append(' "tensors": [\n' + ",\n".join(items) + "\n ]")
    fields += [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in tail.items()]
    return "{\n" + ",\n".join(fields) + "\n}"


# --------------------------------------------------------------------------- inspect


@click.command(short_help="Tensors of a checkpoint (metadata only unless --values).")
@click.argument("path")
@click.option(
    "--tensor", "-t", "tensors", multiple=True, metavar="NAME", help="Only this tensor (repeats)."
)
@click.option("--values", is_flag=True, help="Also read and print the values.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(path: str, tensors: tuple[str, ...], values: bool, as_json: bool) -> None:
    """Table of a checkpoint's tensors: name, shape, dtype, bytes, saved sharding.

    PATH is an Orbax checkpoint directory, a TensorFlow 1.x checkpoint prefix, or
    a directory with a `checkpoint` state file (its latest checkpoint). Reads
    metadata only, unless --values.

    \b
    Examples:
      varstore inspect /tmp/train/model.ckpt-1000
      varstore inspect /tmp/train --tensor layer1/w --values
      varstore inspect /tmp/train --json
    """
    source = _open(path)
    entries = source.entries()
    names = _select(source, tensors)

    def read_values():  # one variable at a time, so memory holds one array
        total = sum(entries[n].nbytes for n in names)
        with progress(total, len(names), f"Reading {source.path}") as bar:
            for n in names:
                yield n, (source.read_numpy(n) if entries[n].dtype is not None else None)
                bar.advance(entries[n].nbytes, 1)

    if as_json:
        click.echo(_json_doc(source, entries, names, read_values() if values else None))
        return
    click.echo(f"Checkpoint: {source.path} ({_KIND_TITLE[_kind(source)]})")
    rows = [
        [n, shape_str(e.shape), _dtype(e), human_bytes(e.nbytes), e.sharding or "-"]
        for n, e in ((n, entries[n]) for n in names)
    ]
    header = ("name", "shape", "dtype", "bytes", "saved sharding")
    for line in format_table(header, rows, frozenset({3})):
        click.echo(line)
    params = sum(math.prod(entries[n].shape) for n in names)
    nbytes = sum(entries[n].nbytes for n in names)
    click.echo(
        f"Total: {_plural(len(names), 'tensor')}, {_plural(params, 'parameter')}, "
        f"{human_bytes(nbytes)}"
    )
    for n, value in read_values() if values else ():
        click.echo(f"\n{n} {shape_str(entries[n].shape)} {_dtype(entries[n])}:")
        click.echo("<not convertible to a numpy dtype>" if value is None else str(value))


# --------------------------------------------------------------------------- diff

_CHUNK = 1 << 22  # elements compared at a time, to bound memory on huge variables


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float | None:
    """None when equal (NaN equals NaN), else max |a - b| (NaN when a NaN is unmatched)."""
    wide = np.complex128 if "c" in (a.dtype.kind, b.dtype.kind) else np.float64
    if a.dtype.kind in "biu" and b.dtype.kind in "biu":
        if np.array_equal(a, b):  # exact, even for int64 beyond 2**53
            return None
    a, b = a.reshape(-1), b.reshape(-1)
    worst, differs = 0.0, False
    for lo in range(0, a.size, _CHUNK):
        x = a[lo : lo + _CHUNK].astype(wide)
        y = b[lo : lo + _CHUNK].astype(wide)
        if np.array_equal(x, y, equal_nan=True):
            continue
        differs = True
        same_nan = np.isnan(x) & np.isnan(y)
        d = np.abs(x - y)[~same_nan]
        worst = max(worst, float(np.max(d))) if not np.isnan(d).any() else math.nan
        if math.isnan(worst):
            break
    if not differs and a.dtype.kind in "biu" and b.dtype.kind in "biu":
        return 1.0  # unequal integers that float64 cannot tell apart
    return worst if differs else None


@click.command(short_help="Compare two checkpoints; exit status 1 when they differ.")
@click.argument("a")
@click.argument("b")
@click.option(
    "--values",
    is_flag=True,
    help="Also compare values (reads both checkpoints, one variable at a time).",
)
def diff(a: str, b: str, values: bool) -> None:
    """Differences between checkpoints A and B: variables added in B, removed from
    A, reshaped, dtype-changed and, with --values, changed (max absolute difference).

    Exit status 0 when there are none, 1 when there are.

    \b
    Examples:
      varstore diff /tmp/train/model.ckpt-1000 /tmp/train/model.ckpt-2000
      varstore diff /tmp/run1 /tmp/run2 --values
    """
    src_a, src_b = _open(a), _open(b)
    ea, eb = src_a.entries(), src_b.entries()
    lines: list[list[str]] = []
    counts = dict.fromkeys(("added", "removed", "reshaped", "dtype changed", "changed"), 0)

    def report(what: str, name: str, detail: str) -> None:
        lines.append([what, name, detail])
        counts[what] = counts.get(what, 0) + 1

    for n in sorted(set(eb) - set(ea)):
        report("added", n, f"{shape_str(eb[n].shape)} {_dtype(eb[n])}")
    for n in sorted(set(ea) - set(eb)):
        report("removed", n, f"{shape_str(ea[n].shape)} {_dtype(ea[n])}")
    common = sorted(set(ea) & set(eb))
    comparable = []
    for n in common:
        x, y = ea[n], eb[n]
        if tuple(x.shape) != tuple(y.shape):
            report("reshaped", n, f"{shape_str(x.shape)} -> {shape_str(y.shape)}")
        if _dtype(x) != _dtype(y):
            report("dtype changed", n, f"{_dtype(x)} -> {_dtype(y)}")
        if tuple(x.shape) == tuple(y.shape):
            comparable.append(n)
    skipped = [n for n in comparable if ea[n].dtype is None or eb[n].dtype is None]
    skipped = skipped if values else []
    if values:
        todo = [n for n in comparable if n not in skipped]
        total = sum(ea[n].nbytes + eb[n].nbytes for n in todo)
        with progress(total, len(todo), "Comparing") as bar:
            for n in todo:  # one variable at a time: memory stays at two variables
                d = _max_abs_diff(src_a.read_numpy(n), src_b.read_numpy(n))
                if d is not None:
                    report("changed", n, f"max |A-B| = {d:.6g}")
                bar.advance(ea[n].nbytes + eb[n].nbytes, 1)
    click.echo(f"--- A: {src_a.path}")
    click.echo(f"+++ B: {src_b.path}")
    order = list(counts)
    lines.sort(key=lambda ln: (order.index(ln[0]), ln[1]))
    lines += [["not compared", n, f"({_dtype(ea[n])} values cannot be read)"] for n in skipped]
    width = max((len(ln[1]) for ln in lines), default=0)
    for what, name, detail in lines:
        click.echo(f"{what:<14} {name:<{width}}  {detail}")
    found = sum(counts.values())
    if found:
        parts = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
        click.echo(f"{found} difference{'s' if found != 1 else ''}: {parts}")
    else:
        what = "names, shapes, dtypes or values" if values else "names, shapes or dtypes"
        click.echo(f"No differences in {what} ({len(common)} variables).")
        if not values:
            click.echo("Values were not compared; pass --values to compare them.")
    click.get_current_context().exit(1 if found else 0)
