"""Several JAX processes: bounded barriers, and saves that every process takes part in.

Coordination goes through the key-value store and barriers of the JAX distributed
runtime (what `jax.distributed.initialize` starts; no device collective, so nothing
is compiled and a missing process is detected by a timeout, not a hang):

1. `agree`: every process publishes what it is about to save (path, and per entry the
   shape, dtype, chunk grid and devices); process 0 also creates the tmp directory and
   publishes its name.  After a barrier bounded by `VARSTORE_BARRIER_TIMEOUT` (30 s by
   default), every process checks the same published facts, so all of them either go
   on or raise the same `CheckpointError`.  A save called in one process only ends here.
2. `MultiSaveJob.run`: each process writes its chunks (one file each, or, in the
   "ocdbt" layout, into its own OCDBT database ``ocdbt.process_<i>/``, as Orbax does) and
   its part file ``varstore_chunks.process_<i>.json`` (chunk digests), durably, then
   reports "ok" or its error.  After a barrier the primary checks every report, merges
   the parts into ``varstore_metadata.json`` (and the per-process databases into the
   root one, which refers to their data files without copying them), writes Orbax's
   files and commits by the atomic rename; a last barrier tells everyone the outcome.
   These two waits cover the peers' data writes and are bounded by `WORK_TIMEOUT`; a
   peer that dies is noticed sooner by the runtime's heartbeat, which ends every
   process.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import threading

import jax
import numpy as np
import tensorstore as ts

from ._errors import CheckpointError
from ._ckpt_fs import _active_tmp, _fsync_path, _state_lock, _write_small_file
from ._ckpt_format import _dtype_from_name
from ._ckpt_plan import _WChunk
from ._ckpt_write import _SaveJob, _fsync_tree, _ocdbt_context, _ocdbt_spec

ENV_BARRIER_TIMEOUT = "VARSTORE_BARRIER_TIMEOUT"
DEFAULT_BARRIER_TIMEOUT = 30.0
WORK_TIMEOUT = 3600.0
PART_PREFIX = "varstore_chunks.process_"
OCDBT_PROCESS_PREFIX = "ocdbt.process_"  # Orbax's name for per-process databases

__all__ = ["barrier_timeout", "sync_processes"]

_counters: dict[str, itertools.count] = {}
_counter_lock = threading.Lock()


def barrier_timeout() -> float:
    """Seconds to wait for every process to reach a save or restore ($VARSTORE_BARRIER_TIMEOUT)."""
    raw = os.environ.get(ENV_BARRIER_TIMEOUT, "")
    if not raw:
        return DEFAULT_BARRIER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or math.isinf(value):
        raise CheckpointError(
            f"{ENV_BARRIER_TIMEOUT}={raw!r} must be a positive number of seconds."
        )
    return value


def _client():
    from jax._src import distributed  # the runtime jax.distributed.initialize starts

    client = distributed.global_state.client
    if client is None:
        raise CheckpointError(
            f"There are {jax.process_count()} JAX processes but no distributed runtime "
            "client; call vs.distributed.initialize() (or jax.distributed.initialize()) "
            "in every process first."
        )
    return client


def _next_op(kind: str) -> str:
    with _counter_lock:
        n = next(_counters.setdefault(kind, itertools.count()))
    return f"varstore/{kind}/{n}"


def _barrier(barrier_id: str, timeout: float, what: str) -> None:
    try:
        _client().wait_at_barrier(barrier_id, max(1, int(timeout * 1000)))
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - JaxRuntimeError and friends
        text = str(e)
        if "DEADLINE_EXCEEDED" in text or "timed out" in text.lower():
            raise CheckpointError(
                f"{what}: not every JAX process got there within {timeout:g} s (this is "
                f"process {jax.process_index()} of {jax.process_count()}). With several "
                "processes every process must make the same call, in the same order "
                "(saver.save and saver.restore with the same path in all of them); a "
                "call made in some processes only waits for the others until this "
                f"timeout. Set {ENV_BARRIER_TIMEOUT} (seconds) to wait longer."
            ) from None
        raise CheckpointError(
            f"{what}: waiting for the other JAX processes failed: {text.splitlines()[0]}"
        ) from e


def sync_processes(what: str, timeout: float | None = None) -> None:
    """Waits until every JAX process has called `sync_processes` (the same number of
    times); a no-op with one process.

    Raises:
      CheckpointError: when not all processes arrive within `timeout` seconds
        (default `barrier_timeout()`), naming `what`.
    """
    if jax.process_count() == 1:
        return
    _barrier(_next_op("sync"), barrier_timeout() if timeout is None else timeout, what)


def new_save_op() -> str:
    return _next_op("save")


def agree(
    op: str, path: str, sig: dict | None, error: str | None, make_tmp, layout: str = "files"
) -> str:
    """Step 1 of a multi-process save (see the module docstring); returns the tmp dir.

    `layout` is the one this process would write; all must name the same one."""
    client = _client()
    pid, n = jax.process_index(), jax.process_count()
    tmp = None
    if pid == 0 and error is None:
        try:
            tmp = make_tmp()
        except CheckpointError as e:
            error = str(e)
    hello = {"path": path, "sig": sig, "error": error, "tmp": tmp, "layout": layout}
    client.key_value_set(f"{op}/hello/{pid}", json.dumps(hello))
    try:
        _barrier(f"{op}/start", barrier_timeout(), f"Saving checkpoint {path!r}")
    except CheckpointError:
        if tmp is not None:  # nobody else writes into it
            shutil.rmtree(tmp, ignore_errors=True)
            with _state_lock:
                _active_tmp.discard(tmp)
        raise
    got = dict(client.key_value_dir_get(f"{op}/hello/"))
    parts = [json.loads(got[f"{op}/hello/{i}"]) for i in range(n)]
    problem = _disagreement(parts)
    if problem is not None:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            with _state_lock:
                _active_tmp.discard(tmp)
        raise CheckpointError(problem)
    if pid == 0:  # everyone is past the previous save, status read included
        prev = int(op.rsplit("/", 1)[1]) - 1
        if prev >= 0:
            _try_delete(client, f"{op.rsplit('/', 1)[0]}/{prev}")
    return parts[0]["tmp"]


def _try_delete(client, key: str) -> None:
    try:
        client.key_value_delete(key)
    except Exception:  # noqa: BLE001 - only frees coordinator memory
        pass


def _disagreement(parts: list[dict]) -> str | None:
    first = parts[0]
    for i, p in enumerate(parts):
        if p["error"] is not None:
            return f"Saving checkpoint {p['path']!r} failed in process {i}: {p['error']}"
    for i, p in enumerate(parts[1:], 1):
        if p["path"] != first["path"]:
            return (
                f"The JAX processes save to different paths: process 0 to "
                f"{first['path']!r}, process {i} to {p['path']!r}. Every process must call "
                "save with the same path."
            )
        a, b = first["sig"], p["sig"]
        if a.keys() != b.keys():
            only0 = sorted(a.keys() - b.keys())
            only_i = sorted(b.keys() - a.keys())
            what = (
                f"process 0 has {only0[0]!r} that process {i} lacks"
                if only0
                else f"process {i} has {only_i[0]!r} that process 0 lacks"
            )
            return (
                f"The JAX processes save different variables to {first['path']!r}: {what}. "
                "Every process must save the same variables."
            )
        for name in sorted(a):
            if a[name] != b[name]:
                return (
                    f"Variable {name!r} is not the same global array in every process: "
                    f"process 0 has shape {tuple(a[name][0])} {a[name][1]} on devices "
                    f"{a[name][3]}, process {i} has shape {tuple(b[name][0])} {b[name][1]} "
                    f"on devices {b[name][3]}. In a multi-process save every value must be "
                    "one global jax.Array (sharded or replicated over devices of the global "
                    "mesh, as vs.initialize_variables makes them); an array made separately "
                    "in each process (e.g. on each process's default device) cannot be "
                    f"saved as one entry. Checkpoint {first['path']!r} was not written."
                )
    for i, p in enumerate(parts[1:], 1):  # same entries, so only an explicit layout differs
        if p.get("layout") != first.get("layout"):
            return (
                f"The JAX processes save {first['path']!r} in different layouts: process 0 "
                f"as {first.get('layout')!r}, process {i} as {p.get('layout')!r}. Every "
                "process must call write with the same layout."
            )
    return None


class MultiSaveJob(_SaveJob):
    """A save job of one process among several (step 2 of the module docstring)."""

    shared_tmp = True

    def __init__(self, *args, op: str, on_commit=None):
        super().__init__(*args)
        self.op = op
        self.on_commit = on_commit
        self.pid = jax.process_index()
        self.nproc = jax.process_count()
        self.write_zarr_json = self.pid == 0
        self.n_chunks = {
            e.name: (math.prod(-(-s // c) for s, c in zip(e.shape, e.chunk_shape)) if math.prod(e.shape) else 0)
            for e in self.entries
        }

    def _ocdbt_db(self) -> str:
        # Each process its own database; the primary merges them into the root (as
        # Orbax does), so the data is never copied and no file is written twice.
        return os.path.join(self.tmp, f"{OCDBT_PROCESS_PREFIX}{self.pid}")

    def _merge_ocdbt(self) -> None:
        """Step 2 for the OCDBT layout, in the primary: one root B+tree over every
        process's database (their data files stay where they are), durable, with the
        chunk location hints read from it."""
        ctx = _ocdbt_context()
        parent = ts.KvStore.open(_ocdbt_spec(self.tmp), context=ctx).result()
        txn = ts.Transaction(atomic=True)
        copies = []
        for i in range(self.nproc):
            db = os.path.join(self.tmp, f"{OCDBT_PROCESS_PREFIX}{i}")
            if os.path.exists(os.path.join(db, "manifest.ocdbt")):  # wrote nothing: none
                child = ts.KvStore.open(_ocdbt_spec(db), context=ctx).result()
                copies.append(child.experimental_copy_range_to(parent.with_transaction(txn)))
        for f in copies:
            f.result()
        txn.commit_async().result()
        del parent, txn, copies
        _fsync_path(os.path.join(self.tmp, "manifest.ocdbt"))
        _fsync_tree(os.path.join(self.tmp, "d"))
        chunks, nbytes = {}, {}
        for e in self.entries:
            size = math.prod(e.chunk_shape) * _dtype_from_name(e.dtype_name).itemsize
            for c in e.chunks:
                key = f"{e.dir}/{c.key}".encode()
                chunks[key], nbytes[key] = c, size
        self._index_ocdbt_values(chunks, nbytes)

    def _write_metadata_files(self) -> list[str]:
        """This process's part: the digests of the chunks it wrote."""
        part = {e.name: {c.key: c.digest for c in e.chunks} for e in self.entries if e.chunks}
        p = os.path.join(self.tmp, f"{PART_PREFIX}{self.pid}.json")
        _write_small_file(p, json.dumps(part).encode(), sync=False)
        return [p]

    def _merge_and_commit(self, reports: dict) -> None:
        for i in range(self.nproc):
            status = reports.get(f"{self.op}/written/{i}")
            if status != "ok":
                raise CheckpointError(
                    f"Saving checkpoint {self.path!r} failed in process {i}: "
                    f"{status or 'no report'}"
                )
        merged: dict[str, dict[str, str]] = {}
        for i in range(self.nproc):
            p = os.path.join(self.tmp, f"{PART_PREFIX}{i}.json")
            try:
                with open(p, "rb") as f:
                    part = json.loads(f.read())
            except (OSError, ValueError) as e:
                raise CheckpointError(
                    f"Saving checkpoint {self.path!r}: cannot read the part of process {i} "
                    f"({p}): {e}. All processes must write to one shared file system."
                ) from e
            for name, chunks in part.items():
                merged.setdefault(name, {}).update(chunks)
        for e in self.entries:
            chunks = merged.get(e.name, {})
            if len(chunks) != self.n_chunks[e.name]:
                raise CheckpointError(
                    f"Saving checkpoint {self.path!r}: variable {e.name!r} has "
                    f"{len(chunks)} of {self.n_chunks[e.name]} chunks written."
                )
            e.chunks = [_WChunk(k, np.empty(0, np.uint8), d) for k, d in sorted(chunks.items())]
        if self.layout == "ocdbt":
            self._merge_ocdbt()
        meta_files = _SaveJob._write_metadata_files(self)
        for i in range(self.nproc):
            os.remove(os.path.join(self.tmp, f"{PART_PREFIX}{i}.json"))
        for p in meta_files:
            _fsync_path(p)
        _fsync_path(self.tmp, True)
        self._commit()
        if self.on_commit is not None:
            self.on_commit()

    def run(self) -> None:
        client = _client()
        what = f"Saving checkpoint {self.path!r}"
        try:
            try:
                self._write_data()
                mine = "ok"
            except BaseException as e:  # noqa: BLE001 - reported to the primary
                mine = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
            client.key_value_set(f"{self.op}/written/{self.pid}", mine)
            _barrier(f"{self.op}/written", WORK_TIMEOUT, what)
            if self.pid == 0:
                status = "ok"
                try:
                    self._merge_and_commit(dict(client.key_value_dir_get(f"{self.op}/written/")))
                except BaseException as e:  # noqa: BLE001 - reported to everyone
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    status = str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}"
                _try_delete(client, f"{self.op}/hello")
                _try_delete(client, f"{self.op}/written")
                client.key_value_set(f"{self.op}/committed", status)
            _barrier(f"{self.op}/committed", WORK_TIMEOUT, what)
            status = client.blocking_key_value_get(f"{self.op}/committed", 60_000)
            if status != "ok":
                raise CheckpointError(
                    status if status.startswith("Saving checkpoint") else f"{what} failed: {status}"
                )
        finally:
            with _state_lock:
                _active_tmp.discard(self.tmp)
            for e in self.entries:  # release host copies early
                e.chunks = [_WChunk(c.key, np.empty(0, np.uint8), c.digest) for c in e.chunks]
