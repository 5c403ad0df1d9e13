"""Checkpoint storage: the facade of the only varstore modules that touch Orbax or TensorStore.

A checkpoint is a directory that plain Orbax restores::

    orbax.checkpoint.StandardCheckpointer().restore(path)   # -> {"layer1": {"w": array}}

API
---
``EntryInfo``                     frozen dataclass: name, shape, dtype, nbytes, sharding, checksum.
``is_checkpoint(path)``           a complete pytree checkpoint directory (ours or any Orbax one).
``read_entries(path)``            metadata only, sorted by name; ``CheckpointError`` if unreadable.
``write(path, arrays, *, blocking=True, extra_metadata=None, layout="auto")`` -> ``SaveHandle``
                                  (``.wait(timeout=None)``, ``.done()``, ``.path``); atomic,
                                  durable, checksummed.  ``layout``: "auto", "files", "ocdbt".
``read(path, targets)``           ``{name: (shape, dtype, sharding | None)}`` -> ``{name: jax.Array}``;
                                  reads only the named entries, verifies, places, casts.
``read_numpy(path, name)``        one entry as a verified host array (stored dtype).
``read_extra_metadata(path)``     the ``extra_metadata`` dict given to ``write`` ({} if none).
``cleanup_tmp(directory)``        removes leftovers of interrupted saves, returns what it removed.
``wait_all()``                    waits for every pending asynchronous write of this process.
``remove_checkpoint(path)``       deletes a checkpoint, renamed to a tmp name first.
``sync_processes(what)``          a bounded barrier of all JAX processes (no-op with one).

Modules: ``_ckpt_format`` (names, dtypes, zarr/Orbax JSON, chunk grids), ``_ckpt_hash``
(digests, metadata seal), ``_ckpt_fs`` (fsync/pwrite/pread/renameat2, I/O pool, tmp dirs,
cleanup), ``_ckpt_plan`` (what each array stores), ``_ckpt_write`` (a save job and its
commit), ``_ckpt_save`` (``write``, background saves), ``_ckpt_multi`` (multi-process saves and
barriers), ``_ckpt_open`` (metadata), ``_ckpt_foreign`` (foreign Orbax checkpoints),
``_ckpt_chunks`` (reading and verifying chunks), ``_ckpt_read`` (planning reads, placing
arrays; with ``_to_device``).  This module is their facade: the rest of varstore imports only it.

Names are '/'-joined (``"layer1/w"``); Orbax sees them as nested dict keys and stores each
array under the parameter directory ``".".join(keys)`` (``layer1.w``).  Names whose parts
are empty, '.' or '..', that clash once joined with '.', that are both a leaf and a scope,
or that hit Orbax's own file names are refused with ``CheckpointError``.

On-disk format (``FORMAT_VERSION`` 1)
-------------------------------------
Every checkpoint holds Orbax's ``_METADATA`` (the pytree, ``use_zarr3: true``, every leaf
an ``np.ndarray``) and ``_CHECKPOINT_METADATA``, plus our ``varstore_metadata.json``, which
Orbax ignores (tested): format/version, layout, hash algorithm, ``extra`` and, per entry,
dtype, shape, parameter directory, chunk shape, the digest of every stored chunk, the
sharding it was saved with, and (OCDBT) where each chunk sits in the data files.  Its last
member, ``metadata_checksum``, is the digest of all bytes before it: any changed byte of
our metadata is an error (shapes included), and parsed metadata is cached per digest.  Arrays
are zarr v3 arrays without compression (the "bytes" codec, little-endian; Orbax's default
zstd saved 7.6% of bytes and halved speed) with the v2 chunk-key encoding (``0.0``), so a
chunk is exactly the C-order bytes of that block.  One chunk per saved shard (the whole
array when it is not sharded or fully replicated; edge chunks padded as zarr requires).

* ``"files"`` (``use_ocdbt: false``): ``<dir>/zarr.json`` plus one file per chunk, written
  with ``pwrite`` straight from the host buffer (no copy of the data), read with
  ``preadv`` straight into a 64-byte-aligned NumPy buffer that ``jax.device_put`` adopts
  without a copy on CPU.  I/O goes in 1 MiB pieces, each hashed while it is in the CPU
  cache (one pass over memory instead of two); chunks over 32 MiB are split into 32 MiB
  blocks handled in parallel.  Writes start disk writeback per block
  (``sync_file_range``), so the final fsync has little left to do.
* ``"ocdbt"`` (``use_ocdbt: true``): the same zarr keys inside one OCDBT key-value store at
  the checkpoint root, written with TensorStore's kvstore API in ONE transaction (no zarr
  driver, no per-leaf asyncio; ~0.1 s for 2,000 variables where Orbax takes ~3 s): a few
  files instead of two per variable, a few fsyncs instead of thousands.  TensorStore
  stores values verbatim in ``d/`` data files in key order; after the commit we record
  each chunk's (file, offset) in our metadata, and readers ``pread`` it directly (a 2,000
  key OCDBT lookup costs ~70 ms of CPU); the location is only a hint: bytes are verified
  against the chunk digest and a mismatch falls back to the kvstore read.
* ``"auto"`` (default): OCDBT unless a chunk exceeds 64 MiB, the mean chunk exceeds 1 MiB
  or the total exceeds 1 GiB (OCDBT holds a bytes copy of each value until the commit
  and was 2.7x slower than files for 8 x 16 MiB; see ``_choose_layout``).

Foreign Orbax checkpoints (OCDBT or not, zarr v2 or v3, compressed) are read with
TensorStore's zarr drivers; their entries are listed from ``_METADATA`` plus each array's
zarr metadata (batched kvstore reads: 0.06-0.1 s for 2,000 variables where Orbax's
``metadata()`` takes 1-2 s).  Their ``EntryInfo.checksum`` is ``None`` and their data
cannot be verified.

Integrity
---------
xxHash XXH3-64 (the ``xxhash`` package: maintained, wheels everywhere, releases the GIL)
of each stored chunk's bytes; for chunks over 32 MiB a two-level digest
(``"xxh3_64/b33554432:..."``: XXH3 of the blocks' XXH3 values) so that blocks are hashed
in parallel with their I/O.  Digests name their scheme, so readers need no settings.  Measured here: 14-26 GB/s (2 GiB in ~0.08 s when the
machine is quiet); crc32c (``crc32c`` package) ~13 GB/s, ``zlib.crc32`` 2.5 GB/s.  Fused
with the I/O as above its cost is within the run-to-run noise of save and restore.
Without ``xxhash`` installed, writes fall back to ``zlib.crc32`` (recorded per checkpoint)
and reading an XXH3 checkpoint raises.  Every read verifies every chunk it reads; a
mismatch, short or missing file raises ``CheckpointError`` naming the variable and the
checkpoint, never returning wrong values.  ``EntryInfo.checksum`` is the chunk digest
when the array is one chunk (for up to 32 MiB, XXH3 of its full logical C-order bytes), else
``"xxh3_64-chunks:<digest of the sorted key=digest lines>"``.  Per-chunk digests keep
verification local: a reader of some shards (another sharding, or one process of many)
verifies exactly the chunks it reads, without the whole array ever being in one place.

Atomicity
---------
Everything is written into a sibling ``<name>.varstore-tmp-<host>-<pid>-<rand>`` directory;
every file and directory in it is fsynced, then it is renamed into place and the parent
is fsynced.  Over an existing checkpoint ``renameat2(RENAME_EXCHANGE)`` swaps old and new
in one step and the old one (now under the tmp name) is deleted.  Where that call is not
available (old kernel or libc, some file systems), the fallback renames the old one to
``<name>.varstore-old-<...>``, renames the new one in and deletes the old; a crash between
those two renames leaves nothing at ``path`` and the old checkpoint under its ``-old-``
name, which ``cleanup_tmp`` renames back.  So a directory at ``path`` is always complete.
``cleanup_tmp`` skips tmp dirs of saves still running in this process and of live
processes on this host (a pid check, conservative if pids are reused).  An existing
non-empty directory that is not a checkpoint is never replaced.  Layouts with more than
512 files are made durable with one ``syncfs`` instead of one fsync per file (that also
flushes other dirty data of the same file system).

Asynchronous writes
-------------------
``write(..., blocking=False)`` takes a snapshot (NumPy arrays are copied; a jax.Array is
held as a zero-copy view on CPU, see ``_ckpt_plan._JAX_SNAPSHOT``, and copied to host
memory from accelerators), returns, and writes in a non-daemon thread; the next
``write`` first waits for it.  ``SaveHandle.wait()`` re-raises a failure as
``CheckpointError``; ``wait_all()`` raises for failures nobody waited on.  A pending
save also completes when the interpreter exits (a ``threading`` exit hook runs before
``concurrent.futures`` shuts its pools down).  ``blocking=True`` needs no copy either:
on CPU the saved bytes are read straight out of the device buffers.

Reading
-------
Each target region (one per distinct shard of the target sharding, or the whole array)
gets an aligned host buffer; when a stored chunk is exactly that region it is read
directly into it, otherwise the overlapping chunks are read once, verified and copied in.
In OCDBT checkpoints, chunks whose place in the data files was recorded at save time
(from TensorStore's dump of the B+tree) are read with ``preadv``, neighbours together
(runs of up to 4 MiB through gaps of at most 4 KiB), each verified, falling back to a
TensorStore read for any that does not verify.  The buffers then become arrays through
the transfer ``jax.device_put`` ends in (``_to_device``): about 8 us per array instead of
~30 us, the largest part of a 2,000-variable restore.  Small buffers are carved out of
shared 8 MiB blocks.  Peak host memory of a restore onto one CPU device is the data size
(measured 1.00x for 2 GiB; Orbax 1.45-1.8x, NumPy-read-then-device_put 2x).  Parsed
metadata is cached per (path, metadata digest); the cyclic GC is paused during the
bookkeeping bursts (a third of a 2,000-variable read with a large live heap).

Progress
--------
Writes and reads report to ``_progress.progress`` (a bar on a terminal above
``vs.config.progress_threshold_bytes``, nothing otherwise): a save advances by the bytes of
each written piece (1 MiB pieces of streamed chunks, each small file) and counts a variable
when its last chunk is written (OCDBT: once, after the commit); a read advances per read
task and counts a variable when its last task is done.  With several processes each shows
its own share.

Multi-process (``jax.process_count() > 1``; ``_ckpt_multi``)
------------------------------------------------------------
Every process calls ``write`` (and ``read``) with the same arguments.  Values must be
global ``jax.Array``s: the processes first agree (through the JAX distributed key-value
store, within ``VARSTORE_BARRIER_TIMEOUT`` seconds, default 30) on the tmp directory
name, which process 0 creates, and check that every process sees the same names,
shapes, dtypes and devices; a value that lives on different devices in different
processes (a process-local array) is refused in every process.  Each distinct shard is
written once, by the lowest process that holds it: in the ``"ocdbt"`` layout (chosen
from the global chunk grid by the same rule as one process) into that process's own
OCDBT database ``ocdbt.process_<i>/``, in the ``"files"`` layout as one file, and each
process records its chunks' digests in ``varstore_chunks.process_<i>.json``.  After a
barrier the primary process merges the parts into ``varstore_metadata.json`` and the
per-process databases into the root one (``experimental_copy_range_to``: the root
B+tree refers to the per-process data files, as in Orbax's multi-process checkpoints),
writes Orbax's files, removes the parts and commits by the atomic rename; a final barrier
tells the others the outcome (a failure in any process fails ``write`` in all).  Readers
verify only the chunks they read, so a process restoring its own shards of any target
sharding never touches the others' bytes.

Safety: nothing from a checkpoint is unpickled or executed (JSON and raw bytes only);
names and recorded file names are validated so no path leaves the checkpoint directory;
the only thing written outside it is its sibling tmp directory.
"""

from __future__ import annotations

import sys
import types

import importlib

from . import _ckpt_format, _ckpt_fs, _ckpt_hash, _ckpt_open
from ._ckpt_format import EntryInfo, cast_checked
from ._ckpt_format import _check_names as check_names
from ._ckpt_fs import _gc_paused as gc_paused
from ._ckpt_fs import cleanup_tmp, remove_checkpoint
from ._ckpt_open import is_checkpoint, read_entries, read_extra_metadata

__all__ = [
    "EntryInfo",
    "SaveHandle",
    "cast_checked",
    "check_names",
    "cleanup_tmp",
    "gc_paused",
    "is_checkpoint",
    "read",
    "read_entries",
    "read_extra_metadata",
    "read_numpy",
    "remove_checkpoint",
    "sync_processes",
    "wait_all",
    "write",
]

# Tunables live in the module that owns them; setting them here (tests shrink the I/O
# thresholds with monkeypatch) sets them there, so every module sees the new value.
_OWNED = {
    **{n: _ckpt_format for n in (
        "_IO_THREADS", "_RANGE_BYTES", "_HASH_BLOCK", "_SMALL_FILE_BYTES", "_FUSED_BLOCK",
        "_SMALL_BATCH", "_SYNCFS_MIN_FILES", "_OCDBT_TARGET_DATA_FILE_SIZE",
        "_OCDBT_MAX_MEAN_CHUNK_BYTES", "_OCDBT_MAX_CHUNK_BYTES", "_OCDBT_MAX_TOTAL_BYTES",
    )},
    "_force_rename_fallback": _ckpt_fs,
    "_xxhash": _ckpt_hash,
}

# The parts that import JAX or tensorstore load on first use, so that reading metadata
# (`varstore inspect`, `list_variables`) starts in a fraction of a second.
_LAZY_PARTS = ("_ckpt_plan", "_ckpt_write", "_ckpt_save", "_ckpt_multi", "_ckpt_foreign",
               "_ckpt_chunks", "_ckpt_read")


def _expose(module: types.ModuleType) -> None:
    # The private names of the parts stay reachable here (tests and benchmarks use some).
    for k, v in vars(module).items():
        if (
            not k.startswith("__")
            and k not in _OWNED  # read through __getattr__, never a stale copy
            and not isinstance(v, types.ModuleType)
            and getattr(v, "__module__", module.__name__) == module.__name__
        ):
            globals().setdefault(k, v)


for _m in (_ckpt_format, _ckpt_hash, _ckpt_fs, _ckpt_open):
    _expose(_m)
del _m


def __getattr__(name: str):
    owner = _OWNED.get(name)
    if owner is not None:
        return getattr(owner, name)
    if not name.startswith("__"):
        for part in _LAZY_PARTS:
            module = importlib.import_module(f".{part}", __package__)
            globals().setdefault(part, module)
            _expose(module)
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Facade(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        owner = _OWNED.get(name)
        if owner is not None:
            setattr(owner, name, value)
        else:
            super().__setattr__(name, value)

    def __delattr__(self, name: str) -> None:
        if name not in _OWNED:
            super().__delattr__(name)


sys.modules[__name__].__class__ = _Facade
