"""Foreign Orbax checkpoints (OCDBT or not, zarr v2 or v3, compressed): entries from
`_METADATA` plus each array's zarr metadata, data through TensorStore's zarr drivers."""

from __future__ import annotations

import base64
import json
import os

import ml_dtypes
import numpy as np
import tensorstore as ts

from ._errors import CheckpointError
from ._ckpt_fs import _aligned_empty
from ._progress import Progress
from ._ckpt_format import (
    OCDBT_MANIFEST,
    ORBAX_METADATA,
    VARSTORE_METADATA,
    _NUMPY_DTYPES,
    _as_dim,
    _dtype_from_name,
    _param_dir,
    _split_name,
)
from ._ckpt_open import (
    _Ckpt,
    _REntry,
    _load_json,
)


def _foreign_names(tree_metadata: dict) -> dict[str, tuple[str, ...]]:
    out = {}
    for _, item in tree_metadata.items():
        vm = item.get("value_metadata") or {}
        if vm.get("skip_deserialize"):
            continue
        if vm.get("value_type") not in ("np.ndarray", "jax.Array", "scalar"):
            continue
        keys = tuple(str(k["key"]) for k in item["key_metadata"])
        name = "/".join(keys)
        if _split_name(name) != keys:  # a key with '/' (or empty, '.', '..')
            raise CheckpointError(f"Orbax metadata names an unsupported parameter {keys!r}.")
        out[name] = keys
    return out


def _parse_zarr_meta(raw: bytes, zarr3: bool) -> tuple[tuple[int, ...], np.dtype]:
    m = json.loads(raw)
    shape = tuple(_as_dim(s) for s in m["shape"])
    if zarr3:
        return shape, _dtype_from_name(m["data_type"])
    dt = m["dtype"]
    if not isinstance(dt, str):
        raise ValueError(f"structured zarr dtype {dt!r}")
    if dt.lstrip("<>|=") in _NUMPY_DTYPES or hasattr(ml_dtypes, dt.lstrip("<>|=")):
        return shape, _dtype_from_name(dt.lstrip("<>|="))
    npdt = np.dtype(dt)
    return shape, np.dtype(npdt.newbyteorder("="))


def _foreign_shardings(path: str) -> dict[str, str]:
    p = os.path.join(path, "_sharding")
    try:
        with open(p, "rb") as f:
            raw = json.loads(f.read())
    except (OSError, ValueError):
        return {}
    out = {}
    for k, v in raw.items() if isinstance(raw, dict) else ():
        try:
            d = base64.urlsafe_b64decode(k.encode()).decode()
            s = json.loads(v)
            if s.get("sharding_type") == "NamedSharding":
                mesh = ", ".join(f"{a}={n}" for a, n in zip(s["axis_names"], s["shape"]))
                spec = tuple(s.get("partition_spec") or ())
                out[d] = f"NamedSharding(mesh=({mesh}), spec={spec!r})"
            else:
                out[d] = str(s.get("sharding_type"))
        except Exception:  # noqa: BLE001 - description only
            continue
    return out


def _open_foreign(path: str) -> _Ckpt:
    try:
        meta = _load_json(os.path.join(path, ORBAX_METADATA), "Orbax metadata")
    except FileNotFoundError:
        raise CheckpointError(
            f"{path!r} is not a checkpoint: it has neither {VARSTORE_METADATA} nor Orbax's "
            f"{ORBAX_METADATA}."
        ) from None
    try:
        names = _foreign_names(meta["tree_metadata"])
        use_zarr3 = meta.get("use_zarr3")
        use_ocdbt = meta.get("use_ocdbt")
        fill_missing = not meta.get("store_array_data_equal_to_fill_value", False)
    except (KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"Orbax metadata of {path!r} is malformed: {e}") from e
    if use_ocdbt is None:
        use_ocdbt = os.path.exists(os.path.join(path, OCDBT_MANIFEST))
    ck = _Ckpt(path, False, "ocdbt" if use_ocdbt else "files", {}, fill_missing=fill_missing)
    candidates = [True, False] if use_zarr3 is None else [bool(use_zarr3)]
    shardings = _foreign_shardings(path)
    dirs = {n: _param_dir(k) for n, k in names.items()}
    raws: dict[str, tuple[bytes, bool]] = {}
    try:
        if ck.layout == "ocdbt":
            kv = ts.KvStore.open(ck.kvstore_spec(), context=ts.Context()).result()
            futs = {
                (n, z3): kv.read(f"{d}/{'zarr.json' if z3 else '.zarray'}")
                for n, d in dirs.items()
                for z3 in candidates
            }
            for (n, z3), f in futs.items():
                r = f.result()
                if r.state == "value" and n not in raws:
                    raws[n] = (bytes(r.value), z3)
        else:
            for n, d in dirs.items():
                for z3 in candidates:
                    p = os.path.join(path, d, "zarr.json" if z3 else ".zarray")
                    try:
                        with open(p, "rb") as f:
                            raws[n] = (f.read(), z3)
                        break
                    except FileNotFoundError:
                        continue
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - TensorStore/OS errors
        raise CheckpointError(f"Cannot read the arrays' metadata of checkpoint {path!r}: {e}") from e
    for n, d in dirs.items():
        if n not in raws:
            raise CheckpointError(
                f"Checkpoint {path!r} lists variable {n!r} but has no array metadata for it "
                f"(looked for {d}/zarr.json and {d}/.zarray)."
            )
        raw, z3 = raws[n]
        try:
            shape, dtype = _parse_zarr_meta(raw, z3)
        except (KeyError, TypeError, ValueError, ArithmeticError) as e:
            raise CheckpointError(
                f"Cannot read the metadata of variable {n!r} in checkpoint {path!r}: {e}"
            ) from e
        ck.entries[n] = _REntry(n, d, shape, dtype, sharding=shardings.get(d), zarr3=z3)
    return ck


def read_foreign_regions(ck: _Ckpt, plans: list, bar: Progress) -> None:
    """Fills `region.buf` of each (entry, regions) plan with TensorStore's zarr drivers."""
    ctx = ts.Context({"file_io_concurrency": {"limit": 128}})
    opens = []
    for e, _ in plans:
        spec = {
            "driver": "zarr3" if e.zarr3 else "zarr",
            "kvstore": ck.kvstore_spec(e.dir),
            "recheck_cached_data": False,
            "recheck_cached_metadata": False,
        }
        if not ck.fill_missing:
            spec["fill_missing_data_reads"] = False
        opens.append(ts.open(spec, open=True, read=True, context=ctx))
    reads = []
    left = {id(e): len(regions) for e, regions in plans}
    bar.advance(0, sum(1 for n in left.values() if n == 0))
    for (e, regions), fut in zip(plans, opens):
        try:
            store = fut.result()
        except Exception as ex:  # noqa: BLE001
            raise CheckpointError(
                f"Cannot open variable {e.name!r} in checkpoint {ck.path!r}: {ex}"
            ) from ex
        for r in regions:
            if not r.region:
                reads.append((e, r, store.read()))
            else:
                sl = tuple(slice(lo, hi) for lo, hi in r.region)
                reads.append((e, r, store[sl].read()))
    for e, r, fut in reads:
        try:
            arr = np.asarray(fut.result())
        except Exception as ex:  # noqa: BLE001
            raise CheckpointError(
                f"Cannot read variable {e.name!r} from checkpoint {ck.path!r}: {ex}"
            ) from ex
        if arr.dtype != e.dtype:
            arr = arr.astype(e.dtype)
        buf = _aligned_empty(arr.shape, e.dtype)
        buf[...] = arr
        r.buf = buf
        left[id(e)] -= 1
        bar.advance(buf.nbytes, 1 if left[id(e)] == 0 else 0)
