"""Multi-process JAX for varstore programs: one helper to join the processes.

Start N copies of a script with `python -m varstore.launch -n N script.py ...`
(on one machine, over loopback), or with your cluster's launcher. The script
calls `vs.distributed.initialize()` before anything else touches JAX devices; it
reads the coordinator address, process count and id from the environment the
launcher sets, and passes short heartbeat and start-up timeouts so that a dead
peer ends the others within seconds rather than minutes.

On a real cluster (GPU hosts, TPU pods) `initialize()` with none of these
variables set calls `jax.distributed.initialize()` with no arguments, which
detects the cluster (Slurm, Open MPI, Kubernetes, TPU metadata) as JAX does.

>>> import varstore as vs
>>> vs.distributed.initialize()
>>> jax.process_count()
4
"""

from __future__ import annotations

import os
import sys

import jax

from ._errors import VarStoreError

ENV_COORDINATOR = "VARSTORE_COORDINATOR"
ENV_NUM_PROCESSES = "VARSTORE_NUM_PROCESSES"
ENV_PROCESS_ID = "VARSTORE_PROCESS_ID"
ENV_HEARTBEAT = "VARSTORE_HEARTBEAT_TIMEOUT"
ENV_INIT_TIMEOUT = "VARSTORE_INIT_TIMEOUT"

__all__ = ["initialize", "is_primary"]


def _int_env(name: str, default: int | None = None) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise VarStoreError(
            f"Environment variable {name}={raw!r} must be an integer."
        ) from None


def initialize(
    *,
    heartbeat_timeout_seconds: int | None = None,
    initialization_timeout: int | None = None,
    exit_on_error: bool = True,
) -> None:
    """Joins this process to the others (`jax.distributed.initialize`).

    Args:
      heartbeat_timeout_seconds: how long a silent peer is tolerated before every
        process aborts (default: $VARSTORE_HEARTBEAT_TIMEOUT, else JAX's 100 s).
      initialization_timeout: how long to wait for all processes to join
        (default: $VARSTORE_INIT_TIMEOUT, else JAX's 300 s).
      exit_on_error: when True (default) and there are several processes, an
        uncaught exception prints its traceback and ends this process at once with
        status 1. Otherwise Python's exit would run JAX's shutdown, which waits (up
        to 5 minutes) for peers that may never get there, e.g. after a
        `CheckpointError` from a save that only this process made. Exit hooks do
        not run then (a pending `blocking=False` save of this process is lost).

    Raises:
      VarStoreError: when the environment is inconsistent.
    """
    coordinator = os.environ.get(ENV_COORDINATOR)
    kwargs = {}
    heartbeat = heartbeat_timeout_seconds or _int_env(ENV_HEARTBEAT)
    init_timeout = initialization_timeout or _int_env(ENV_INIT_TIMEOUT)
    if heartbeat is not None:
        kwargs["heartbeat_timeout_seconds"] = heartbeat
    if init_timeout is not None:
        kwargs["initialization_timeout"] = init_timeout
    if coordinator is None:
        jax.distributed.initialize(**kwargs)  # cluster auto-detection
        _exit_on_error(exit_on_error)
        return
    num = _int_env(ENV_NUM_PROCESSES)
    pid = _int_env(ENV_PROCESS_ID)
    if num is None or pid is None or not 0 <= pid < num:
        raise VarStoreError(
            f"{ENV_COORDINATOR} is set but {ENV_NUM_PROCESSES}={num!r} and "
            f"{ENV_PROCESS_ID}={pid!r} do not describe a process: set both, with "
            f"0 <= {ENV_PROCESS_ID} < {ENV_NUM_PROCESSES} (python -m varstore.launch "
            "sets them)."
        )
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num, process_id=pid, **kwargs
    )
    _exit_on_error(exit_on_error)


def _exit_on_error(enabled: bool) -> None:
    if not enabled or jax.process_count() < 2:
        return
    previous = sys.excepthook
    if getattr(previous, "_varstore_exit", False):
        return

    def hook(kind, value, tb):
        try:
            previous(kind, value, tb)
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:  # noqa: BLE001 - closed streams
                    pass
            os._exit(1)

    hook._varstore_exit = True
    sys.excepthook = hook


def is_primary() -> bool:
    """Whether this is process 0, the one that writes shared files."""
    return jax.process_index() == 0
