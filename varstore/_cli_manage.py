"""`varstore ls`, `plan` and `convert`: the commands about whole checkpoints.

`ls` lists the checkpoints of a directory, `plan` is a dry run of a restore
(no array is read), `convert` writes any checkpoint as a varstore one.
"""

from __future__ import annotations

import os
import re
import time

import click
import numpy as np

from . import _checkpoint_state, _ckpt_io, _tf1_bundle
from ._cli_common import UsageFailure, _dtype, _open, _orbax_kind
from ._display import format_table, human_bytes
from ._errors import VarStoreError
from ._restore_plan import Binding, make_plan
from ._sources import STATE_FILENAME, Entry

__all__ = ["convert", "ls", "plan"]


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


@click.command(short_help="Checkpoints in a directory, with steps, times and sizes.")
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


# --------------------------------------------------------------------------- plan


class _Declared:
    """A declaration as `make_plan` reads it: shape, dtype and validate_shape."""

    validate_shape = True

    def __init__(self, entry: Entry):
        self.shape = tuple(entry.shape)
        self.dtype = np.dtype(entry.dtype)


@click.command(short_help="Dry run of restoring OTHER's variables from PATH.")
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


@click.command(short_help="Write a checkpoint (e.g. TensorFlow 1.x) as a varstore checkpoint.")
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
