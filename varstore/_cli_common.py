"""What the `varstore` subcommands share: opening a checkpoint and naming its kind.

`_open` is `open_checkpoint` with TensorFlow's hint for a file of a TF1
checkpoint; `UsageFailure` is the failure a command reports in one line with
exit status 2 (the group in `_cli` catches it). This module never imports
`_cli`: under `python -m varstore._cli` that module runs as `__main__`, and
importing it again would make a second group and a second `UsageFailure`.
"""

from __future__ import annotations

import os
import re

import numpy as np

from . import _ckpt_io
from ._errors import VarStoreError
from ._sources import Entry, Source, checkpoint_exists, open_checkpoint


class UsageFailure(Exception):
    """A failure the command reports in one line, with exit status 2."""


def _kind(source: Source) -> str:
    if source.kind == "tf1":
        return "tf1"
    return _orbax_kind(source.path)


def _orbax_kind(path: str) -> str:
    return "varstore" if os.path.isfile(os.path.join(path, _ckpt_io.VARSTORE_METADATA)) else "orbax"


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

