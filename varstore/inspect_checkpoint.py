"""`vs.inspect_checkpoint`: TensorFlow 1.x's `inspect_checkpoint` tool, for
varstore checkpoints, any Orbax PyTree checkpoint and TensorFlow 1.x checkpoints.

It prints what `tensorflow/python/tools/inspect_checkpoint.py` (TF 1.15) prints,
line for line::

    $ python -m varstore.inspect_checkpoint --file_name=/tmp/model.ckpt
    my_v2 (DT_FLOAT) [784,200]
    step (DT_INT64) []

    # Total number of params: 156801

    $ python -m varstore.inspect_checkpoint --file_name=/tmp/model.ckpt --tensor_name=step
    tensor_name:  step
    7
    # Total number of params: 156801

Flags as TensorFlow's: `--file_name`, `--tensor_name`, `--all_tensors`,
`--all_tensor_names`, `--count_exclude_pattern`, `--printoptions k=v ...`
(applied with `numpy.set_printoptions`; values are printed by NumPy).

Deviations from TensorFlow, on purpose:

* The command exits with status 2 and ONE line on stderr (no traceback) when
  the checkpoint is missing or unreadable or the tensor is unknown, and when
  `--file_name` is missing (TensorFlow prints the message on stdout and exits
  0, or 1 for a missing `--file_name`). What TF prints on stdout before the
  failure (`tensor_name:  NAME`) is still printed. The function
  `print_tensors_in_checkpoint_file` behaves as TensorFlow's: it prints the
  message on stdout and returns.
* An unknown tensor's message is TensorFlow's `Key NAME not found in
  checkpoint`, followed by close names (`Did you mean 'my_v2'?`).
* A partitioned TF1 variable is listed once, under its name and full shape;
  TensorFlow's debug string skips it and lists each slice under an encoded
  binary key instead.
* A tensor varstore cannot read (TF1 strings, resources, variants) prints as
  `<not convertible to a numpy dtype>`, as TensorFlow 2 does.
* `file_name` may also be a directory: its latest checkpoint is inspected.
* Orbax dtypes TensorFlow lacks are named `DT_<NAME>` (`DT_FLOAT8_E3M4`).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Mapping

import numpy as np

from ._errors import NotFoundError, VarStoreError, close_names
from ._sources import Entry, Source, open_checkpoint

__all__ = ["main", "parse_numpy_printoption", "print_tensors_in_checkpoint_file", "tf_dtype_name"]

# tensorflow/core/framework/types.proto: TF's Python dtype name -> DataType enum name.
_DT_NAMES = {
    "float32": "DT_FLOAT", "float64": "DT_DOUBLE", "int32": "DT_INT32", "uint8": "DT_UINT8",
    "int16": "DT_INT16", "int8": "DT_INT8", "string": "DT_STRING", "complex64": "DT_COMPLEX64",
    "int64": "DT_INT64", "bool": "DT_BOOL", "qint8": "DT_QINT8", "quint8": "DT_QUINT8",
    "qint32": "DT_QINT32", "bfloat16": "DT_BFLOAT16", "qint16": "DT_QINT16",
    "quint16": "DT_QUINT16", "uint16": "DT_UINT16", "complex128": "DT_COMPLEX128",
    "float16": "DT_HALF", "resource": "DT_RESOURCE", "variant": "DT_VARIANT",
    "uint32": "DT_UINT32", "uint64": "DT_UINT64", "float8_e5m2": "DT_FLOAT8_E5M2",
    "float8_e4m3fn": "DT_FLOAT8_E4M3FN", "float8_e4m3fnuz": "DT_FLOAT8_E4M3FNUZ",
    "float8_e4m3b11fnuz": "DT_FLOAT8_E4M3B11FNUZ", "float8_e5m2fnuz": "DT_FLOAT8_E5M2FNUZ",
    "int4": "DT_INT4", "uint4": "DT_UINT4", "int2": "DT_INT2", "uint2": "DT_UINT2",
}  # fmt: skip

_NOT_CONVERTIBLE = "<not convertible to a numpy dtype>"


def tf_dtype_name(entry: Entry) -> str:
    """TensorFlow's enum name of an entry's dtype: `DT_FLOAT`, `DT_BFLOAT16`, ...

    >>> tf_dtype_name(Entry("w", (2,), np.dtype("float16"), 4))
    'DT_HALF'
    """
    name = entry.tf_dtype if entry.tf_dtype is not None else np.dtype(entry.dtype).name
    if name.startswith("DT_"):  # an enum value the TF1 reader does not know
        return name
    return _DT_NAMES.get(name, "DT_" + name.upper())


def _debug_string(entries: Mapping[str, Entry]) -> str:
    """TensorFlow's `CheckpointReader::DebugString`: `name (DT_X) [d0,d1]\\n` per tensor."""
    return "".join(
        f"{name} ({tf_dtype_name(e)}) [{','.join(str(d) for d in e.shape)}]\n"
        for name, e in sorted(entries.items())
    )


def _count_total_params(entries: Mapping[str, Entry], count_exclude_pattern: str = "") -> int:
    shapes = {name: e.shape for name, e in entries.items()}
    if count_exclude_pattern:
        regex = re.compile(count_exclude_pattern)
        excluded = {n for n in shapes if regex.search(n)}
        print(
            "# Excluding %d tensors (%d params) that match %s when counting."
            % (len(excluded), sum(math.prod(shapes[n]) for n in excluded), count_exclude_pattern)
        )
        shapes = {n: s for n, s in shapes.items() if n not in excluded}
    return sum(math.prod(s) for s in shapes.values())


def _value(source: Source, entries: Mapping[str, Entry], name: str):
    if entries[name].dtype is None:
        return _NOT_CONVERTIBLE
    return source.read_numpy(name)


def _print_tensors(
    file_name: str,
    tensor_name: str,
    all_tensors: bool,
    all_tensor_names: bool,
    count_exclude_pattern: str,
) -> None:
    """TensorFlow's printing; raises on the first failure instead of printing it."""
    source = open_checkpoint(file_name)
    entries = source.entries()
    if all_tensors or all_tensor_names:
        for key in sorted(entries):
            print("tensor_name: ", key)
            if all_tensors:
                print(_value(source, entries, key))
    elif not tensor_name:
        print(_debug_string(entries))
    else:
        print("tensor_name: ", tensor_name)
        if tensor_name not in entries:
            hint = close_names(tensor_name, entries)
            message = f"Key {tensor_name} not found in checkpoint"
            raise NotFoundError(message + (f".{hint}" if hint else ""))
        print(_value(source, entries, tensor_name))
    print("# Total number of params: %d" % _count_total_params(entries, count_exclude_pattern))


def _error_lines(error: BaseException, file_name: str) -> list[str]:
    """What TensorFlow prints for a failure: the message, then its hints."""
    path = os.fspath(file_name)
    if isinstance(error, re.error):
        message = f"Invalid count_exclude_pattern {error.pattern!r}: {error}."
    elif not os.path.lexists(path) and not os.path.exists(path + ".index"):
        message = (
            "Unsuccessful TensorSliceReader constructor: Failed to find any matching files "
            f"for {path}"
        )
        parent = os.path.dirname(path) or "."
        near = os.listdir(parent) if os.path.isdir(parent) else []
        hint = close_names(os.path.basename(path), near)
        message += f".{hint}" if hint else ""
    else:
        message = " ".join(str(error).split())
    lines = [message]
    named_a_file = any(ext in os.path.basename(path) for ext in (".index", ".meta", ".data"))
    if named_a_file and not isinstance(error, NotFoundError):
        proposed = ".".join(path.split(".")[0:-1])
        lines += [
            "",
            "It's likely that this is a V2 checkpoint and you need to provide the filename",
            "*prefix*.  Try removing the '.' and extension.  Try:",
            f"inspect checkpoint --file_name = {proposed}",
        ]
    return lines


_FAILURES = (VarStoreError, OSError, re.error)


def print_tensors_in_checkpoint_file(
    file_name: str | os.PathLike,
    tensor_name: str,
    all_tensors: bool,
    all_tensor_names: bool = False,
    count_exclude_pattern: str = "",
) -> None:
    """Prints tensors in a checkpoint, exactly as TensorFlow's function does.

    With no `tensor_name`, prints each tensor's name, TensorFlow dtype and shape
    (`my_v2 (DT_FLOAT) [784,200]`); with `tensor_name`, that tensor's values;
    with `all_tensor_names`/`all_tensors`, every name (and its values). Then
    `# Total number of params: N`. A failure is printed, not raised, as
    TensorFlow does.

    Args:
      file_name: a checkpoint path (Orbax directory or TF1 prefix) or a directory
        with a `checkpoint` state file.
      tensor_name: the tensor whose values to print, or "" for none.
      all_tensors: print every tensor's name and values.
      all_tensor_names: print every tensor's name.
      count_exclude_pattern: a regex; matching tensors are left out of the count.

    >>> print_tensors_in_checkpoint_file("/tmp/model.ckpt", "", False)
    my_v2 (DT_FLOAT) [784,200]
    <BLANKLINE>
    # Total number of params: 156800
    """
    try:
        _print_tensors(
            os.fspath(file_name), tensor_name, all_tensors, all_tensor_names, count_exclude_pattern
        )
    except _FAILURES as e:
        for line in _error_lines(e, os.fspath(file_name)):
            print(line)


_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")


def _parse_bool(text: str) -> bool:
    """absl's `BooleanParser`, which TensorFlow uses for boolean print options."""
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"Non-boolean argument to boolean flag: {text!r}")


def parse_numpy_printoption(kv_str: str) -> None:
    """Sets one NumPy print option from `'k=v'`, as TensorFlow's does.

    Raises:
      argparse.ArgumentTypeError: not `k=v`, an unknown option, or a bad value.

    >>> parse_numpy_printoption("threshold=10")
    """
    k_v_str = kv_str.split("=", 1)
    if len(k_v_str) != 2 or not k_v_str[0]:
        raise argparse.ArgumentTypeError("'%s' is not in the form k=v." % kv_str)
    k, v_str = k_v_str
    printoptions = np.get_printoptions()
    if k not in printoptions:
        raise argparse.ArgumentTypeError("'%s' is not a valid printoption." % k)
    v_type = type(printoptions[k])
    if v_type is type(None):
        raise argparse.ArgumentTypeError("Setting '%s' from the command line is not supported." % k)
    try:
        v = v_type(v_str) if v_type is not bool else _parse_bool(v_str)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    np.set_printoptions(**{k: v})


_USAGE = (
    "Usage: inspect_checkpoint --file_name=checkpoint_file_name "
    "[--tensor_name=tensor_to_print] [--all_tensors] [--all_tensor_names] "
    "[--count_exclude_pattern] [--printoptions]"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m varstore.inspect_checkpoint",
        description="Print the tensors of a checkpoint as TensorFlow's inspect_checkpoint does.",
    )
    parser.register("type", "bool", lambda v: v.lower() == "true")
    parser.add_argument(
        "--file_name",
        type=str,
        default="",
        help="Checkpoint filename: an Orbax checkpoint directory, a TensorFlow "
        "checkpoint prefix (the shared prefix of its files), or a directory with a "
        "'checkpoint' state file.",
    )
    parser.add_argument("--tensor_name", type=str, default="", help="Name of the tensor to inspect")
    parser.add_argument(
        "--count_exclude_pattern",
        type=str,
        default="",
        help="Pattern to exclude tensors, e.g., from optimizers, when counting.",
    )
    parser.add_argument(
        "--all_tensors",
        nargs="?",
        const=True,
        type="bool",
        default=False,
        help="If True, print the names and values of all the tensors.",
    )
    parser.add_argument(
        "--all_tensor_names",
        nargs="?",
        const=True,
        type="bool",
        default=False,
        help="If True, print the names of all the tensors.",
    )
    parser.add_argument(
        "--printoptions",
        nargs="*",
        type=parse_numpy_printoption,
        help="Argument for numpy.set_printoptions(), in the form 'k=v'.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0 ok, 2 failure or bad usage)."""
    flags = _parser().parse_args(argv)
    if not flags.file_name:
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        _print_tensors(
            flags.file_name,
            flags.tensor_name,
            flags.all_tensors,
            flags.all_tensor_names,
            flags.count_exclude_pattern,
        )
    except _FAILURES as e:
        sys.stdout.flush()
        lines = [ln for ln in _error_lines(e, flags.file_name) if ln]
        print(" ".join(lines), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
