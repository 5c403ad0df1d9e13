"""Start N JAX processes of one script on this machine, over loopback.

    python -m varstore.launch -n 4 [--devices-per-process 2] script.py [args...]

Each process gets the environment `vs.distributed.initialize()` reads (coordinator
127.0.0.1:<free port>, process count and id, short heartbeat and start-up
timeouts), and optionally `--xla_force_host_platform_device_count` CPU devices.
Output lines are forwarded with a `[i] ` prefix. When one process exits with an
error, the others are stopped and the launcher exits with that status; it exits 0
only when every process does.

Loopback only: for real clusters use the cluster's launcher (see README).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from .distributed import (
    ENV_COORDINATOR,
    ENV_HEARTBEAT,
    ENV_INIT_TIMEOUT,
    ENV_NUM_PROCESSES,
    ENV_PROCESS_ID,
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forward(stream, prefix: str, out, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        with lock:
            out.write(prefix + line.decode("utf-8", "replace"))
            out.flush()
    stream.close()


def launch(
    argv: list[str],
    num_processes: int,
    *,
    devices_per_process: int | None = None,
    heartbeat_timeout: int = 10,
    init_timeout: int = 60,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Runs `argv` (a Python script and its arguments) in `num_processes`
    processes; returns the exit status (0 only if all succeeded)."""
    port = free_port()
    base = dict(os.environ if env is None else env)
    base[ENV_COORDINATOR] = f"127.0.0.1:{port}"
    base[ENV_NUM_PROCESSES] = str(num_processes)
    base[ENV_HEARTBEAT] = str(heartbeat_timeout)
    base[ENV_INIT_TIMEOUT] = str(init_timeout)
    base.setdefault("PYTHONUNBUFFERED", "1")
    if devices_per_process is not None:
        flags = [f for f in base.get("XLA_FLAGS", "").split() if "device_count" not in f]
        flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
        base["XLA_FLAGS"] = " ".join(flags)
        base.setdefault("JAX_PLATFORMS", "cpu")
    lock = threading.Lock()
    procs, threads = [], []
    for i in range(num_processes):
        penv = dict(base, **{ENV_PROCESS_ID: str(i)})
        p = subprocess.Popen(
            [sys.executable, *argv],
            env=penv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        t = threading.Thread(target=_forward, args=(p.stdout, f"[{i}] ", sys.stdout, lock), daemon=True)
        t.start()
        procs.append(p)
        threads.append(t)
    status = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed:
                status = failed[0].returncode
                break
            if deadline is not None and time.monotonic() > deadline:
                sys.stderr.write(f"varstore.launch: timed out after {timeout} s\n")
                status = 124
                break
            time.sleep(0.05)
        else:
            status = next((p.returncode for p in procs if p.returncode), 0)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for t in threads:
            t.join(2)
    if status and status < 0:
        status = 128 - status  # killed by a signal: 128 + signal number
    return status


def main(args: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m varstore.launch",
        description="Run a script in N JAX processes on this machine (loopback).",
    )
    parser.add_argument("-n", "--num-processes", type=int, required=True)
    parser.add_argument(
        "--devices-per-process", type=int, default=None,
        help="CPU devices per process (sets XLA_FLAGS and JAX_PLATFORMS=cpu)",
    )
    parser.add_argument("--heartbeat-timeout", type=int, default=10)
    parser.add_argument("--init-timeout", type=int, default=60)
    parser.add_argument("--timeout", type=float, default=None, help="overall limit, seconds")
    parser.add_argument("script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    if ns.num_processes < 1:
        parser.error("-n must be at least 1")
    if ns.devices_per_process is not None and ns.devices_per_process < 1:
        parser.error("--devices-per-process must be at least 1")
    if ns.heartbeat_timeout < 1 or ns.init_timeout < 1:
        parser.error("--heartbeat-timeout and --init-timeout must be at least 1 second")
    return launch(
        [ns.script, *ns.script_args],
        ns.num_processes,
        devices_per_process=ns.devices_per_process,
        heartbeat_timeout=ns.heartbeat_timeout,
        init_timeout=ns.init_timeout,
        timeout=ns.timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
