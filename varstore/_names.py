"""Variable and checkpoint names: what is valid, and TensorFlow 1.x's uniquing."""

from __future__ import annotations

import re

from ._errors import InvalidNameError

MAX_NAME_BYTES = 512
_PART = re.compile(r"[A-Za-z0-9_.\-]+")
_RULE = (
    "one or more '/'-separated parts, each made of letters, digits, '_', '.' or '-' "
    "(not '.' or '..'), at most 512 bytes"
)


def name_problem(name: object) -> str | None:
    """Why `name` is not a valid variable name, or None when it is."""
    if not isinstance(name, str):
        return f"it is a {type(name).__name__}, not a str"
    if not name:
        return "it is empty"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"it is {len(name.encode('utf-8', 'surrogatepass'))} bytes long"
    if name.startswith("/") or name.endswith("/"):
        return "it starts or ends with '/'"
    for part in name.split("/"):
        if not part:
            return "it has an empty part ('//')"
        if part in (".", ".."):
            return f"it has a part {part!r}, which could escape the checkpoint directory"
        if not _PART.fullmatch(part):
            bad = sorted({c for c in part if not _PART.fullmatch(c)})
            return f"part {part!r} has the character(s) {', '.join(map(repr, bad))}"
    return None


def check_name(name: object, what: str = "variable name") -> str:
    """Returns `name` if it is valid, else raises `InvalidNameError` naming the rule."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidNameError(
            f"Invalid {what} {name!r}: {problem}. A valid name is {_RULE}, "
            "e.g. 'layer1/weights'. Rename it, e.g. replace spaces and other "
            "characters with '_'."
        )
    return name  # type: ignore[return-value]


def check_scope(scope: str) -> str:
    """Validates a name-scope prefix (without the trailing '/')."""
    return check_name(scope, what="name scope")


def unique_name(name: str, in_use: dict[str, int], undo: list | None = None) -> str:
    """TensorFlow 1.x's `Graph.unique_name`: 'w', then 'w_1', 'w_2', ...

    Names are compared case-insensitively, as TensorFlow does, and `in_use` is
    updated in place; `undo` (if given) collects `(key, previous count or None)`
    so that `release_names` can give the name back.
    """

    def mark(key: str, count: int) -> None:
        if undo is not None:
            undo.append((key, in_use.get(key)))
        in_use[key] = count

    key = name.lower()
    i = in_use.get(key, 0)
    mark(key, i + 1)
    if i == 0:
        return name
    base = key
    while key in in_use:
        key = f"{base}_{i}"
        i += 1
    mark(key, 1)
    return f"{name}_{i - 1}"


def release_names(in_use: dict[str, int], undo: list) -> None:
    """Reverts the marks `unique_name` recorded in `undo`."""
    for key, previous in reversed(undo):
        if previous is None:
            in_use.pop(key, None)
        else:
            in_use[key] = previous
    undo.clear()
