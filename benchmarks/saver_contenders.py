"""The contenders of bench_saver.py: workloads, and one class per way of saving/restoring.

Every contender has `save(dir) -> {part: seconds}` and `restore(dir) -> seconds`, and
`values(dir, names) -> {name: numpy array}` (untimed, to check what a restore returns).
Also the helpers they share: fsync, page-cache drops, and `prefault` (see PREFAULT).
"""

import glob
import os
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

import varstore as vs

# (number of variables, shape); W3 also gets SMALL.
FULL = {"W1": (20, (4096, 1638)), "W2": (2000, (4096,)), "W3": (8, (16384, 4096))}
QUICK = {"W1": (20, (256, 1638)), "W2": (200, (4096,)), "W3": (8, (1024, 4096))}
SMALL = ("small", (1024,))  # 4 KiB
ASYNC_WORKLOADS = ("W1", "W3")
MEMORY_WORKLOADS = ("W1", "W3")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# -- workloads --------------------------------------------------------------------------------
def workload_shapes(wname, quick=False):
    """{name: shape} of a workload, names as a TF1 model would have them."""
    n, shape = (QUICK if quick else FULL)[wname]
    if wname == "W2":
        shapes = {f"block{i // 10:03d}/v{i % 10}": shape for i in range(n)}
    elif wname == "W3":
        shapes = {f"big{i}/w": shape for i in range(n)}
        shapes[SMALL[0]] = SMALL[1]
    else:
        shapes = {f"layer{i:02d}/w": shape for i in range(n)}
    return shapes


def make_arrays(shapes, seed=0):
    """Random float32 jax.Arrays on device 0, generated one variable at a time."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes.items():
        host = rng.random(shape, dtype=np.float32)
        out[name] = jax.device_put(host)
        del host
    jax.block_until_ready(list(out.values()))
    return out


def nbytes_of(shapes):
    return sum(int(np.prod(s)) * 4 for s in shapes.values())


def nest(flat):
    tree = {}
    for name, value in flat.items():
        *scopes, leaf = name.split("/")
        d = tree
        for k in scopes:
            d = d.setdefault(k, {})
        d[leaf] = value
    return tree


# -- file system helpers ------------------------------------------------------------------------
def fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def can_drop_caches():
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")


# This project's machines are Firecracker microVMs with free page reporting (kernel
# command line `page_reporting.page_reporting_order`): memory the guest has left free for
# a few seconds is handed back to the host, and touching it again costs a host page fault
# per page -- measured 5.0 s for 2 GiB against 0.23 s for memory freed just before. That
# would charge whichever contender allocates fresh memory first (restores into new arrays,
# saves into new page cache) by chance. So, unless --no-prefault, every timed operation is
# preceded (untimed) by touching and freeing as much memory as it needs, which puts that
# memory back at the head of the guest's free lists, as on an ordinary machine.
PREFAULT = [True]


def prefault(nbytes):
    if PREFAULT[0] and nbytes > 0:
        np.ones(int(nbytes) // 8 + 1, np.float64)  # written page by page, then freed


def page_reporting():
    """The kernel's free page reporting order, or None when it does not report."""
    try:
        with open("/proc/cmdline") as f:
            cmdline = f.read()
    except OSError:
        return None
    for arg in cmdline.split():
        if arg.startswith("page_reporting.page_reporting_order="):
            return arg.split("=", 1)[1]
    return None


def clean(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


# -- contenders ------------------------------------------------------------------------------
class Varstore:
    name = "varstore"

    def __init__(self, arrays):
        self.store = vs.VarStore(arrays)
        self.names = list(arrays)
        self.saver = vs.train.Saver(self.names, max_to_keep=None)

    @staticmethod
    def prefix(d):
        return os.path.join(d, "model.ckpt")

    def save(self, d):
        t0 = time.perf_counter()
        self.saver.save(self.store, self.prefix(d))
        return {"save": time.perf_counter() - t0}

    def restore(self, d):
        t0 = time.perf_counter()
        out = self.saver.restore(self.prefix(d))
        jax.block_until_ready(list(out.values()))
        seconds = time.perf_counter() - t0
        del out
        return seconds

    def values(self, d, names):
        out = vs.train.Saver(names).restore(self.prefix(d))
        return {n: np.asarray(out[n]) for n in names}


class _NoHash:
    """Stands in for the `xxhash` module: every digest is 0, so saves record 0 and reads
    compare 0 with 0 -- varstore's work without the hashing."""

    class xxh3_64:  # noqa: N801 - the name of the xxhash class it replaces
        def update(self, data):
            pass

        def intdigest(self):
            return 0

    @staticmethod
    def xxh3_64_intdigest(data):
        return 0


class VarstoreNoHash(Varstore):
    """varstore with its checksums stubbed out (not a user option: a measurement).

    `varstore._ckpt_io._xxhash` is the library's hook for the hashing module (tests set
    it); replacing it with `_NoHash` during this contender's calls only gives the
    end-to-end cost of checksumming. `available()` is False when the hook is gone."""

    name = "varstore, checksums stubbed"

    @staticmethod
    def available():
        from varstore import _ckpt_io

        try:
            return getattr(_ckpt_io, "_xxhash") is not None
        except AttributeError:
            return False

    def _stubbed(self, fn, *args):
        from varstore import _ckpt_io

        real = _ckpt_io._xxhash
        _ckpt_io._xxhash = _NoHash
        try:
            clear_metadata_cache()  # its digests are all 0: never mix its parses with others
            return fn(*args)
        finally:
            _ckpt_io._xxhash = real
            clear_metadata_cache()

    def save(self, d):
        return self._stubbed(super().save, d)

    def restore(self, d):
        return self._stubbed(super().restore, d)

    def values(self, d, names):
        return self._stubbed(super().values, d, names)


_warned_no_cache = []


def clear_metadata_cache():
    """Clears varstore's cache of parsed checkpoint metadata (private; it moves between
    modules as the library is refactored: every `_ckpt_cache` dict of a varstore module),
    so that a probe pays what a reader new to the checkpoint pays. Says so once when there
    is none."""
    caches = {id(c): c for name, m in list(sys.modules.items())
              if name.startswith("varstore") and m is not None
              for c in [getattr(m, "_ckpt_cache", None)] if isinstance(c, dict)}
    if not caches and not _warned_no_cache:
        _warned_no_cache.append(True)
        log("note: no varstore metadata cache found to clear; 'uncached' figures may be cached")
    for c in caches.values():
        c.clear()


def _get(tree, name):
    for k in name.split("/"):
        tree = tree[k]
    return tree


class Orbax:
    name = "orbax"

    def __init__(self, arrays):
        self.tree = nest(arrays)
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        self.target = nest(
            {n: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev) for n, a in arrays.items()}
        )
        self.ckptr = ocp.StandardCheckpointer()

    @staticmethod
    def path(d):
        return os.path.join(d, "ckpt")

    def save(self, d):
        os.makedirs(d, exist_ok=True)
        t0 = time.perf_counter()
        self.ckptr.save(self.path(d), self.tree)
        self.ckptr.wait_until_finished()
        return {"save": time.perf_counter() - t0}

    def restore(self, d):
        t0 = time.perf_counter()
        out = self.ckptr.restore(self.path(d), self.target)
        jax.block_until_ready(jax.tree.leaves(out))
        seconds = time.perf_counter() - t0
        del out
        return seconds

    def values(self, d, names):
        out = self.ckptr.restore(self.path(d), self.target)
        return {n: np.asarray(_get(out, n)) for n in names}


def _write_all(fd, view):
    pos = 0
    while pos < len(view):
        pos += os.write(fd, view[pos : pos + 0x7FFFF000])


class NumpyFiles:
    """One raw file per variable, written with os.write + fsync; read with readinto."""

    name = "numpy files"

    def __init__(self, arrays):
        self.host = {n: np.asarray(a) for n, a in arrays.items()}  # zero-copy views on CPU

    def save(self, d):
        t0 = time.perf_counter()
        os.makedirs(d)
        for i, a in enumerate(self.host.values()):
            fd = os.open(os.path.join(d, str(i)), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _write_all(fd, memoryview(a.reshape(-1).view(np.uint8)))
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_path(d, directory=True)
        fsync_path(os.path.dirname(d), directory=True)
        return {"save": time.perf_counter() - t0}

    def restore(self, d):
        t0 = time.perf_counter()
        out = []
        for i, a in enumerate(self.host.values()):
            b = np.empty(a.shape, a.dtype)
            with open(os.path.join(d, str(i)), "rb", buffering=0) as f:
                f.readinto(memoryview(b.reshape(-1).view(np.uint8)))
            out.append(b)
        seconds = time.perf_counter() - t0
        del out
        return seconds

    def values(self, d, names):
        index = {n: i for i, n in enumerate(self.host)}
        out = {}
        for n in names:
            a = self.host[n]
            with open(os.path.join(d, str(index[n])), "rb") as f:
                out[n] = np.frombuffer(f.read(), a.dtype).reshape(a.shape)
        return out


class NumpyOneFile(NumpyFiles):
    """All variables in one raw file."""

    name = "numpy 1 file"

    def save(self, d):
        t0 = time.perf_counter()
        os.makedirs(d)
        fd = os.open(os.path.join(d, "all"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for a in self.host.values():
                _write_all(fd, memoryview(a.reshape(-1).view(np.uint8)))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_path(d, directory=True)
        fsync_path(os.path.dirname(d), directory=True)
        return {"save": time.perf_counter() - t0}

    def restore(self, d):
        t0 = time.perf_counter()
        total = sum(a.nbytes for a in self.host.values())
        buf = np.empty(total, np.uint8)
        with open(os.path.join(d, "all"), "rb", buffering=0) as f:
            view = memoryview(buf)
            pos = 0
            while pos < total:
                pos += f.readinto(view[pos:])
        out, off = [], 0
        for a in self.host.values():
            out.append(buf[off : off + a.nbytes].view(a.dtype).reshape(a.shape))
            off += a.nbytes
        seconds = time.perf_counter() - t0
        del out, buf
        return seconds

    def values(self, d, names):
        offsets, off = {}, 0
        for n, a in self.host.items():
            offsets[n] = off
            off += a.nbytes
        out = {}
        with open(os.path.join(d, "all"), "rb") as f:
            for n in names:
                a = self.host[n]
                f.seek(offsets[n])
                out[n] = np.frombuffer(f.read(a.nbytes), a.dtype).reshape(a.shape)
        return out


def import_tf():
    """tensorflow, or None (with the reason logged) when it is not importable."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception as e:  # noqa: BLE001 - any import failure means "no TF contender"
        log(f"tensorflow is not importable ({type(e).__name__}: {e}); TF1 rows are skipped. "
            "Install it with: pip install tensorflow-cpu")
        return None
    tf.get_logger().setLevel("ERROR")
    return tf


class Tf1:
    """TF 1.x graph mode: variables of the same shapes, `tf.compat.v1.train.Saver`."""

    name = "tf1"

    def __init__(self, tf, arrays):
        self.tf = tf
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.vars = [
                tf.compat.v1.get_variable(
                    n, a.shape, tf.float32, initializer=tf.compat.v1.zeros_initializer()
                )
                for n, a in arrays.items()
            ]
            self.saver = tf.compat.v1.train.Saver(self.vars, max_to_keep=None)
        self.sess = tf.compat.v1.Session(graph=self.graph)
        # Feed the values into the initializers: no 2 GiB constants in the GraphDef.
        self.sess.run(
            [v.initializer for v in self.vars],
            {v.initializer.inputs[1]: np.asarray(a) for v, a in zip(self.vars, arrays.values())},
        )

    @staticmethod
    def prefix(d):
        return os.path.join(d, "model.ckpt")

    def save(self, d):
        os.makedirs(d, exist_ok=True)
        prefix = self.prefix(d)
        with self.graph.as_default():
            t0 = time.perf_counter()
            self.saver.save(self.sess, prefix, write_meta_graph=False)
            t1 = time.perf_counter()
            for p in sorted(glob.glob(prefix + ".*")) + [os.path.join(d, "checkpoint")]:
                fsync_path(p)
            fsync_path(d, directory=True)
            fsync_path(os.path.dirname(d), directory=True)
            t2 = time.perf_counter()
            self.saver.export_meta_graph(prefix + ".meta")
            t3 = time.perf_counter()
        os.remove(prefix + ".meta")
        return {"save": t1 - t0, "fsync": t2 - t1, "meta": t3 - t2}

    def restore(self, d):
        with self.graph.as_default():
            t0 = time.perf_counter()
            self.saver.restore(self.sess, self.prefix(d))
            return time.perf_counter() - t0

    def values(self, d, names):
        self.restore(d)
        by_name = {v.name.split(":")[0]: v for v in self.vars}
        return dict(zip(names, self.sess.run([by_name[n] for n in names])))

    def close(self):
        self.sess.close()
