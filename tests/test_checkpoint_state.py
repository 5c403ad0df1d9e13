"""Tests of varstore._checkpoint_state: TensorFlow's `checkpoint` state file.

State files under tests/fixtures/tf1/ were written by TensorFlow itself
(tests/fixtures/make_tf1_checkpoints.py); their ``expected.json`` holds what
``tf.train.get_checkpoint_state`` returned, with the directory as ``{dir}``.
The protobuf text printer/parser (protobuf is installed with orbax) checks
escaping and number formatting on generated inputs.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from varstore import _checkpoint_state as cs
from varstore._checkpoint_state import (
    CheckpointState,
    latest_checkpoint,
    read_state,
    resolve_checkpoint_path,
    write_state,
)
from varstore._errors import CheckpointError

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "tf1")
STATES = os.path.join(FIXTURES, "state")
REPO = os.path.dirname(HERE)


def _read_bytes(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_bytes(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _ckpt(directory, *names, timestamps=(), preserved=None) -> CheckpointState:
    paths = tuple(os.path.join(str(directory), n) for n in names)
    return CheckpointState(paths[-1], paths, tuple(timestamps), preserved)


# ---------------------------------------------------------------------------
# TensorFlow-written state files.


def _fixture_copy(tmp_path, case: str):
    directory = tmp_path / case
    shutil.copytree(os.path.join(STATES, case), directory)
    with open(directory / "expected.json") as f:
        expected = json.load(f)
    return directory, expected


@pytest.mark.parametrize("case", sorted(os.listdir(STATES)))
def test_tf_written_state_files_parse_like_tensorflow(tmp_path, case):
    directory, expected = _fixture_copy(tmp_path, case)

    def sub(p: str) -> str:
        return p.replace("{dir}", str(directory))

    state = read_state(directory, expected["latest_filename"])
    assert state == CheckpointState(
        model_checkpoint_path=sub(expected["model_checkpoint_path"]),
        all_model_checkpoint_paths=tuple(sub(p) for p in expected["all_model_checkpoint_paths"]),
        all_model_checkpoint_timestamps=tuple(expected["all_model_checkpoint_timestamps"]),
        last_preserved_timestamp=expected["last_preserved_timestamp"],
    )


@pytest.mark.parametrize("case", ["timestamps", "escapes", "custom_name", "absolute"])
def test_rewriting_a_tf_state_file_reproduces_it_byte_for_byte(tmp_path, case):
    directory, expected = _fixture_copy(tmp_path, case)
    name = expected["latest_filename"]
    original = _read_bytes(directory / name)
    state = read_state(directory, name)
    os.remove(directory / name)
    write_state(directory, state, name)
    assert _read_bytes(directory / name) == original


def test_saver_written_state_file(tmp_path):
    # tf.compat.v1.train.Saver(max_to_keep=2, save_relative_paths=True), steps 1..3.
    directory = tmp_path / "howto"
    shutil.copytree(os.path.join(FIXTURES, "howto"), directory)
    state = read_state(directory)
    assert state == CheckpointState(
        str(directory / "model.ckpt-3"),
        (str(directory / "model.ckpt-2"), str(directory / "model.ckpt-3")),
        (),
        None,
    )
    original = _read_bytes(directory / "checkpoint")
    write_state(directory, state)
    assert _read_bytes(directory / "checkpoint") == original
    exists = lambda p: os.path.exists(p + ".index")  # noqa: E731
    assert latest_checkpoint(directory, exists) == str(directory / "model.ckpt-3")


def test_relative_checkpoint_dir_joins_like_tensorflow(tmp_path, monkeypatch):
    _fixture_copy(tmp_path, "timestamps")
    monkeypatch.chdir(tmp_path)
    state = read_state("timestamps")
    assert state.model_checkpoint_path == os.path.join("timestamps", "model.ckpt-30")
    assert resolve_checkpoint_path("timestamps", state.model_checkpoint_path) == str(
        tmp_path / "timestamps" / "model.ckpt-30"
    )
    write_state("timestamps", state)  # relative in, relative out
    assert _read_bytes(tmp_path / "timestamps" / "checkpoint") == _read_bytes(
        os.path.join(STATES, "timestamps", "checkpoint")
    )


def test_escaping_paths_in_tf_state_files_are_refused(tmp_path):
    directory, _ = _fixture_copy(tmp_path, "escaping_relative")
    state = read_state(directory)
    assert resolve_checkpoint_path(directory, state.all_model_checkpoint_paths[0]) == str(
        directory / "model.ckpt-8"
    )
    with pytest.raises(
        CheckpointError,
        match=(
            r"Checkpoint state file '.*escaping_relative/checkpoint' names checkpoint "
            r"'.*escaping_relative/\.\./\.\./outside/model\.ckpt-9', which is not inside the "
            r"checkpoint directory '.*escaping_relative' \(it resolves to '.*/outside/model\.ckpt-9'\)"
            r".*move it into .* or pass its prefix explicitly"
        ),
    ):
        latest_checkpoint(directory, lambda p: True)
    directory, _ = _fixture_copy(tmp_path, "absolute")
    with pytest.raises(
        CheckpointError,
        match=r"names checkpoint '/elsewhere/run/model\.ckpt-5', which is not inside",
    ):
        latest_checkpoint(directory, lambda p: True)


# ---------------------------------------------------------------------------
# Round trips and the protobuf text format.


def test_round_trip(tmp_path):
    state = _ckpt(tmp_path, "a-1", "sub/b-2", "c-3", timestamps=(1.0, 2.5, 1e10), preserved=0.5)
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    assert _read_bytes(tmp_path / "checkpoint").decode() == textwrap.dedent(
        """\
        model_checkpoint_path: "c-3"
        all_model_checkpoint_paths: "a-1"
        all_model_checkpoint_paths: "sub/b-2"
        all_model_checkpoint_paths: "c-3"
        all_model_checkpoint_timestamps: 1.0
        all_model_checkpoint_timestamps: 2.5
        all_model_checkpoint_timestamps: 10000000000.0
        last_preserved_timestamp: 0.5
        """
    )
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_inside_paths_are_written_relative_others_absolute(tmp_path):
    outside = str(tmp_path.parent / "elsewhere" / "m-1")
    inside = str(tmp_path / "x" / ".." / "m-2")
    state = CheckpointState(inside, (outside, inside), (), None)
    write_state(tmp_path, state)
    assert _read_bytes(tmp_path / "checkpoint").decode() == (
        f'model_checkpoint_path: "m-2"\n'
        f'all_model_checkpoint_paths: "{outside}"\n'
        f'all_model_checkpoint_paths: "m-2"\n'
    )
    read = read_state(tmp_path)
    assert read.all_model_checkpoint_paths == (outside, str(tmp_path / "m-2"))


def test_model_path_is_appended_like_tensorflow(tmp_path):
    write_state(tmp_path, CheckpointState(str(tmp_path / "m-5"), (str(tmp_path / "m-4"),)))
    assert read_state(tmp_path).all_model_checkpoint_paths == (
        str(tmp_path / "m-4"),
        str(tmp_path / "m-5"),
    )
    write_state(tmp_path, CheckpointState(str(tmp_path / "m-6")))
    assert read_state(tmp_path).all_model_checkpoint_paths == (str(tmp_path / "m-6"),)


def test_write_state_errors(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"1 timestamps for 2 checkpoint paths .*one timestamp per path"
    ):
        write_state(tmp_path, _ckpt(tmp_path, "a", "b", timestamps=(1.0,)))
    with pytest.raises(CheckpointError, match=r"directory '.*missing' does not exist"):
        write_state(tmp_path / "missing", _ckpt(tmp_path / "missing", "a"))
    with pytest.raises(
        CheckpointError, match=r"checkpoint path '.*checkpoint' is the state file itself"
    ):
        write_state(tmp_path, _ckpt(tmp_path, "checkpoint"))
    with pytest.raises(CheckpointError, match=r"a checkpoint path is empty"):
        write_state(tmp_path, CheckpointState(""))
    with pytest.raises(CheckpointError, match=r"not valid Unicode text"):
        write_state(tmp_path, _ckpt(tmp_path, "bad\udcff"))
    assert not os.listdir(tmp_path)


def test_last_preserved_timestamp_zero_is_not_written(tmp_path):
    write_state(tmp_path, _ckpt(tmp_path, "a", preserved=0.0))
    assert b"last_preserved" not in _read_bytes(tmp_path / "checkpoint")
    assert read_state(tmp_path).last_preserved_timestamp is None


def test_written_file_permissions_follow_umask(tmp_path):
    write_state(tmp_path, _ckpt(tmp_path, "a"))
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "checkpoint").st_mode & 0o777 == 0o666 & ~umask


def _state_message_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="varstore_test_checkpoint_state.proto", package="varstore_test", syntax="proto3"
    )
    message = proto.message_type.add(name="CheckpointState")
    message.field.add(
        name="model_checkpoint_path", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL
    )
    message.field.add(
        name="all_model_checkpoint_paths",
        number=2,
        type=field.TYPE_STRING,
        label=field.LABEL_REPEATED,
    )
    message.field.add(
        name="all_model_checkpoint_timestamps",
        number=3,
        type=field.TYPE_DOUBLE,
        label=field.LABEL_REPEATED,
    )
    message.field.add(
        name="last_preserved_timestamp",
        number=4,
        type=field.TYPE_DOUBLE,
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("varstore_test.CheckpointState")
    )


_STATE_PROTO = _state_message_class()
_NAMES = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="/"), min_size=1, max_size=12
).filter(lambda s: s not in (".", ".."))
_DIR = "/ckpts/run 1"


@st.composite
def _states(draw):
    names = draw(st.lists(_NAMES, min_size=1, max_size=4))
    stamps = draw(
        st.lists(st.floats(allow_nan=False), min_size=len(names), max_size=len(names)) | st.just([])
    )
    preserved = draw(st.none() | st.floats(allow_nan=False).filter(lambda x: x != 0))
    return names, stamps, preserved


@settings(max_examples=200, deadline=None)
@given(_states())
def test_writer_matches_protobuf_text_format(drawn):
    from google.protobuf import text_format

    names, stamps, preserved = drawn
    state = _ckpt(_DIR, *names, timestamps=stamps, preserved=preserved)
    ours = cs._format(_DIR, state, _DIR + "/checkpoint").decode("utf-8")
    message = _STATE_PROTO(
        model_checkpoint_path=names[-1],
        all_model_checkpoint_paths=names,
        all_model_checkpoint_timestamps=stamps,
        last_preserved_timestamp=preserved or 0.0,
    )
    assert ours == text_format.MessageToString(message)  # what TensorFlow writes
    parsed = _STATE_PROTO()
    text_format.Parse(ours, parsed)
    assert parsed == message


@settings(max_examples=200, deadline=None)
@given(_states(), st.booleans(), st.lists(st.floats(allow_nan=True), max_size=3))
def test_parser_reads_protobuf_output(drawn, as_utf8, extra_stamps):
    from google.protobuf import text_format

    names, stamps, preserved = drawn
    stamps = stamps + extra_stamps  # the parser does not care about lengths
    message = _STATE_PROTO(
        model_checkpoint_path=names[-1],
        all_model_checkpoint_paths=names,
        all_model_checkpoint_timestamps=stamps,
        last_preserved_timestamp=preserved or 0.0,
    )
    for text in (
        text_format.MessageToString(message, as_utf8=as_utf8),  # older protobuf: octal escapes
        text_format.MessageToString(message, as_utf8=as_utf8, as_one_line=True),
        text_format.MessageToString(message, use_short_repeated_primitives=True),
    ):
        state = cs._parse(text, "state")
        assert state.model_checkpoint_path == names[-1]
        assert state.all_model_checkpoint_paths == tuple(names)
        assert [repr(t) for t in state.all_model_checkpoint_timestamps] == [repr(t) for t in stamps]
        assert state.last_preserved_timestamp == preserved


def test_parser_accepts_the_text_format_s_variety(tmp_path):
    text = (
        "# written by hand\r\n"
        "unknown_scalar: 42\n"
        "unknown_string: 'x' \"y\"\n"
        'unknown_message { nested: 1 deeper < a: "}" > list: [1, 2] }\n'
        "unknown_list: [{a: 1}, {b: 2}]\n"
        "[some.extension]: -inf\n"
        "model_checkpoint_path: 'first'\n"
        'model_checkpoint_path: "la" "st\\x41\\101\\u00fc\\U0001F600\\a\\?"  # last one wins\n'
        "all_model_checkpoint_paths: [\"p1\", 'p2'];\n"
        'all_model_checkpoint_paths: "p3",\n'
        "all_model_checkpoint_timestamps: [1, -2.5e3, 1.5f, inf, -Infinity, nan]\n"
        "last_preserved_timestamp: 7\n"
    )
    _write_bytes(tmp_path / "checkpoint", text.encode())
    state = read_state(tmp_path)
    assert state.model_checkpoint_path == str(tmp_path / "lastAAü\U0001f600\a?")
    assert state.all_model_checkpoint_paths == tuple(str(tmp_path / p) for p in ("p1", "p2", "p3"))
    stamps = state.all_model_checkpoint_timestamps
    assert stamps[:5] == (1.0, -2500.0, 1.5, math.inf, -math.inf) and math.isnan(stamps[5])
    assert state.last_preserved_timestamp == 7.0


@pytest.mark.parametrize(
    "content, line, detail",
    [
        (
            b'model_checkpoint_path: "a"\nthis is garbage\n',
            2,
            r"expected ':' or '\{' after a field name, found 'is'",
        ),
        (b'model_checkpoint_path: "unterminated\n', 1, r"unexpected character '\"'"),
        (
            b"model_checkpoint_path: 5\n",
            1,
            r"model_checkpoint_path: expected a quoted string, found '5'",
        ),
        (
            b'all_model_checkpoint_timestamps: "x"\n',
            1,
            r"all_model_checkpoint_timestamps: expected a number, found",
        ),
        (b'\n\nmodel_checkpoint_path: "a\\q"\n', 3, r"invalid escape sequence \\q"),
        (b'model_checkpoint_path: "\\777"\n', 1, r"octal escape \\777 is out of range"),
        (b'model_checkpoint_path: "\\xff"\n', 1, r"model_checkpoint_path is not valid UTF-8"),
        (b'model_checkpoint_path: "a"\nunknown { x: 1\n', 2, r"unclosed '\{' opened here"),
        (
            b'model_checkpoint_path: "a"\nall_model_checkpoint_paths: ["a" "b"',
            2,
            r"expected ',', found the end of the file|expected",
        ),
        (b"\x00\x01\x02 binary", 1, r"unexpected character '\\x00'"),
        (b'model_checkpoint_path: "ok"\n\xff\xfe', 2, r"not UTF-8 text \(byte 0xff\)"),
    ],
)
def test_garbage_names_file_and_line(tmp_path, content, line, detail):
    _write_bytes(tmp_path / "checkpoint", content)
    with pytest.raises(
        CheckpointError,
        match=rf"Checkpoint state file '{tmp_path}/checkpoint' line {line}: ({detail}).*Repair or delete the file",
    ):
        read_state(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"# only a comment\n",
        b'model_checkpoint_path: ""\n',
        b'all_model_checkpoint_paths: "a"\n',
    ],
)
def test_state_without_model_path(tmp_path, content):
    _write_bytes(tmp_path / "checkpoint", content)
    with pytest.raises(
        CheckpointError, match=rf"'{tmp_path}/checkpoint' has no model_checkpoint_path"
    ):
        read_state(tmp_path)


def test_missing_and_unreadable_state_files(tmp_path):
    assert read_state(tmp_path) is None
    assert read_state(tmp_path / "no" / "such" / "dir") is None
    assert latest_checkpoint(tmp_path, lambda p: True) is None
    os.mkdir(tmp_path / "checkpoint")
    with pytest.raises(
        CheckpointError, match=r"state file '.*checkpoint' cannot be read: .*Is a directory"
    ):
        read_state(tmp_path)


# ---------------------------------------------------------------------------
# Safety rule and latest_checkpoint.


@pytest.mark.parametrize(
    "entry, inside",
    [
        ("model.ckpt-1", True),
        ("sub/model.ckpt-1", True),
        ("sub/../model.ckpt-1", True),
        ("./model.ckpt-1", True),
        ("../model.ckpt-1", False),
        ("sub/../../model.ckpt-1", False),
        ("../run-sibling/model.ckpt-1", False),
        (".", False),
        ("sub/..", False),
        ("/etc/passwd", False),
        ("{dir}/model.ckpt-1", True),
        ("{dir}/../x", False),
        ("{dir}-evil/model.ckpt-1", False),
    ],
)
def test_resolve_checkpoint_path(tmp_path, entry, inside):
    directory = tmp_path / "run"
    directory.mkdir()
    entry = entry.replace("{dir}", str(directory))
    path = os.path.join(str(directory), entry)  # the form read_state returns
    if inside:
        assert resolve_checkpoint_path(directory, path) == os.path.normpath(path)
    else:
        with pytest.raises(
            CheckpointError,
            match=rf"state file '{directory}/checkpoint' names checkpoint .*not inside",
        ):
            resolve_checkpoint_path(directory, path)


def test_latest_checkpoint_follows_tensorflow(tmp_path):
    write_state(tmp_path, _ckpt(tmp_path, "model.ckpt-1", "model.ckpt-2"))
    assert latest_checkpoint(tmp_path, lambda p: False) is None  # files gone: None, as TF
    seen = []
    assert latest_checkpoint(tmp_path, lambda p: seen.append(p) or True) == str(
        tmp_path / "model.ckpt-2"
    )
    assert seen == [str(tmp_path / "model.ckpt-2")]
    # An Orbax-style checkpoint is a directory.
    os.mkdir(tmp_path / "ckpt_3")
    write_state(tmp_path, _ckpt(tmp_path, "ckpt_3"), latest_filename="orbax_state")
    assert latest_checkpoint(tmp_path, os.path.isdir, latest_filename="orbax_state") == str(
        tmp_path / "ckpt_3"
    )


# ---------------------------------------------------------------------------
# Atomicity: a failed write leaves the previous file intact.


def test_failed_write_keeps_old_file_read_only_dir(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only directories; see the RLIMIT_FSIZE test")
    write_state(tmp_path, _ckpt(tmp_path, "old-1"))
    before = _read_bytes(tmp_path / "checkpoint")
    os.chmod(tmp_path, 0o555)
    try:
        with pytest.raises(
            CheckpointError,
            match=r"Cannot write .*Permission denied.*previous state file, if any, is unchanged",
        ):
            write_state(tmp_path, _ckpt(tmp_path, "new-2"))
    finally:
        os.chmod(tmp_path, 0o755)
    assert _read_bytes(tmp_path / "checkpoint") == before
    assert os.listdir(tmp_path) == ["checkpoint"]


@pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "darwin", reason="needs POSIX RLIMIT_FSIZE"
)
def test_failed_write_keeps_old_file_disk_full(tmp_path):
    """A real write failure, even as root: the file-size limit makes write() fail with EFBIG."""
    write_state(tmp_path, _ckpt(tmp_path, "old-1"))
    before = _read_bytes(tmp_path / "checkpoint")
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        from varstore._checkpoint_state import CheckpointState, write_state
        from varstore._errors import CheckpointError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        path = {str(tmp_path)!r} + "/" + "n" * 200
        try:
            write_state({str(tmp_path)!r}, CheckpointState(path))
        except CheckpointError as err:
            print(err)
            sys.exit(3)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Cannot write checkpoint state file" in done.stdout and "File too large" in done.stdout
    assert _read_bytes(tmp_path / "checkpoint") == before
    assert os.listdir(tmp_path) == ["checkpoint"]  # temporary file removed


def test_failed_replace_removes_temporary_file(tmp_path):
    os.mkdir(tmp_path / "checkpoint")  # os.replace onto a directory fails
    (tmp_path / "checkpoint" / "keep").write_text("x")
    with pytest.raises(
        CheckpointError,
        match=r"Cannot write checkpoint state file '.*checkpoint': .*Is a directory",
    ):
        write_state(tmp_path, _ckpt(tmp_path, "m-1"))
    assert os.listdir(tmp_path) == ["checkpoint"]
    assert os.listdir(tmp_path / "checkpoint") == ["keep"]
