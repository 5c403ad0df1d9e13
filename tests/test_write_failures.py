"""Saves that fail part-way: full disks and file-size limits.

A save that cannot be written must raise `vs.CheckpointError` saying what failed and
where, leave the earlier checkpoints and the `checkpoint` state file byte-identical
(and no temporary directory behind), and the next save, once space is back, must
succeed. With `blocking=False` the error comes from `wait_until_finished()`.

Two ways to fill a disk: `RLIMIT_FSIZE` in a subprocess (any Linux; SIGXFSZ ignored
so that writes fail with EFBIG), and a small tmpfs mounted for the test (needs root;
skipped with the reason where mounting is not allowed). The tmpfs also runs out of
inodes on demand, which makes the state-file write fail after the data is written.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading

import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux file-system limits")


def snapshot(directory):
    """{relative path: sha256 (files) or 'dir'} of everything under `directory`."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), directory)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def values(step, big_shape=(1024, 1024), n_small=1, small_shape=(1024,)):
    out = {"w": np.full(big_shape, step, np.float32) + np.arange(big_shape[-1], dtype=np.float32)}
    for i in range(n_small):
        out[f"small/b{i}"] = np.full(small_shape, step * 10 + i, np.float32)
    out["global_step"] = np.array(step, np.int32)
    return out


def store_of(vals):
    return vs.VarStore({k: jnp.asarray(v) for k, v in vals.items()})


def layout_of(path):
    with open(os.path.join(path, "varstore_metadata.json")) as f:
        return json.load(f)["layout"]


def assert_restores(path, vals):
    restored = vs.train.Saver(sorted(vals)).restore(path)
    for k, v in vals.items():
        assert np.asarray(restored[k]).tobytes() == v.tobytes(), k


# --------------------------------------------------------------------------- RLIMIT_FSIZE

SCRIPT = r"""
import json
import os
import resource
import signal
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import jax.numpy as jnp
import numpy as np
import varstore as vs

{helpers}

def emit(*a):
    print(*a, flush=True)

def pause():
    emit("PAUSE")
    sys.stdin.readline()

prefix = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
names = sorted(values(0))
saver = vs.train.Saver(names, max_to_keep=2)
for step in (1, 2):
    saver.save(store_of(values(step)), prefix, global_step=step)
    emit("SAVED", step)
pause()
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))  # "w" needs 2 MiB
try:
    saver.save(store_of(values(3)), prefix, global_step=3)
    emit("NOERROR")
except vs.CheckpointError as e:
    emit("ERROR", json.dumps(str(e)))
pause()
saver.save(store_of(values(4)), prefix, global_step=4, blocking=False)
emit("RETURNED")
try:
    saver.wait_until_finished()
    emit("NOERROR")
except vs.CheckpointError as e:
    emit("ASYNC-ERROR", json.dumps(str(e)))
pause()
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
saver.save(store_of(values(5)), prefix, global_step=5)
emit("SAVED", 5)
"""


def test_file_size_limit_fails_cleanly_then_next_save_succeeds(tmp_path):
    import inspect

    helpers = "\n\n".join(inspect.getsource(f) for f in (values, store_of))
    script = tmp_path / "fsize.py"
    script.write_text(SCRIPT.format(helpers=helpers))
    directory = tmp_path / "ckpt"
    prefix = str(directory / "model.ckpt")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(
        [sys.executable, str(script), prefix],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    watchdog = threading.Timer(120, proc.kill)  # a child that hangs fails the test
    watchdog.start()
    try:

        def until(word):
            """The next line, which must start with `word` (SAVED lines are skipped)."""
            while True:
                line = proc.stdout.readline()
                if not line:
                    raise AssertionError(
                        f"child ended before {word!r}: {proc.stderr.read()[-3000:]}"
                    )
                if line.startswith(word):
                    return line.rstrip("\n")
                if not line.startswith("SAVED"):
                    raise AssertionError(f"expected {word!r}, the child said {line!r}")

        def go():
            proc.stdin.write("go\n")
            proc.stdin.flush()

        until("PAUSE")
        before = snapshot(directory)
        assert "checkpoint" in before and "model.ckpt-2" in before
        go()
        line = until("ERROR")  # blocking save
        message = json.loads(line.split(" ", 1)[1])
        assert f"{prefix}-3" in message and "File too large" in message, message
        until("PAUSE")
        assert snapshot(directory) == before
        go()
        until("RETURNED")
        line = until("ASYNC-ERROR")  # blocking=False: from wait_until_finished()
        message = json.loads(line.split(" ", 1)[1])
        assert f"{prefix}-4" in message and "File too large" in message, message
        until("PAUSE")
        assert snapshot(directory) == before
        go()
        until("SAVED 5")
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-3000:]
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()
    assert vs.train.latest_checkpoint(str(directory)) == f"{prefix}-5"
    state = vs.train.get_checkpoint_state(str(directory))
    assert list(state.all_model_checkpoint_paths) == [f"{prefix}-2", f"{prefix}-5"]
    assert_restores(f"{prefix}-5", values(5))
    assert_restores(f"{prefix}-2", values(2))
    assert layout_of(f"{prefix}-5") == "files"


# --------------------------------------------------------------------------- tmpfs


@pytest.fixture
def tmpfs(tmp_path):
    """A factory: mounts a small tmpfs (`mount -t tmpfs -o OPTIONS`) and unmounts it
    afterwards; skips the test where mounting is not allowed."""
    mounted = []

    def mount(options):
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): "
                f"{r.stderr.strip() or r.returncode}"
            )
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill_blocks(fs, leave_bytes):
    """Writes a ballast file so that about `leave_bytes` stay free; returns its path."""
    st = os.statvfs(fs)
    free = st.f_bavail * st.f_frsize
    ballast = os.path.join(fs, "ballast")
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return ballast


LAYOUT_VALUES = {
    # one 2.5 MiB array: the "files" layout
    "files": {"big_shape": (640, 1024), "n_small": 0},
    # 200 arrays of 5 KiB: the "ocdbt" layout
    "ocdbt": {"big_shape": (4, 16), "n_small": 200, "small_shape": (1280,)},
}


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "background"])
@pytest.mark.parametrize("layout", ["files", "ocdbt"])
def test_disk_full_fails_cleanly_then_next_save_succeeds(tmpfs, layout, blocking):
    fs = tmpfs("size=8m")
    directory = os.path.join(fs, "ckpt")
    prefix = os.path.join(directory, "model.ckpt")
    kw = LAYOUT_VALUES[layout]
    saver = vs.train.Saver(sorted(values(0, **kw)), max_to_keep=2)
    for step in (1, 2):
        saver.save(store_of(values(step, **kw)), prefix, global_step=step)
    assert layout_of(f"{prefix}-2") == layout, "the variables no longer give this layout"
    before = snapshot(directory)
    ballast = fill_blocks(fs, leave_bytes=256 << 10)

    with pytest.raises(vs.CheckpointError) as info:
        saver.save(store_of(values(3, **kw)), prefix, global_step=3, blocking=blocking)
        if not blocking:
            saver.wait_until_finished()
    message = str(info.value)
    assert f"{prefix}-3" in message and "No space left on device" in message, message
    assert snapshot(directory) == before  # nothing changed, no temporary left
    assert vs.train.latest_checkpoint(directory) == f"{prefix}-2"

    os.remove(ballast)
    assert saver.save(store_of(values(4, **kw)), prefix, global_step=4) == f"{prefix}-4"
    assert vs.train.latest_checkpoint(directory) == f"{prefix}-4"
    assert_restores(f"{prefix}-4", values(4, **kw))
    assert_restores(f"{prefix}-2", values(2, **kw))
    state = vs.train.get_checkpoint_state(directory)
    assert list(state.all_model_checkpoint_paths) == [f"{prefix}-2", f"{prefix}-4"]


def test_state_file_write_failure_keeps_the_old_state_file(tmpfs):
    """Out of inodes exactly when the checkpoint is written: the state-file update
    fails, the old state file and checkpoints are untouched, nothing is deleted."""
    fs = tmpfs("size=32m,nr_inodes=400")
    directory = os.path.join(fs, "ckpt")
    prefix = os.path.join(directory, "model.ckpt")
    saver = vs.train.Saver(sorted(values(0)), max_to_keep=2)
    for step in (1, 2):
        saver.save(store_of(values(step)), prefix, global_step=step)
    # (the "files" layout: a fixed number of files per checkpoint)
    assert layout_of(f"{prefix}-2") == "files"
    # A checkpoint of these variables takes exactly this many inodes (the state file
    # already exists, and replacing it takes none in the end).
    free = os.statvfs(fs).f_ffree
    probe = vs.train.Saver(sorted(values(0)), max_to_keep=None)
    probe_dir = os.path.join(fs, "probe")
    probe.save(store_of(values(0)), os.path.join(probe_dir, "m"))
    per_checkpoint = free - os.statvfs(fs).f_ffree - 2  # minus probe dir and its state file
    ballast_dir = os.path.join(fs, "ballast")
    os.mkdir(ballast_dir)
    i = 0
    while os.statvfs(fs).f_ffree > per_checkpoint:
        open(os.path.join(ballast_dir, str(i)), "wb").close()
        i += 1
    before = snapshot(directory)

    with pytest.raises(vs.CheckpointError, match="Cannot write checkpoint state file") as info:
        saver.save(store_of(values(3)), prefix, global_step=3)
    assert "No space left on device" in str(info.value)
    after = snapshot(directory)
    # The old state file and both kept checkpoints are byte-identical; step 3 is there,
    # complete, but named by no state file.
    assert {k: v for k, v in after.items() if not k.startswith("model.ckpt-3")} == before
    assert vs.train.latest_checkpoint(directory) == f"{prefix}-2"
    assert_restores(f"{prefix}-1", values(1))
    assert_restores(f"{prefix}-3", values(3))

    for name in os.listdir(ballast_dir):
        os.remove(os.path.join(ballast_dir, name))
    saver.save(store_of(values(4)), prefix, global_step=4)
    assert vs.train.latest_checkpoint(directory) == f"{prefix}-4"
    state = vs.train.get_checkpoint_state(directory)
    for p in state.all_model_checkpoint_paths:
        assert vs.train.checkpoint_exists(p), p
    assert_restores(f"{prefix}-4", values(4))


def test_unwritable_directory_is_a_checkpoint_error(tmp_path):
    """A path that cannot be created (a file where a directory must be) raises
    before anything is written."""
    blocker = tmp_path / "not_a_dir"
    blocker.write_bytes(b"x")
    saver = vs.train.Saver(sorted(values(0)))
    with pytest.raises(vs.CheckpointError, match="not_a_dir"):
        saver.save(store_of(values(1)), str(blocker / "model.ckpt"))
    assert blocker.read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == ["not_a_dir"]
