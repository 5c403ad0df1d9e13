"""Two processes saving into one directory while a reader follows it.

Writer A saves the even steps and writer B the odd ones into the same directory, each
with its own Saver (max_to_keep=3), as two jobs sharing a training directory would.
Meanwhile this process polls `latest_checkpoint` and restores whatever it names: that
must never fail, and must give exactly the values of that step. Afterwards the state
file names only existing checkpoints and no temporary directory is left behind.
"""

import inspect
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import varstore as vs

STEPS_PER_WRITER = 10


def specs(layout):
    """Variables that give the "files" layout (three 2 MiB arrays) or the "ocdbt"
    one (many small arrays)."""
    if layout == "files":
        return [(f"w{i}", (512, 1024), "float32") for i in range(3)] + [("b", (32,), "int32")]
    return [(f"layer{i // 20}/w{i}", (2048,), "float32") for i in range(60)]


def values_at(layout, step):
    out = {}
    for i, (name, shape, dtype) in enumerate(specs(layout)):
        n = math.prod(shape)
        x = (np.arange(n, dtype=np.uint64) * 2654435761 + step * 40503 + i * 7919) & 0xFFFFFF
        out[name] = x.astype(dtype).reshape(shape)
    return out


WRITER = r"""
import os
import sys
import time

os.environ["JAX_PLATFORMS"] = "cpu"
import math

import jax.numpy as jnp
import numpy as np
import pytest

import varstore as vs

{helpers}

prefix, parity, count, layout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print("READY", flush=True)
sys.stdin.readline()
saver = vs.train.Saver([n for n, _, _ in specs(layout)], max_to_keep=3)
for k in range(count):
    step = 2 * k + parity
    store = vs.VarStore({{n: jnp.asarray(v) for n, v in values_at(layout, step).items()}})
    saver.save(store, prefix, global_step=step)
    print("SAVED", step, flush=True)
    time.sleep(0.02)  # a training step
"""


def start_writer(script, prefix, parity, layout, log):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen(
        [sys.executable, script, prefix, str(parity), str(STEPS_PER_WRITER), layout],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        env=env,
        text=True,
    )


@pytest.mark.parametrize("layout", ["files", "ocdbt"])
def test_two_writers_and_a_reader_never_see_a_broken_checkpoint(tmp_path, layout):
    helpers = "\n\n".join(inspect.getsource(f) for f in (specs, values_at))
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(helpers=helpers))
    directory = tmp_path / "ckpt"
    prefix = str(directory / "model.ckpt")
    names = [n for n, _, _ in specs(layout)]
    logs = [open(tmp_path / f"writer{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    writers = [start_writer(str(script), prefix, i, layout, logs[i]) for i in range(2)]
    restored_steps = []

    def writer_logs():
        return "\n".join(
            f"writer {i} (exit {w.poll()}): " + (tmp_path / f"writer{i}.log").read_text()[-2000:]
            for i, w in enumerate(writers)
        )

    # Warm the reader up (first-call costs) while the writers import JAX.
    warm = vs.train.Saver(names).save(
        vs.VarStore({n: np.asarray(v) for n, v in values_at(layout, 0).items()}),
        str(tmp_path / "warm" / "m"),
    )
    vs.train.Saver(names).restore(warm)
    try:
        for w in writers:
            assert w.stdout.readline().startswith("READY")
        for w in writers:
            w.stdin.write("go\n")
            w.stdin.flush()
        deadline = time.monotonic() + 120
        while any(w.poll() is None for w in writers):
            assert time.monotonic() < deadline, "the writers did not finish in time"
            if not directory.exists():
                time.sleep(0.01)
                continue
            latest = vs.train.latest_checkpoint(str(directory))
            if latest is None:
                time.sleep(0.01)
                continue
            step = int(latest.rsplit("-", 1)[1])
            try:
                restored = vs.train.Saver(names).restore(latest)
            except vs.VarStoreError as e:
                raise AssertionError(f"restoring {latest}: {e}\n{writer_logs()}") from e
            expected = values_at(layout, step)
            for n in names:
                assert np.asarray(restored[n]).tobytes() == expected[n].tobytes(), (latest, n)
            restored_steps.append(step)
        for w in writers:
            assert w.wait() == 0, writer_logs()
            out = w.stdout.read().split()
            assert out.count("SAVED") == STEPS_PER_WRITER
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
                w.wait()
            w.stdin.close()
            w.stdout.close()
        for f in logs:
            f.close()
    assert len(set(restored_steps)) >= 3, f"the reader saw too little: {restored_steps}"
    latest = vs.train.latest_checkpoint(str(directory))
    assert latest is not None
    last = int(latest.rsplit("-", 1)[1])
    assert last in (2 * STEPS_PER_WRITER - 2, 2 * STEPS_PER_WRITER - 1)
    state = vs.train.get_checkpoint_state(str(directory))
    for p in state.all_model_checkpoint_paths:
        assert vs.train.checkpoint_exists(p), f"the state file names {p}, which is gone"
    assert [n for n in os.listdir(directory) if ".varstore-" in n] == []
    restored = vs.train.Saver(names).restore(latest)
    for n in names:
        assert np.asarray(restored[n]).tobytes() == values_at(layout, last)[n].tobytes()
    with open(os.path.join(latest, "varstore_metadata.json")) as f:
        assert json.load(f)["layout"] == layout, "the variables no longer give this layout"


HOLDER = r"""
import os
import sys

os.environ["JAX_PLATFORMS"] = "cpu"
import numpy as np

import varstore as vs

prefix = sys.argv[1]
real_rename = os.rename


def rename(src, dst, *args, **kwargs):
    # The save's data is complete in its temporary directory: hold it there.
    if ".varstore-tmp-" in os.path.basename(os.fspath(src)):
        print("HOLD", src, flush=True)
        sys.stdin.readline()
    return real_rename(src, dst, *args, **kwargs)


os.rename = rename
store = vs.VarStore({"w": np.arange(1000, dtype=np.float32)})
print("SAVING", flush=True)
vs.train.Saver(["w"]).save(store, prefix, global_step=1)
print("SAVED", flush=True)
"""


def test_a_new_saver_never_removes_the_save_in_progress_of_another_process(tmp_path):
    """A Saver's first save into a directory removes leftovers of dead processes only:
    the temporary directory of another live process's save survives it."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    directory = tmp_path / "ckpt"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(directory / "other")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        while line and not line.startswith("HOLD"):
            line = proc.stdout.readline()
        assert line.startswith("HOLD"), proc.stderr.read()[-3000:]
        tmp = line.split(" ", 1)[1].strip()
        assert os.path.isdir(tmp)
        store = vs.VarStore({"v": np.ones(3, np.float32)})
        vs.train.Saver(["v"]).save(store, str(directory / "mine"), global_step=1)
        assert os.path.isdir(tmp), "the other process's save in progress was removed"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("SAVED"), proc.stderr.read()[-3000:]
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
    other = str(directory / "other-1")
    np.testing.assert_array_equal(vs.train.load_variable(other, "w"), np.arange(1000))
