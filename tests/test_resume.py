"""Exact resume: training N steps, restoring in a fresh process and training N
more gives bit for bit what 2N uninterrupted steps give, also when the first run
is killed (SIGKILL) right after a save."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import varstore as vs

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_flax_mlp.py"
EVERY = 4
STEPS = 4 * EVERY


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Every run compiles the same programs: a shared persistent compilation cache
    # makes the later runs start in a fraction of the time.
    cache = tmp_path_factory.mktemp("jax-cache")
    return dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )


def command(ckpt_dir, steps, resume):
    cmd = [sys.executable, str(EXAMPLE), "--dir", str(ckpt_dir), "--steps", str(steps),
           "--every", str(EVERY)]
    return cmd + (["--resume"] if resume else [])


def run(env, ckpt_dir, steps, resume=False):
    out = subprocess.run(command(ckpt_dir, steps, resume), env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.splitlines()


def run_and_kill_after_save(env, ckpt_dir, steps, kill_at):
    proc = subprocess.Popen(command(ckpt_dir, steps, False), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith("saved ") and line.rstrip().endswith(f"-{kill_at}"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    assert proc.wait(timeout=60) == -signal.SIGKILL, "\n".join(lines[-20:])
    return lines


def losses(lines):
    out = {}
    for line in lines:
        if line.startswith("step "):
            _, step, _, loss = line.split()
            out[int(step)] = loss
    return out


def resumed_step(lines):
    (line,) = [ln for ln in lines if ln.startswith("resumed ")]
    return int(line.rsplit(" ", 1)[1])


def checkpoint_values(path):
    reader = vs.train.load_checkpoint(path)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()}


def assert_same_checkpoint(a, b):
    va, vb = checkpoint_values(a), checkpoint_values(b)
    assert va.keys() == vb.keys()
    assert any(n.startswith("opt/opt_state/") for n in va)
    assert {"step", "rng-key_data", "params/head/kernel"} <= va.keys()
    for name in va:
        assert va[name].dtype == vb[name].dtype, name
        assert va[name].tobytes() == vb[name].tobytes(), name


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """2N (here 4 * EVERY) steps in one uninterrupted run."""
    ckpt_dir = tmp_path_factory.mktemp("uninterrupted")
    lines = run(env, ckpt_dir, STEPS)
    assert sorted(losses(lines)) == list(range(1, STEPS + 1))
    return ckpt_dir, losses(lines)


def test_resume_in_a_fresh_process_is_bit_identical(env, reference, tmp_path):
    ref_dir, ref_losses = reference
    first = run(env, tmp_path, STEPS // 2)
    assert vs.train.latest_checkpoint(tmp_path).endswith(f"model.ckpt-{STEPS // 2}")
    second = run(env, tmp_path, STEPS, resume=True)
    assert resumed_step(second) == STEPS // 2
    assert losses(first) | losses(second) == ref_losses
    assert sorted(losses(second)) == list(range(STEPS // 2 + 1, STEPS + 1))
    # Parameters, optimizer state, step and RNG key, bit for bit.
    assert_same_checkpoint(ref_dir / f"model.ckpt-{STEPS}", tmp_path / f"model.ckpt-{STEPS}")
    assert_same_checkpoint(ref_dir / f"model.ckpt-{STEPS // 2}", tmp_path / f"model.ckpt-{STEPS // 2}")


def test_resume_after_sigkill_right_after_a_save(env, reference, tmp_path):
    ref_dir, ref_losses = reference
    killed = run_and_kill_after_save(env, tmp_path, STEPS, kill_at=STEPS // 2)
    # The last save may still have been in flight (blocking=False): the run goes
    # on from whichever checkpoint is complete, never from a half-written one.
    resumed = run(env, tmp_path, STEPS, resume=True)
    start = resumed_step(resumed)
    assert start in (STEPS // 2 - EVERY, STEPS // 2)
    got = losses(resumed)
    assert sorted(got) == list(range(start + 1, STEPS + 1))
    assert {s: ref_losses[s] for s in got} == got
    assert {s: ref_losses[s] for s in losses(killed)} == losses(killed)
    assert_same_checkpoint(ref_dir / f"model.ckpt-{STEPS}", tmp_path / f"model.ckpt-{STEPS}")
    state = vs.train.get_checkpoint_state(tmp_path)
    assert len(state.all_model_checkpoint_paths) <= 3  # max_to_keep spans the restart
