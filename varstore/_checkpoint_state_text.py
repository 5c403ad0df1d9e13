"""TensorFlow's text-format ``CheckpointState``: the message, its parser and its printer.

``tf.compat.v1.train.Saver`` keeps, next to its checkpoints, a text-format
``CheckpointState`` protobuf (tensorflow/python/training/checkpoint_state.proto)::

    model_checkpoint_path: "model.ckpt-3"
    all_model_checkpoint_paths: "model.ckpt-2"
    all_model_checkpoint_paths: "model.ckpt-3"
    all_model_checkpoint_timestamps: 1700000000.125
    all_model_checkpoint_timestamps: 1700000600.5
    last_preserved_timestamp: 1699999999.25

This module converts that text to `CheckpointState` and back; the file itself
is the job of `_checkpoint_state`, which re-exports these names.

``_parse(text, path) -> CheckpointState``
    Parses the protobuf text format (quoted strings with C escapes,
    adjacent-string concatenation, comments, ``[a, b]`` lists, unknown fields
    skipped); raises `CheckpointError` naming the file and line on anything
    else, and when ``model_checkpoint_path`` is missing or empty (where
    TensorFlow raises ValueError). Paths are returned as the file holds them.

``_format(checkpoint_dir, state, path) -> bytes``
    The file as TensorFlow 2.x's protobuf text printer writes it, byte for
    byte: paths inside ``checkpoint_dir`` relative to it, all others absolute;
    ``model_checkpoint_path`` appended to ``all_model_checkpoint_paths`` when
    it is not its last element (as TF does); ``last_preserved_timestamp``
    omitted when None or 0.0 (proto3 cannot tell them apart).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from ._errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class CheckpointState:
    """The contents of a ``checkpoint`` state file.

    Attributes:
        model_checkpoint_path: the latest checkpoint's prefix (or directory).
        all_model_checkpoint_paths: the checkpoints still kept, oldest first;
            the latest is the last one.
        all_model_checkpoint_timestamps: seconds since the epoch at which each
            of them was saved, parallel to `all_model_checkpoint_paths`, or
            empty (``tf.compat.v1.train.Saver`` records none).
        last_preserved_timestamp: when the last checkpoint preserved by
            ``keep_checkpoint_every_n_hours`` was saved, or None.
    """

    model_checkpoint_path: str
    all_model_checkpoint_paths: tuple[str, ...] = ()
    all_model_checkpoint_timestamps: tuple[float, ...] = ()
    last_preserved_timestamp: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "all_model_checkpoint_paths", tuple(self.all_model_checkpoint_paths)
        )
        object.__setattr__(
            self,
            "all_model_checkpoint_timestamps",
            tuple(float(t) for t in self.all_model_checkpoint_timestamps),
        )


# ---------------------------------------------------------------------------
# Text-format tokenizer and parser.

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)[fF]?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<symbol>[:{}<>\[\],;\-/.])
    """,
    re.VERBOSE,
)

_SIMPLE_ESCAPES = {
    "a": b"\a", "b": b"\b", "f": b"\f", "n": b"\n", "r": b"\r", "t": b"\t",
    "v": b"\v", "\\": b"\\", "'": b"'", '"': b'"', "?": b"?",
}  # fmt: skip
_ESCAPE = re.compile(
    r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.S
)


class _ParseError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, line) tokens, without whitespace and comments."""
    tokens = []
    line = 1
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise _ParseError(line, "unexpected character %r" % text[pos])
        kind = match.lastgroup
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            tokens.append((kind, match.group(), line))
        pos = match.end()
    return tokens


def _unescape(literal: str, line: int) -> bytes:
    """The bytes a quoted text-format string literal denotes (C escapes)."""
    body = literal[1:-1]
    out = bytearray()
    pos = 0
    for match in _ESCAPE.finditer(body):
        out += body[pos : match.start()].encode("utf-8")
        octal, hex2, u4, u8, other = match.groups()
        if octal is not None:
            value = int(octal, 8)
            if value > 255:
                raise _ParseError(line, "octal escape \\%s is out of range" % octal)
            out.append(value)
        elif hex2 is not None:
            out.append(int(hex2, 16))
        elif u4 is not None or u8 is not None:
            code = int(u4 or u8, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                raise _ParseError(line, "invalid unicode escape %s" % match.group())
            out += chr(code).encode("utf-8")
        elif other in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[other]
        else:
            raise _ParseError(line, "invalid escape sequence \\%s" % other)
        pos = match.end()
    out += body[pos:].encode("utf-8")
    return bytes(out)


class _Parser:
    """Recursive-descent parser of the protobuf text format (what TF needs)."""

    def __init__(self, tokens: list[tuple[str, str, int]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def line(self) -> int:
        token = self.peek()
        if token is not None:
            return token[2]
        return self.tokens[-1][2] if self.tokens else 1

    def next(self, what: str) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise _ParseError(self.line(), "expected %s, found the end of the file" % what)
        self.pos += 1
        return token

    def accept(self, symbol: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "symbol" and token[1] == symbol:
            self.pos += 1
            return True
        return False

    def expect(self, symbol: str) -> None:
        kind, text, line = self.next("'%s'" % symbol)
        if kind != "symbol" or text != symbol:
            raise _ParseError(line, "expected '%s', found %r" % (symbol, text))

    # -- values --------------------------------------------------------------

    def string(self, field: str) -> bytes:
        kind, text, line = self.next("a quoted string for %s" % field)
        if kind != "string":
            raise _ParseError(line, "%s: expected a quoted string, found %r" % (field, text))
        value = _unescape(text, line)
        while self.peek() is not None and self.peek()[0] == "string":  # "a" "b" == "ab"
            _, text, line = self.next("string")
            value += _unescape(text, line)
        return value

    def double(self, field: str) -> float:
        negative = self.accept("-")
        kind, text, line = self.next("a number for %s" % field)
        if kind == "number":
            value = float(text[:-1] if text[-1] in "fF" else text)
        elif kind == "ident" and text.lower() in ("inf", "inff", "infinity", "nan", "nanf"):
            value = math.nan if text.lower().startswith("nan") else math.inf
        else:
            raise _ParseError(line, "%s: expected a number, found %r" % (field, text))
        return -value if negative else value

    def skip_value(self) -> None:
        """Skips the value of an unknown field (after its name)."""
        if self.accept(":"):
            if self.accept("["):  # a list of scalars or messages
                if self.accept("]"):
                    return
                while True:
                    self.skip_single()
                    if self.accept("]"):
                        return
                    self.expect(",")
            self.skip_single()
        else:
            self.skip_message_value()

    def skip_single(self) -> None:
        token = self.peek()
        if token is not None and token[0] == "symbol" and token[1] in "{<":
            self.skip_message_value()
            return
        self.accept("-")
        kind, text, line = self.next("a value")
        if kind == "string":
            while self.peek() is not None and self.peek()[0] == "string":
                self.pos += 1
        elif kind not in ("number", "ident"):
            raise _ParseError(line, "expected a value, found %r" % text)

    def skip_message_value(self) -> None:
        kind, text, line = self.next("'{'")
        if kind != "symbol" or text not in "{<":
            raise _ParseError(line, "expected ':' or '{' after a field name, found %r" % text)
        close = "}" if text == "{" else ">"
        while not self.accept(close):
            if self.peek() is None:
                raise _ParseError(line, "unclosed '%s' opened here" % text)
            self.field(None)

    # -- fields --------------------------------------------------------------

    def field_name(self) -> str:
        kind, text, line = self.next("a field name")
        if kind == "ident":
            return text
        if kind == "symbol" and text == "[":  # [extension.name] or [type.url/x]
            parts = []
            while not self.accept("]"):
                kind, text, line = self.next("']'")
                parts.append(text)
            return "[" + "".join(parts) + "]"
        raise _ParseError(line, "expected a field name, found %r" % text)

    def field(self, result: dict | None) -> None:
        """Parses one field into `result` (None: inside an unknown message)."""
        line = self.line()
        name = self.field_name()
        known = result is not None and name in _FIELDS
        if not known:
            self.skip_value()
        else:
            self.expect(":")
            kind, repeated = _FIELDS[name]
            read = self.string if kind == "string" else self.double
            if repeated and self.accept("["):
                values = []
                if not self.accept("]"):
                    while True:
                        values.append((read(name), line))
                        if self.accept("]"):
                            break
                        self.expect(",")
                result.setdefault(name, []).extend(values)
            elif repeated:
                result.setdefault(name, []).append((read(name), line))
            else:
                result[name] = [(read(name), line)]  # last one wins, as in Merge
        if not self.accept(","):
            self.accept(";")

    def message(self) -> dict:
        result: dict = {}
        while self.peek() is not None:
            self.field(result)
        return result


_FIELDS = {
    "model_checkpoint_path": ("string", False),
    "all_model_checkpoint_paths": ("string", True),
    "all_model_checkpoint_timestamps": ("double", True),
    "last_preserved_timestamp": ("double", False),
}


def _parse(text: str, path: str) -> CheckpointState:
    """Parses state-file text; `path` is used in error messages only."""
    try:
        fields = _Parser(_tokenize(text)).message()
        strings: dict[str, list[str]] = {}
        for name in ("model_checkpoint_path", "all_model_checkpoint_paths"):
            values = []
            for raw, line in fields.get(name, ()):
                try:
                    values.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise _ParseError(line, "%s is not valid UTF-8: %r" % (name, raw)) from None
            strings[name] = values
    except _ParseError as err:
        raise CheckpointError(
            f"Checkpoint state file '{path}' line {err.line}: {err}. Expected TensorFlow's "
            f"text-format CheckpointState (lines like 'model_checkpoint_path: \"model.ckpt-3\"'). "
            f"Repair or delete the file (it is rewritten at the next save), or pass a "
            f"checkpoint prefix explicitly."
        ) from None
    model = strings["model_checkpoint_path"]
    if not model or not model[0]:
        raise CheckpointError(
            f"Checkpoint state file '{path}' has no model_checkpoint_path (expected a line "
            f"like 'model_checkpoint_path: \"model.ckpt-3\"'). Repair or delete the file, or "
            f"pass a checkpoint prefix explicitly."
        )
    preserved = fields.get("last_preserved_timestamp")
    return CheckpointState(
        model_checkpoint_path=model[0],
        all_model_checkpoint_paths=tuple(strings["all_model_checkpoint_paths"]),
        all_model_checkpoint_timestamps=tuple(
            v for v, _ in fields.get("all_model_checkpoint_timestamps", ())
        ),
        last_preserved_timestamp=preserved[0][0] if preserved else None,
    )


# ---------------------------------------------------------------------------
# Printing.

# protobuf's text_encoding.CEscape with as_utf8=True (MessageToString's default):
# ASCII controls as 3-digit octal except \t \n \r; quotes and backslash escaped;
# everything else, non-ASCII included, verbatim.
_CESCAPE = {i: "\\%03o" % i for i in list(range(32)) + [127]}
_CESCAPE.update({9: "\\t", 10: "\\n", 13: "\\r", 34: '\\"', 39: "\\'", 92: "\\\\"})


def _quote(value: str) -> str:
    return '"' + value.translate(_CESCAPE) + '"'


def _is_inside(directory: str, path: str) -> bool:
    """Both absolute and normalized; True when `path` is strictly below `directory`."""
    if path == directory:
        return False
    try:
        return os.path.commonpath([directory, path]) == directory
    except ValueError:  # different drives
        return False


def _format(checkpoint_dir: str, state: CheckpointState, path: str) -> bytes:
    directory = os.path.abspath(checkpoint_dir)

    def stored(p: str) -> str:
        if not p:
            raise CheckpointError(
                f"Cannot write checkpoint state file '{path}': a checkpoint path is empty. "
                f"Pass the checkpoint prefixes "
                f"(e.g. '{os.path.join(checkpoint_dir, 'model.ckpt-3')}')."
            )
        absolute = os.path.abspath(p)
        return os.path.relpath(absolute, directory) if _is_inside(directory, absolute) else absolute

    paths = list(state.all_model_checkpoint_paths)
    if not paths or paths[-1] != state.model_checkpoint_path:
        paths.append(state.model_checkpoint_path)  # as TF's generate_checkpoint_state_proto
    timestamps = state.all_model_checkpoint_timestamps
    if timestamps and len(timestamps) != len(paths):
        raise CheckpointError(
            f"Cannot write checkpoint state file '{path}': {len(timestamps)} timestamps for "
            f"{len(paths)} checkpoint paths {paths}. Pass one timestamp per path, or none."
        )
    if os.path.abspath(state.model_checkpoint_path) == os.path.abspath(path):
        raise CheckpointError(
            f"Cannot write checkpoint state file '{path}': the checkpoint path "
            f"'{state.model_checkpoint_path}' is the state file itself. Use a different "
            f"checkpoint name or latest_filename."
        )
    lines = ["model_checkpoint_path: " + _quote(stored(state.model_checkpoint_path))]
    lines += ["all_model_checkpoint_paths: " + _quote(stored(p)) for p in paths]
    lines += ["all_model_checkpoint_timestamps: " + str(float(t)) for t in timestamps]
    if state.last_preserved_timestamp:  # proto3: 0.0 is "not set"
        lines.append("last_preserved_timestamp: " + str(float(state.last_preserved_timestamp)))
    text = "\n".join(lines) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise CheckpointError(
            f"Cannot write checkpoint state file '{path}': a checkpoint path holds "
            f"{text[err.start : err.end]!r}, which is not valid Unicode text (undecodable file "
            f"name bytes). Rename the checkpoint directory or prefix."
        ) from None
