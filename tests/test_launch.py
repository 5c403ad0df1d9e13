"""`python -m varstore.launch`: prefixes, exit status, fail-fast, argument errors.

The scripts here do not import JAX, so each launch costs a Python start-up.
"""

import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(tmp_path, code, *args, timeout=60):
    script = tmp_path / "script.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "varstore.launch", *args, str(script), "a b", "--flag"],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    return r, time.monotonic() - t0


ENV_DUMP = """
import os, sys
print(os.environ["VARSTORE_PROCESS_ID"], os.environ["VARSTORE_NUM_PROCESSES"],
      os.environ["VARSTORE_COORDINATOR"].startswith("127.0.0.1:"), sys.argv[1:])
print("xla", os.environ.get("XLA_FLAGS", ""), os.environ.get("JAX_PLATFORMS", ""))
"""


def test_output_lines_are_prefixed_by_process_and_get_the_environment(tmp_path):
    r, _ = launch(tmp_path, ENV_DUMP, "-n", "3", "--devices-per-process", "2")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for i in range(3):
        assert f"[{i}] {i} 3 True ['a b', '--flag']" in lines
        assert f"[{i}] xla --xla_force_host_platform_device_count=2 cpu" in lines


def test_one_process(tmp_path):
    r, _ = launch(tmp_path, ENV_DUMP, "-n", "1")
    assert r.returncode == 0, r.stderr
    assert "[0] 0 1 True ['a b', '--flag']" in r.stdout.splitlines()
    assert not any(line.startswith("[1]") for line in r.stdout.splitlines())


def test_a_failing_process_stops_the_others_and_sets_the_status(tmp_path):
    code = (
        "import os, sys, time\n"
        "if os.environ['VARSTORE_PROCESS_ID'] == '1':\n"
        "    print('bye', flush=True); sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    r, elapsed = launch(tmp_path, code, "-n", "3")
    assert r.returncode == 3
    assert elapsed < 20
    assert "[1] bye" in r.stdout


def test_a_process_killed_by_a_signal_exits_128_plus_the_signal(tmp_path):
    code = (
        "import os, signal, time\n"
        "if os.environ['VARSTORE_PROCESS_ID'] == '0':\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "time.sleep(60)\n"
    )
    r, elapsed = launch(tmp_path, code, "-n", "2")
    assert r.returncode == 137
    assert elapsed < 20


def test_overall_timeout(tmp_path):
    r, elapsed = launch(tmp_path, "import time; time.sleep(60)\n", "-n", "2", "--timeout", "1")
    assert r.returncode == 124
    assert "timed out" in r.stderr
    assert elapsed < 20


@pytest.mark.parametrize(
    "args",
    [
        ["-n", "0"],
        ["-n", "x"],
        ["-n", "2", "--devices-per-process", "0"],
        ["-n", "2", "--heartbeat-timeout", "0"],
    ],
)
def test_bad_arguments_exit_2(tmp_path, args):
    r, _ = launch(tmp_path, "print('ran')\n", *args)
    assert r.returncode == 2
    assert "ran" not in r.stdout
    assert "usage:" in r.stderr


def test_missing_script_argument_exits_2():
    r = subprocess.run(
        [sys.executable, "-m", "varstore.launch", "-n", "2"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert r.returncode == 2
    assert "usage:" in r.stderr
