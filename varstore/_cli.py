"""The `varstore` command: inspect, list, compare checkpoints and plan restores.

    varstore inspect PATH [--tensor NAME]... [--values] [--json]
    varstore ls DIR
    varstore diff A B [--values]
    varstore plan PATH --like OTHER

Every command reads varstore checkpoints, any Orbax PyTree checkpoint and
TensorFlow 1.x checkpoints (a PATH may also be a directory: its latest
checkpoint), on any number of devices, and reads no array data unless values
are asked for. Exit status: 0 success (`diff`: no differences; `plan`: the
restore would succeed), 1 differences found (`diff`) or a restore that would
fail (`plan`), 2 bad usage or an unreadable checkpoint, with one line on stderr.

Built on click (a dependency: `click>=8.1`): subcommands, `--help` on each,
usage errors with status 2, and in-process testing (`click.testing.CliRunner`)
come with it; with argparse all of that would be hand-written.
`python -m varstore.inspect_checkpoint` keeps argparse, to take TensorFlow's
flags exactly as TensorFlow's tool does.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping

import click
import numpy as np

from . import _checkpoint_state, _ckpt_io, _tf1_bundle
from ._display import format_table, human_bytes, shape_str
from ._errors import VarStoreError, close_names
from ._progress import progress
from ._restore_plan import Binding, make_plan
from ._sources import STATE_FILENAME, Entry, Source, checkpoint_exists, open_checkpoint
from .inspect_checkpoint import tf_dtype_name

__all__ = ["cli", "main"]


class UsageFailure(Exception):
    """A failure the command reports in one line, with exit status 2."""


class _Group(click.Group):
    """Turns expected failures into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click handles a closed pipe (`varstore ls | head`)
        except (VarStoreError, OSError, UsageFailure) as e:
            name = ctx.invoked_subcommand or ""
            message = " ".join(str(e).split()) or type(e).__name__
            click.echo(f"varstore {name}: error: {message}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="varstore", prog_name="varstore")
def cli() -> None:
    """Inspect, list and compare checkpoints (varstore, Orbax and TensorFlow 1.x),
    and plan restores. Exit status: 0 ok, 1 differences, 2 bad usage or an
    unreadable checkpoint."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `varstore` console script."""
    cli.main(args=argv, prog_name="varstore")


# --------------------------------------------------------------------------- helpers


def _kind(source: Source) -> str:
    if source.kind == "tf1":
        return "tf1"
    return _orbax_kind(source.path)


def _orbax_kind(path: str) -> str:
    return "varstore" if os.path.isfile(os.path.join(path, _ckpt_io.VARSTORE_METADATA)) else "orbax"


_KIND_TITLE = {
    "varstore": "varstore checkpoint",
    "orbax": "Orbax checkpoint",
    "tf1": "TensorFlow 1.x checkpoint",
}


_TF1_FILE = re.compile(r"^(?P<prefix>.+)\.(?:index|meta|data-\d{5}-of-\d{5})$")


def _open(path: str) -> Source:
    """`open_checkpoint`, with TensorFlow's hint for a file of a TF1 checkpoint."""
    try:
        return open_checkpoint(path)
    except VarStoreError as e:
        m = _TF1_FILE.match(os.path.basename(path))
        prefix = os.path.join(os.path.dirname(path), m["prefix"]) if m else None
        if prefix is not None and checkpoint_exists(prefix):
            raise UsageFailure(
                f"{path!r} is a file of the TensorFlow checkpoint {prefix!r}; pass the "
                f"checkpoint prefix: {prefix}"
            ) from None
        raise


def _dtype(e: Entry) -> str:
    return np.dtype(e.dtype).name if e.dtype is not None else (e.tf_dtype or "?")


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


@cli.command(short_help="Tensors of a checkpoint (metadata only unless --values).")
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


# --------------------------------------------------------------------------- ls

# Leftovers of interrupted saves: varstore's, Orbax's and TensorFlow's sharded-save tmp dirs.
_TMP_SUFFIX = re.compile(
    r"(\.varstore-(?:tmp|old)-.*|\.orbax-checkpoint-tmp.*|_temp(?:_[0-9a-f]+)?)$"
)
_STEP = re.compile(r"-(\d+)$")
_TF1_DATA = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
_ORBAX_FILES = (
    _ckpt_io.ORBAX_METADATA,
    _ckpt_io.ORBAX_CHECKPOINT_METADATA,
    _ckpt_io.VARSTORE_METADATA,
)


def _tree_size(path: str) -> int:
    if not os.path.isdir(path):
        return os.lstat(path).st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except FileNotFoundError:  # removed while we walk (a concurrent save)
                pass
    return total


def _tf1_files(prefix: str) -> list[str]:
    directory, base = os.path.split(prefix)

    def ours(f: str) -> bool:
        if f in (base + ".index", base + ".meta"):
            return True
        return f.startswith(base + ".data-") and _TF1_DATA.match(f) is not None

    return [os.path.join(directory, f) for f in os.listdir(directory or ".") if ours(f)]


def _tf1_status(prefix: str) -> str:
    try:
        bundle = _tf1_bundle.TF1Bundle(prefix)
    except VarStoreError:
        return "damaged"
    shards = range(bundle.num_shards)
    return "complete" if all(os.path.exists(bundle.data_file(i)) for i in shards) else "incomplete"


def _scan(directory: str) -> dict[str, dict]:
    """Checkpoint-like things in `directory`: abs path -> row fields."""
    found: dict[str, dict] = {}
    for name in sorted(os.listdir(directory)):
        full = os.path.abspath(os.path.join(directory, name))
        if os.path.isdir(full):
            if _TMP_SUFFIX.search(name):
                found[full] = {"kind": "?", "status": "incomplete"}
            elif _ckpt_io.is_checkpoint(full):
                found[full] = {"kind": _orbax_kind(full), "status": "complete"}
            elif any(os.path.exists(os.path.join(full, f)) for f in _ORBAX_FILES):
                found[full] = {"kind": "orbax", "status": "incomplete"}
        elif name.endswith(".index"):
            prefix = full[: -len(".index")]
            found[prefix] = {"kind": "tf1", "status": _tf1_status(prefix)}
        elif m := _TF1_DATA.match(name):  # data without an index: the index is written last
            prefix = os.path.abspath(os.path.join(directory, m["prefix"]))
            if not os.path.exists(prefix + ".index"):
                found.setdefault(prefix, {"kind": "tf1", "status": "incomplete"})
    return found


def _step(path: str) -> int | None:
    m = _STEP.search(_TMP_SUFFIX.sub("", os.path.basename(path)))
    return int(m[1]) if m else None


def _add_state(directory: str, rows: dict[str, dict]) -> tuple[str | None, dict, str]:
    """Adds what the state file names to `rows`; returns (its latest path, save
    times by path, why the latest is what it is)."""
    try:
        state = _checkpoint_state.read_state(directory, STATE_FILENAME)
    except VarStoreError as e:
        click.echo(f"varstore ls: warning: {' '.join(str(e).split())}", err=True)
        return None, {}, "highest step: the state file is unreadable"
    if state is None:
        return None, {}, "no state file: highest step"
    kept, times = state.all_model_checkpoint_paths, state.all_model_checkpoint_timestamps
    stamps = {os.path.abspath(p): t for p, t in zip(kept, times)} if len(times) == len(kept) else {}
    for p in (*kept, state.model_checkpoint_path):
        full = os.path.abspath(p)
        if full in rows:
            continue
        try:  # varstore follows only paths inside the directory; so does ls
            _checkpoint_state.resolve_checkpoint_path(directory, p, STATE_FILENAME)
            rows[full] = {"kind": "?", "status": "missing"}
        except VarStoreError:
            rows[full] = {"kind": "?", "status": "outside DIR"}
    return os.path.abspath(state.model_checkpoint_path), stamps, "the 'checkpoint' state file"


@cli.command(short_help="Checkpoints in a directory, with steps, times and sizes.")
@click.argument("directory", metavar="DIR")
def ls(directory: str) -> None:
    """Checkpoints in DIR: step, save time, size, complete or not, and the latest.

    Lists what the `checkpoint` state file names and what DIR holds: Orbax
    checkpoint directories, TensorFlow 1.x checkpoint prefixes, and leftovers
    of interrupted saves (incomplete). `*` marks the latest checkpoint: the
    state file's (none when it is missing, as for `latest_checkpoint`), or
    without a state file the highest step.

    \b
    Example:
      varstore ls /tmp/train
    """
    if not os.path.isdir(directory):
        what = "is not a directory" if os.path.exists(directory) else "does not exist"
        raise UsageFailure(f"{directory!r} {what}. Pass the directory a Saver saved into.")
    if _ckpt_io.is_checkpoint(directory):
        parent = os.path.dirname(os.path.abspath(directory))
        raise UsageFailure(
            f"{directory!r} is a checkpoint, not a directory of checkpoints. Use "
            f"`varstore inspect {directory}`, or `varstore ls {parent}`."
        )
    rows = _scan(directory)
    named, stamps, why = _add_state(directory, rows)
    if not rows:
        click.echo(f"No checkpoints in {directory}.")
        return
    out = []  # (path, row, step, save time, size)
    for path, row in rows.items():
        exists = row["status"] not in ("missing", "outside DIR")
        files = _tf1_files(path) if row["kind"] == "tf1" else ([path] if exists else [])
        mtime = max((os.lstat(f).st_mtime for f in files), default=None)
        size = sum(_tree_size(f) for f in files) if files else None
        out.append((path, row, _step(path), stamps.get(path, mtime), size))
    out.sort(key=lambda o: (o[2] is None, o[2] or 0, o[3] or 0, o[0]))
    done = [o for o in out if o[1]["status"] == "complete"]
    if named is not None:  # as tf.train.latest_checkpoint: none when it is not there
        latest = named if rows[named]["status"] == "complete" else None
    elif done:
        latest = max(done, key=lambda o: (o[2] is not None, o[2] or 0, o[3] or 0))[0]
    else:
        latest = None

    def shown(path: str) -> str:
        return path if rows[path]["status"] == "outside DIR" else os.path.relpath(path, directory)

    def when(t: float | None) -> str:
        return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))

    table = [
        [shown(path), row["kind"], "-" if step is None else str(step), when(t),
         "-" if size is None else human_bytes(size), row["status"]]
        for path, row, step, t, size in out
    ]  # fmt: skip
    header = ("name", "kind", "step", "saved", "size", "status")
    lines = format_table(header, table, frozenset({2, 4}))
    marks = ["  ", "  "] + ["* " if o[0] == latest else "  " for o in out]
    for mark, line in zip(marks, lines):
        click.echo(mark + line)
    if latest is not None:
        click.echo(f"latest: {shown(latest)} ({why})")
    elif named is not None:
        status = rows[named]["status"]
        click.echo(f"latest: none ({why} names {shown(named)}, which is {status})")
    if len(done) < len(out):
        click.echo(f"{len(out) - len(done)} not complete")


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


@cli.command(short_help="Compare two checkpoints; exit status 1 when they differ.")
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


# --------------------------------------------------------------------------- plan


class _Declared:
    """A declaration as `make_plan` reads it: shape, dtype and validate_shape."""

    validate_shape = True

    def __init__(self, entry: Entry):
        self.shape = tuple(entry.shape)
        self.dtype = np.dtype(entry.dtype)


@cli.command(short_help="Dry run of restoring OTHER's variables from PATH.")
@click.argument("path")
@click.option(
    "--like",
    "other",
    required=True,
    metavar="OTHER",
    help="Checkpoint whose variables (names, shapes, dtypes) to restore.",
)
def plan(path: str, other: str) -> None:
    """Dry run: what restoring OTHER's variables from PATH would do, without
    reading any array: restored, missing, shape mismatches, casts, unused
    entries and bytes to read.

    OTHER stands for the model: its names, shapes and dtypes are the declared
    variables, as if a Saver of a graph with exactly those variables restored
    PATH. Exit status 0 when the restore would succeed, 1 when it would fail
    (missing variables or shape mismatches).

    \b
    Example:
      varstore plan /tmp/pretrained/model.ckpt --like /tmp/train/model.ckpt-0
    """
    target = _open(path)
    like = _open(other)
    declared = like.entries()
    binds = [
        Binding(n, n, _Declared(e)) for n, e in sorted(declared.items()) if e.dtype is not None
    ]
    skipped = sorted(n for n, e in declared.items() if e.dtype is None)
    result = make_plan(target, binds)
    click.echo(f"Variables of {like.path} ({len(binds)}), restored from {target.path}:")
    click.echo(str(result))
    for n in skipped:
        click.echo(f"  not planned: {n} ({_dtype(declared[n])} cannot be restored into JAX)")
    if result.ok:
        click.echo("The restore would succeed.")
    else:
        click.echo(
            f"The restore would fail: {len(result.missing)} missing, "
            f"{len(result.shape_mismatches)} shape mismatches."
        )
    click.get_current_context().exit(0 if result.ok else 1)


@cli.command(short_help="Write a checkpoint (e.g. TensorFlow 1.x) as a varstore checkpoint.")
@click.argument("source", metavar="SRC")
@click.argument("out_dir", metavar="OUT_DIR")
@click.option("--name", default="model.ckpt", show_default=True, help="Checkpoint name in OUT_DIR.")
@click.option(
    "--step",
    type=int,
    default=None,
    help="global_step of the new checkpoint (default: SRC's '-N' suffix, if any).",
)
def convert(source: str, out_dir: str, name: str, step: int | None) -> None:
    """Convert SRC (a TensorFlow 1.x checkpoint prefix, any Orbax PyTree checkpoint,
    or a directory: its latest checkpoint) into a varstore checkpoint in OUT_DIR,
    with a 'checkpoint' state file. Every tensor keeps its name, shape, dtype and
    bytes (checksums verified on the way); tensors JAX cannot hold (TensorFlow
    strings and resource handles) are listed and left out.

    \b
    Example:
      varstore convert /tmp/tf_train/model.ckpt-1000 /tmp/jax_train
    """
    src = _open(source)
    entries = src.entries()
    readable = sorted(n for n, e in entries.items() if e.dtype is not None)
    if step is None:
        step = _step(src.path)
    path = os.path.join(out_dir, name) + ("" if step is None else f"-{step}")
    _ckpt_io.check_names(readable)
    # NumPy arrays straight to storage: dtypes JAX would narrow without x64
    # (TensorFlow's int64 global_step) keep their width.
    values = {n: src.read_numpy(n) for n in readable}
    os.makedirs(out_dir, exist_ok=True)
    _ckpt_io.write(path, values, blocking=True).wait()
    old = _checkpoint_state.read_state(out_dir, STATE_FILENAME)
    kept = [p for p in (old.all_model_checkpoint_paths if old else ()) if p != path]
    _checkpoint_state.write_state(
        out_dir,
        _checkpoint_state.CheckpointState(
            model_checkpoint_path=path, all_model_checkpoint_paths=(*kept, path)
        ),
        STATE_FILENAME,
    )
    for n in sorted(set(entries) - set(readable)):
        click.echo(f"left out: {n} ({_dtype(entries[n])} cannot be held by JAX)")
    click.echo(f"converted {len(readable)} tensors from {src.path} to {path}")


if __name__ == "__main__":
    main()
