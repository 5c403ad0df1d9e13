"""Helpers shared by several test modules (no tests here)."""

import importlib
import json
import os
import re
import select


def sealed(meta):
    """`meta` as varstore_metadata.json bytes that pass the file's own checksum, as a
    hostile writer (or a buggy tool) would produce them: what the parser must then
    withstand on its own, so that the checks behind the checksum are what is tested."""
    meta = {k: v for k, v in meta.items() if k != "metadata_checksum"}
    text = json.dumps(meta)
    seal = None
    for module in ("varstore._ckpt_hash", "varstore._ckpt_io"):
        try:
            seal = getattr(importlib.import_module(module), "_seal_metadata", None)
        except ImportError:
            continue
        if seal is not None:
            break
    if seal is None:  # a format without a metadata checksum
        return text.encode()
    return seal(text, meta.get("hash") if meta.get("hash") in ("xxh3_64", "crc32") else "xxh3_64")


def drain(master: int) -> str:
    """What was written to a pseudo-terminal so far, without ANSI escape sequences."""
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        out += os.read(master, 1 << 16)
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode())
