"""Crash safety of `vs.train.Saver`: a saving loop SIGKILLed at any moment.

A training-like script (written to tmp_path) saves tens of MiB with `global_step` in a
loop, values changing deterministically with the step, and prints `SAVED <step>` after
each save returns. The test kills it at random moments (and, through wrappers around
varstore's own functions, deterministically inside the max_to_keep deletion and the
state-file update), then checks that the directory is always usable:

* `latest_checkpoint` is never None once a save finished, and it restores bit-exact
  values of its step (recomputed here);
* every path the state file names exists, and every directory with a checkpoint's
  final name is complete (only temporary names may hold partial data);
* the first save of a new Saver removes the temporary directories of killed saves.

Kills of the default suite are bounded (about 6 random ones plus one per window); the
`slow` soak variant runs for VARSTORE_SOAK_SECONDS (default 20) seconds.
"""

import inspect
import json
import math
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib

import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs

TMP_MARKS = (".varstore-tmp-", ".varstore-old-")


# --------------------------------------------------------------------------- values
# Shared verbatim with the subprocess script (inspect.getsource), so a step's values
# can be recomputed here bit for bit.


def specs_for(config):
    """(name, shape, dtype) of the variables of a configuration."""
    if config == "big":  # 24 MiB in a few big arrays: the "files" layout
        return [
            ("layer0/w", (1024, 2048), "float32"),
            ("layer1/w", (1024, 2048), "float32"),
            ("layer2/w", (512, 4096), "float32"),
            ("layer2/b", (4096,), "float32"),
            ("global_step", (), "int32"),
        ] + [(f"small/b{i}", (64,), "float32") for i in range(6)]
    if config == "many":  # many small arrays: the "ocdbt" layout
        return [(f"block{i // 40}/v{i}", (96,), "float32") for i in range(240)] + [
            ("global_step", (), "int32")
        ]
    if config == "medium":  # 4 MiB: the "files" layout, quicker to save
        return [
            ("layer0/w", (512, 1024), "float32"),
            ("layer1/w", (512, 1024), "float32"),
            ("global_step", (), "int32"),
        ]
    raise ValueError(config)


LAYOUT = {"big": "files", "medium": "files", "many": "ocdbt"}


def value_for(index, shape, dtype, step):
    """The value of variable number `index` at `step` (exact small integers)."""
    n = math.prod(shape)
    x = (np.arange(n, dtype=np.uint64) * 2654435761 + step * 40503 + index * 7919) & 0xFFFFFF
    return x.astype(dtype).reshape(shape)


def values_at(config, step):
    out = {
        name: value_for(i, shape, dtype, step)
        for i, (name, shape, dtype) in enumerate(specs_for(config))
    }
    out["global_step"] = np.array(step, np.int32)
    return out


# --------------------------------------------------------------------------- the script

SCRIPT = r'''
import os
import sys
import time
import types

os.environ["JAX_PLATFORMS"] = "cpu"

import math
import shutil

import jax.numpy as jnp
import numpy as np

import varstore as vs
import varstore._checkpoint_state as state_mod
import varstore._saver as saver_mod

{helpers}


def emit(*args):
    print(*args, flush=True)


ARMED = [False]
HOOK_SLEEP = 60.0


def install_hook(hook):
    """Widens one window of a save so that a kill lands inside it (varstore's own
    functions are wrapped; JAX and Orbax are untouched)."""
    if hook == "delete-before":
        real = saver_mod._delete_checkpoint

        def delete_checkpoint(path, keep):
            if ARMED[0]:
                emit("HOOK delete-before", path)
                time.sleep(HOOK_SLEEP)
            return real(path, keep)

        saver_mod._delete_checkpoint = delete_checkpoint
    elif hook == "delete-rmtree":
        # An old checkpoint is renamed away to a temporary name, then removed: stop
        # half-way through that removal.
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            base = os.path.basename(os.fspath(path))
            if ARMED[0] and base.startswith("model.ckpt-") and ".varstore-tmp-" in base:
                names = sorted(os.listdir(path))
                for n in names[: len(names) // 2]:
                    p = os.path.join(path, n)
                    real_rmtree(p) if os.path.isdir(p) else os.remove(p)
                emit("HOOK delete-rmtree", path)
                time.sleep(HOOK_SLEEP)
            return real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif hook in ("state-write", "state-replace"):
        class OsProxy(types.ModuleType):
            def __getattr__(self, name):
                return getattr(os, name)

        proxy = OsProxy("os")

        def write(fd, data):
            if ARMED[0] and hook == "state-write":
                half = max(1, len(data) // 2)
                os.write(fd, bytes(data[:half]))
                emit("HOOK state-write")
                time.sleep(HOOK_SLEEP)
            return os.write(fd, data)

        def replace(src, dst):
            if ARMED[0] and hook == "state-replace":
                emit("HOOK state-replace", src)
                time.sleep(HOOK_SLEEP)
            return os.replace(src, dst)

        proxy.write = write
        proxy.replace = replace
        state_mod.os = proxy
    elif hook:
        raise ValueError(hook)


def main():
    config, prefix, mode, max_steps = sys.argv[1:5]
    hook = os.environ.get("VS_CRASH_HOOK", "")
    install_hook(hook)
    specs = specs_for(config)
    emit("READY")
    words = sys.stdin.readline().split()
    if not words:
        return  # not needed after all
    start = int(words[1])
    saver = vs.train.Saver([name for name, _, _ in specs], max_to_keep=3)
    for step in range(start, start + int(max_steps)):
        store = vs.VarStore({{k: jnp.asarray(v) for k, v in values_at(config, step).items()}})
        ARMED[0] = bool(hook) and step >= start + 3
        if mode == "steps":
            saver.save(store, prefix, global_step=step)
        else:  # "same": always the same path
            saver.save(store, prefix)
        emit("SAVED", step)
    emit("DONE")


main()
'''


def write_script(tmp_path):
    helpers = "\n\n".join(inspect.getsource(f) for f in (specs_for, value_for, values_at))
    path = tmp_path / "saver_loop.py"
    path.write_text(SCRIPT.format(helpers=helpers))
    return str(path)


def child_env(**extra):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("XLA_FLAGS", None)  # one device is enough in the child
    env.update(extra)
    return env


class Child:
    """A subprocess whose stdout lines are collected by a thread."""

    def __init__(self, args, env, log_path):
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.saved: list[int] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        self.log_path = log_path

    def _pump(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            if line.startswith("SAVED "):
                self.saved.append(int(line.split()[1]))
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, prefix, timeout=120.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(left, 0.01))
            except queue.Empty:
                line = ""
                if left > 0:
                    continue
            if line is None or left <= 0:
                self.close()
                with open(self.log_path, errors="replace") as f:
                    err = f.read()[-4000:]
                raise AssertionError(f"child never printed {prefix!r}; stderr:\n{err}")
            if line.startswith(prefix):
                return line

    def send(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def kill(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.close()

    def close(self):
        try:
            if self.proc.poll() is None and not self.proc.stdin.closed:
                self.proc.stdin.close()  # a child still waiting for GO exits
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(timeout=10)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except (BrokenPipeError, OSError):
                pass
        self._log.close()


# --------------------------------------------------------------------------- checks


def names_of(config):
    return [name for name, _, _ in specs_for(config)]


def assert_bit_exact(restored, expected, where):
    assert sorted(restored) == sorted(expected), where
    for name, want in expected.items():
        got = np.asarray(restored[name])
        assert got.dtype == want.dtype and got.shape == want.shape, (where, name)
        assert got.tobytes() == want.tobytes(), f"{where}: {name} differs"


def step_of(path):
    return int(path.rsplit("-", 1)[1])


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if any(m in n for m in TMP_MARKS))


def check_directory(directory, prefix, config, mode, last_saved):
    """The invariants that must hold whenever a saving process dies.

    `last_saved` is the last step whose save returned (None: none ever did).
    Returns the step the directory now holds (None: nothing yet).
    """
    names = names_of(config)
    base = os.path.basename(prefix)
    if mode == "same":
        if not vs.train.checkpoint_exists(prefix):
            assert last_saved is None, f"{prefix} is gone after step {last_saved} was saved"
            return None
        if last_saved is not None:
            assert vs.train.latest_checkpoint(directory) == prefix
        restored = vs.train.Saver(names).restore(prefix)
        step = int(np.asarray(restored["global_step"]))
        assert last_saved is None or step in (last_saved, last_saved + 1), (step, last_saved)
        assert_bit_exact(restored, values_at(config, step), prefix)
        return step
    latest = vs.train.latest_checkpoint(directory)
    if last_saved is not None:
        assert latest is not None, f"latest_checkpoint is None after step {last_saved} was saved"
    if latest is None:
        return None
    step = step_of(latest)
    assert last_saved is None or step in (last_saved, last_saved + 1), (latest, last_saved)
    assert_bit_exact(vs.train.Saver(names).restore(latest), values_at(config, step), latest)
    with open(os.path.join(latest, "varstore_metadata.json")) as f:
        assert json.load(f)["layout"] == LAYOUT[config], "the variables no longer give this layout"
    state = vs.train.get_checkpoint_state(directory)
    for p in (state.model_checkpoint_path, *state.all_model_checkpoint_paths):
        assert vs.train.checkpoint_exists(p), f"the state file names {p}, which does not exist"
    # A directory under a final checkpoint name is always complete (the state file may
    # not name it: a kill between the commit and the state-file update).
    pattern = re.compile(re.escape(base) + r"-(\d+)$")
    for n in os.listdir(directory):
        m = pattern.match(n)
        if m:
            p = os.path.join(directory, n)
            assert_bit_exact(_read_all(p, names), values_at(config, int(m[1])), p)
    return step


def _read_all(path, names):
    reader = vs.train.load_checkpoint(path)
    return {n: reader.get_tensor(n) for n in names}


def new_saver_save(directory, prefix, config, mode, step):
    """A new Saver's first save into the directory: it must succeed, clean up, and
    leave a directory that restores `step`."""
    names = names_of(config)
    store = vs.VarStore({k: jnp.asarray(v) for k, v in values_at(config, step).items()})
    saver = vs.train.Saver(names, max_to_keep=3)
    if mode == "steps":
        path = saver.save(store, prefix, global_step=step)
        assert vs.train.latest_checkpoint(directory) == path
    else:
        path = saver.save(store, prefix)
    assert leftovers(directory) == [], "the first save of a new Saver left temporaries"
    assert check_directory(directory, prefix, config, mode, step) == step


# --------------------------------------------------------------------------- runs


def kill_loop(tmp_path, config, mode, kills, seed, budget_s=None):
    """Runs the saving script again and again in one directory, SIGKILLing each run
    at a random moment and checking the directory after each kill."""
    rng = random.Random(seed)
    script = write_script(tmp_path)
    directory = tmp_path / f"ckpt-{config}-{mode}"
    directory.mkdir()
    prefix = str(directory / "model.ckpt")
    env = child_env()
    n = [0]

    def spawn():
        n[0] += 1
        return Child([script, config, prefix, mode, "1000"], env, tmp_path / f"child{n[0]}.log")

    started = time.monotonic()
    last_saved = None
    step = None
    pending_leftovers: list[str] = []
    ever_saved_runs = 0
    nxt = spawn()
    done = 0
    try:
        while True:
            enough = done >= kills and ever_saved_runs >= 1
            if enough and (budget_s is None or time.monotonic() - started > budget_s):
                break
            child, nxt = nxt, spawn()  # the next one imports JAX while this one runs
            child.expect("READY")
            start = 0 if step is None else step + 1
            child.send(f"GO {start}")
            # Mostly after a save or two (so that deletions happen), sometimes during the
            # very first one.
            delay = rng.uniform(0.0, 0.4) if rng.random() < 0.3 else rng.uniform(0.3, 2.5)
            if done >= kills and ever_saved_runs == 0:  # a slow machine: make progress
                child.expect("SAVED")
                delay = rng.uniform(0.0, 0.5)
            time.sleep(delay)
            child.kill()
            done += 1
            if child.saved:
                last_saved = child.saved[-1]
                ever_saved_runs += 1
                # This run's first save removed the previous kills' leftovers.
                still = [p for p in pending_leftovers if os.path.lexists(directory / p)]
                assert still == [], f"leftovers of killed saves survived a new save: {still}"
            where = f"kill {done} (seed {seed}, delay {delay:.2f} s, saved {child.saved})"
            try:
                step = check_directory(str(directory), prefix, config, mode, last_saved)
            except AssertionError as e:
                raise AssertionError(f"{where}: {e}") from e
            if step is not None:
                # What is on disk is durable even when the kill came before the
                # SAVED line: the next run starts after it.
                last_saved = step
            pending_leftovers = leftovers(directory)
        new_saver_save(str(directory), prefix, config, mode, 0 if step is None else step + 1)
    finally:
        nxt.close()


@pytest.mark.parametrize(
    "config,mode,kills",
    [("big", "steps", 3), ("many", "steps", 1), ("big", "same", 2)],
    ids=["files-layout-global-step", "ocdbt-layout-global-step", "same-path-replaced"],
)
def test_random_sigkills_leave_a_restorable_latest_checkpoint(tmp_path, config, mode, kills):
    kill_loop(tmp_path, config, mode, kills, seed=zlib.crc32(f"{config}-{mode}".encode()) & 0xFFFF)


@pytest.mark.slow
def test_soak_random_sigkills(tmp_path):
    """As above for VARSTORE_SOAK_SECONDS (default 8) seconds in all, split between
    the three kinds of run; VARSTORE_SOAK_SEED replays a failure."""
    budget = float(os.environ.get("VARSTORE_SOAK_SECONDS", "8"))
    seed = int(os.environ.get("VARSTORE_SOAK_SEED", str(int(time.time()) & 0xFFFF)))
    for i, (config, mode) in enumerate([("big", "steps"), ("many", "steps"), ("big", "same")]):
        sub = tmp_path / f"run{i}"
        sub.mkdir()
        kill_loop(sub, config, mode, kills=1, seed=seed + i, budget_s=budget / 3)


# --------------------------------------------------------------------------- windows

WINDOWS = ["delete-before", "delete-rmtree", "state-write", "state-replace"]


@pytest.fixture(scope="module")
def window_kills(tmp_path_factory):
    """One saving run per window, all at once: each is killed when its hook says it is
    inside the window (after three saves, i.e. in the first max_to_keep deletion or in
    the fourth state-file update)."""
    base = tmp_path_factory.mktemp("windows")
    script = write_script(base)
    runs = {}
    children = {}
    try:
        for hook in WINDOWS:
            directory = base / hook
            directory.mkdir()
            prefix = str(directory / "model.ckpt")
            children[hook] = Child(
                [script, "medium", prefix, "steps", "5"],
                child_env(VS_CRASH_HOOK=hook),
                base / f"{hook}.log",
            )
            runs[hook] = (str(directory), prefix)
        for hook, child in children.items():
            child.expect("READY")
            child.send("GO 0")
        out = {}
        for hook, child in children.items():
            line = child.expect("HOOK ")
            child.kill()
            out[hook] = (*runs[hook], child.saved, line)
            # A pristine copy for tests that need the directory exactly as the kill
            # left it (others clean it up with a new Saver's first save).
            shutil.copytree(runs[hook][0], f"{runs[hook][0]}-pristine", symlinks=True)
        return out
    finally:
        for child in children.values():
            child.close()


@pytest.mark.parametrize("hook", WINDOWS)
def test_kill_inside_a_window_keeps_the_directory_consistent(window_kills, hook):
    directory, prefix, saved, line = window_kills[hook]
    assert saved == [0, 1, 2], (saved, line)  # killed inside the fourth save (step 3)
    latest = vs.train.latest_checkpoint(directory)
    # Deletion comes after the state-file update; the update itself is atomic.
    expected_step = 3 if hook.startswith("delete") else 2
    assert latest == f"{prefix}-{expected_step}"
    check_directory(directory, prefix, "medium", "steps", saved[-1])
    state = vs.train.get_checkpoint_state(directory)
    kept = [step_of(p) for p in state.all_model_checkpoint_paths]
    assert kept == ([1, 2, 3] if hook.startswith("delete") else [0, 1, 2])
    if hook == "delete-rmtree":
        # The half-removed checkpoint was renamed away first: no partial directory
        # under a checkpoint name, only a temporary one.
        assert not os.path.lexists(f"{prefix}-0")
        assert leftovers(directory), "expected the renamed-away checkpoint"
    new_saver_save(directory, prefix, "medium", "steps", 4)
    kept = [step_of(p) for p in vs.train.get_checkpoint_state(directory).all_model_checkpoint_paths]
    # After a kill inside the state-file update, step 3 is complete but named by no
    # state file, so the new Saver never adopts it.
    assert kept == ([2, 3, 4] if hook.startswith("delete") else [1, 2, 4])
    if hook != "delete-before":  # there, step 0 stays behind, named by no state file
        assert not os.path.lexists(f"{prefix}-0")


@pytest.mark.parametrize("hook", ["state-write", "state-replace"])
def test_new_saver_removes_state_file_temporaries_of_killed_saves(window_kills, hook):
    directory, _, _, _ = window_kills[hook]
    directory = f"{directory}-pristine"
    prefix = os.path.join(directory, "model.ckpt")
    assert [n for n in os.listdir(directory) if n.startswith("checkpoint.tmp")], (
        "the kill should have left a state-file temporary"
    )
    new_saver_save(directory, prefix, "medium", "steps", 5)
    assert [n for n in os.listdir(directory) if n.startswith("checkpoint.tmp")] == []
