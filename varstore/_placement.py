"""Placements: TensorFlow device strings, JAX devices, shardings and device
functions, resolved to a `jax.sharding.Sharding` when a variable is declared.

This is the only module that builds shardings.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding, SingleDeviceSharding

from ._config import config
from ._errors import PlacementError


class PlacementWarning(UserWarning):
    """A placement fell back to the default device (`vs.config.soft_placement`)."""


Placement = Union[str, jax.Device, Sharding, PartitionSpec, Callable[[Any], Any], None]

# -- TensorFlow device strings ----------------------------------------------------
_GRAMMAR = (
    "[/job:NAME][/replica:N][/task:N][/device:]TYPE:N  (e.g. '/cpu:0', '/gpu:1', "
    "'/device:GPU:0', '/job:ps/task:7/device:CPU:0', '/job:worker/task:1')"
)
_FIELD = re.compile(
    r"/?(?:(job):([A-Za-z_][\w.-]*)|(replica):(\d+)|(task):(\d+)"
    r"|(?:device:)?([A-Za-z]+):(\d+|\*))",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """A parsed TensorFlow device string; unspecified fields are None."""

    job: str | None = None
    replica: int | None = None
    task: int | None = None
    device_type: str | None = None
    device_index: int | None = None

    @classmethod
    def from_string(cls, spec: str) -> DeviceSpec:
        """Parses `[/job:J][/replica:R][/task:T][/device:]TYPE:N`."""
        if not isinstance(spec, str):
            raise PlacementError(f"A device string must be a str, got {spec!r}.")
        fields: dict[str, Any] = {}
        pos = 0
        text = spec.strip()
        if text in ("", "/"):
            return cls()
        while pos < len(text):
            m = _FIELD.match(text, pos)
            if m is None or m.end() == pos:
                raise PlacementError(
                    f"Malformed device string {spec!r} at position {pos} "
                    f"({text[pos:]!r}). Expected {_GRAMMAR}."
                )
            g = m.groups()
            if g[0]:
                key, value = "job", g[1]
            elif g[2]:
                key, value = "replica", int(g[3])
            elif g[4]:
                key, value = "task", int(g[5])
            else:
                key, value = "device_type", g[6].upper()
                if "device_index" in fields:
                    raise PlacementError(
                        f"Malformed device string {spec!r}: two device types. "
                        f"Expected {_GRAMMAR}."
                    )
                fields["device_index"] = None if g[7] == "*" else int(g[7])
            if key in fields:
                raise PlacementError(
                    f"Malformed device string {spec!r}: '{key}' given twice. "
                    f"Expected {_GRAMMAR}."
                )
            fields[key] = value
            pos = m.end()
            if pos < len(text) and text[pos] != "/":
                raise PlacementError(
                    f"Malformed device string {spec!r} at position {pos} "
                    f"({text[pos:]!r}). Expected {_GRAMMAR}."
                )
        return cls(**fields)

    def merged_onto(self, outer: DeviceSpec) -> DeviceSpec:
        """Fields set here win; unset ones come from `outer` (TensorFlow's merge)."""
        kw = {
            f.name: getattr(self, f.name)
            if getattr(self, f.name) is not None
            else getattr(outer, f.name)
            for f in dataclasses.fields(self)
        }
        if self.device_type is not None:
            kw["device_index"] = self.device_index
        return DeviceSpec(**kw)

    def to_string(self) -> str:
        out = ""
        if self.job is not None:
            out += f"/job:{self.job}"
        if self.replica is not None:
            out += f"/replica:{self.replica}"
        if self.task is not None:
            out += f"/task:{self.task}"
        if self.device_type is not None:
            idx = "*" if self.device_index is None else self.device_index
            out += f"/device:{self.device_type}:{idx}"
        return out or "/"


_PLATFORMS = {"CPU": {"cpu"}, "GPU": {"gpu", "cuda", "rocm"}, "TPU": {"tpu"}}


def _all_devices() -> list[jax.Device]:
    devices = list(jax.devices())
    if not any(d.platform == "cpu" for d in devices):
        with contextlib.suppress(RuntimeError):
            devices += jax.devices("cpu")
    return devices


def _describe_devices(devices: Sequence[jax.Device]) -> str:
    return ", ".join(f"{d.platform.upper()}:{d.id}(task {d.process_index})" for d in devices)


def _device_for_spec(spec: DeviceSpec, original: str) -> jax.Device | None:
    """The JAX device a device spec names, or None when this host has none."""
    task = jax.process_index() if spec.task is None else spec.task
    devices = _all_devices()
    if spec.device_type is None:
        pool = [d for d in jax.devices() if d.process_index == task]
        return pool[0] if pool else None
    platforms = _PLATFORMS.get(spec.device_type, {spec.device_type.lower()})
    pool = sorted(
        (d for d in devices if d.platform in platforms and d.process_index == task),
        key=lambda d: d.id,
    )
    index = spec.device_index or 0
    return pool[index] if index < len(pool) else None


def _missing(what: str, name: str | None) -> SingleDeviceSharding:
    devices = _all_devices()
    who = f"variable {name!r}" if name else "a variable"
    if not config.soft_placement:
        raise PlacementError(
            f"Placement {what} of {who} names a device this host does not have. "
            f"Devices here: {_describe_devices(devices)}. Use one of them, or set "
            "vs.config.soft_placement = True to fall back to the default device."
        )
    warnings.warn(
        f"Placement {what} of {who}: no such device on this host; placing it on the "
        f"default device {devices[0]} (vs.config.soft_placement is True).",
        PlacementWarning,
        stacklevel=4,
    )
    return SingleDeviceSharding(jax.devices()[0])


# -- the context stack -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Entry:
    spec: Any
    mesh: Mesh | None


_local = threading.local()


def _stack() -> list[_Entry]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextlib.contextmanager
def device(spec: Placement, mesh: Mesh | None = None) -> Iterator[None]:
    """Places the variables declared inside the block, as `tf.device` does.

    Args:
      spec: a TensorFlow device string (`"/gpu:0"`, `"/job:ps/task:7"`), a
        `jax.Device`, a `jax.sharding.Sharding`, a `PartitionSpec` (resolved against
        `mesh` or the current JAX mesh), a function `fn(variable) -> placement`
        (returning None falls through to the enclosing placement), or None to clear.
      mesh: the mesh for PartitionSpecs inside this block.

    >>> with vs.device("/cpu:0"):
    ...     v = vs.Variable(vs.zeros([2]), name="v")
    """
    if mesh is not None and not isinstance(mesh, Mesh):
        raise PlacementError(f"vs.device: mesh must be a jax.sharding.Mesh, got {mesh!r}.")
    _check_placement(spec, "vs.device")
    _stack().append(_Entry(spec, mesh))
    try:
        yield
    finally:
        _stack().pop()


def _check_placement(spec: Placement, where: str) -> None:
    """Fails early on a malformed device string or a value that is no placement."""
    if isinstance(spec, str):
        DeviceSpec.from_string(spec)
    elif not (
        spec is None
        or isinstance(spec, (jax.Device, Sharding, PartitionSpec))
        or callable(spec)
    ):
        raise PlacementError(
            f"{where}: cannot use {type(spec).__name__} {spec!r} as a placement. "
            "Pass a device string, a jax.Device, a Sharding, a PartitionSpec, a "
            "function of the variable, or None."
        )


def _named(mesh: Mesh, spec: PartitionSpec, name: str) -> NamedSharding:
    """`NamedSharding(mesh, spec)`, with JAX's complaint turned into a PlacementError."""
    try:
        return NamedSharding(mesh, spec)
    except (ValueError, TypeError) as e:
        raise PlacementError(
            f"Variable {name!r}: PartitionSpec {spec} does not fit mesh axes "
            f"{dict(mesh.shape)} ({e}). Use only the mesh's axis names, each at most once."
        ) from None


def _current_mesh(entries: Sequence[_Entry]) -> Mesh | None:
    for e in reversed(entries):
        if e.mesh is not None:
            return e.mesh
    mesh = jax.sharding.get_mesh()
    if not mesh.empty:
        return mesh
    from jax._src import mesh as mesh_lib  # the legacy `with mesh:` context

    legacy = mesh_lib.thread_resources.env.physical_mesh
    return None if legacy.empty else legacy


def sharding_rules(
    rules: Sequence[tuple[str, Placement]], mesh: Mesh | None = None
) -> Callable[[Any], Any]:
    """A device function: the first regex that fully matches the variable's name
    decides its placement; no match falls through to the enclosing placement.

    Args:
      rules: `(regex, placement)` pairs, tried in order with `re.fullmatch` against
        the variable's full name (name scopes included). A placement is anything
        `vs.device` takes; `None` falls through as no match does.
      mesh: the mesh PartitionSpecs of the rules are resolved against; without it,
        the enclosing `vs.device(..., mesh=)` or the current JAX mesh.

    Returns:
      A function `fn(variable) -> placement | None` for `vs.device(fn)` or `device=`.

    Raises:
      PlacementError: for a rule that is no pair, a bad regex, a malformed device
        string or a value that is no placement (when the rules are built), and for a
        PartitionSpec that does not fit the mesh (when a variable is declared).

    >>> rules = vs.sharding_rules([(r".*/kernel", P("data", "model")),
    ...                            (r".*/bias", P())], mesh=mesh)
    >>> with vs.device(rules):
    ...     k = vs.Variable(vs.zeros([8, 4]), name="dense/kernel")
    """
    if mesh is not None and not isinstance(mesh, Mesh):
        raise PlacementError(
            f"vs.sharding_rules: mesh must be a jax.sharding.Mesh, got {mesh!r}."
        )
    if isinstance(rules, (str, bytes, Mapping)) or not isinstance(rules, Iterable):
        raise PlacementError(
            f"vs.sharding_rules: rules must be a list of (regex, placement) pairs, got "
            f"{type(rules).__name__} {rules!r}."
        )
    compiled = []
    for item in rules:
        try:
            pattern, placement = item
            compiled.append((re.compile(pattern), placement))
        except (TypeError, ValueError, re.error) as e:
            raise PlacementError(
                f"vs.sharding_rules: bad rule {item!r} ({e}). Each rule is a pair "
                "(regex, placement)."
            ) from None
        _check_placement(placement, f"vs.sharding_rules: rule {pattern!r}")

    def rule_fn(variable):
        for pattern, placement in compiled:
            if pattern.fullmatch(variable.name):
                if isinstance(placement, PartitionSpec) and mesh is not None:
                    return _named(mesh, placement, variable.name)
                return placement
        return None

    rule_fn.rules = tuple(compiled)  # type: ignore[attr-defined]
    return rule_fn


def resolve(variable, explicit: Placement = None) -> Sharding:
    """The sharding of `variable`: `explicit` if given, else the context stack."""
    entries = list(_stack())
    if explicit is not None:
        entries = entries + [_Entry(explicit, None)]
    strings: list[DeviceSpec] = []
    for i in range(len(entries) - 1, -1, -1):
        e = entries[i]
        spec = e.spec
        if callable(spec) and not isinstance(spec, (jax.Device, Sharding, PartitionSpec)):
            spec = spec(variable)
            if spec is None:
                continue
            if callable(spec) and not isinstance(spec, (jax.Device, Sharding)):
                raise PlacementError(
                    f"The device function for variable {variable.name!r} returned "
                    f"another function {spec!r}; it must return a placement or None."
                )
        if isinstance(spec, str):
            strings.append(DeviceSpec.from_string(spec))
            continue  # outer strings may fill in unset fields
        if strings:
            break
        if spec is None:
            return _default()
        return _to_sharding(spec, variable, _current_mesh(entries[: i + 1]))
    if strings:
        merged = DeviceSpec()
        for s in reversed(strings):
            merged = s.merged_onto(merged)
        dev = _device_for_spec(merged, merged.to_string())
        if dev is None:
            return _missing(repr(merged.to_string()), variable.name)
        return SingleDeviceSharding(dev)
    return _default()


def _default() -> Sharding:
    return SingleDeviceSharding(jax.devices()[0])


def _to_sharding(spec: Any, variable, mesh: Mesh | None) -> Sharding:
    name = variable.name
    if isinstance(spec, jax.Device):
        if spec not in _all_devices():
            return _missing(repr(spec), name)
        return SingleDeviceSharding(spec)
    if isinstance(spec, PartitionSpec):
        if mesh is None:
            raise PlacementError(
                f"Variable {name!r} is placed by PartitionSpec {spec} but no mesh is "
                "known. Pass one with vs.device(spec, mesh=mesh), "
                "vs.sharding_rules(..., mesh=mesh) or `with jax.set_mesh(mesh):`."
            )
        spec = _named(mesh, spec, name)
    if isinstance(spec, Sharding):
        check_divisible(spec, variable.shape, name)
        return spec
    raise PlacementError(
        f"Cannot place variable {name!r} with {type(spec).__name__} {spec!r}. Pass a "
        "device string, a jax.Device, a Sharding or a PartitionSpec."
    )


def check_divisible(sharding: Sharding, shape: tuple[int, ...], name: str) -> None:
    """Raises `PlacementError` when `sharding` cannot split an array of `shape`."""
    if isinstance(sharding, NamedSharding):
        spec = sharding.spec
        mesh_shape = dict(sharding.mesh.shape)
        if len(spec) > len(shape):
            raise PlacementError(
                f"Variable {name!r} of shape {shape} cannot be sharded by {spec}: the "
                f"spec has {len(spec)} entries for {len(shape)} dimensions."
            )
        for dim, axes in zip(shape, spec):
            if axes is None:
                continue
            names = axes if isinstance(axes, tuple) else (axes,)
            unknown = [a for a in names if a not in mesh_shape]
            if unknown:
                raise PlacementError(
                    f"Variable {name!r}: {spec} names mesh axes {unknown} that the mesh "
                    f"{mesh_shape} does not have."
                )
            parts = int(np.prod([mesh_shape[a] for a in names]))
            if dim % parts:
                raise PlacementError(
                    f"Variable {name!r} of shape {shape} cannot be sharded by {spec} "
                    f"over mesh axes {mesh_shape}: dimension {dim} is not divisible "
                    f"by {parts} ({' x '.join(names)}). Choose a spec whose axes "
                    "divide the shape, or pad the variable."
                )
        return
    try:
        sharding.shard_shape(shape)
    except Exception as e:  # noqa: BLE001
        raise PlacementError(
            f"Variable {name!r} of shape {shape} cannot use sharding {sharding}: {e}"
        ) from None


def describe(sharding: Sharding) -> str:
    """A short human-readable placement, for summaries."""
    if isinstance(sharding, SingleDeviceSharding):
        (d,) = sharding.device_set
        return f"{d.platform.upper()}:{d.id}"
    if isinstance(sharding, NamedSharding):
        axes = ",".join(f"{k}={v}" for k, v in sharding.mesh.shape.items())
        spec = ",".join(_describe_axes(s) for s in sharding.spec)
        return f"mesh({axes}) P({spec})"
    return type(sharding).__name__


def _describe_axes(axes: Any) -> str:
    if axes is None:
        return "None"
    if isinstance(axes, tuple):
        return "(" + ",".join(str(a) for a in axes) + ")"
    return str(axes)


def device_assignment(sharding: Sharding) -> tuple[jax.Device, ...]:
    """The devices of `sharding` in the order JAX assigns them to the program's
    partitions. One jit requires ONE order across all its inputs and outputs, so
    two meshes over the same devices in different orders need separate programs."""
    order = getattr(sharding, "_device_assignment", None)
    if order is None:
        order = sorted(sharding.device_set, key=lambda d: d.id)
    return tuple(order)


def device_set_key(sharding: Sharding) -> tuple[tuple[str, int, int], ...]:
    """(platform, process, id) of the devices of `sharding` in assignment order:
    one compiled program per key (usually one per device set; a mesh over the same
    devices in another order cannot share a jit with it, see `device_assignment`).
    Ids alone are not enough: a GPU and the host CPU both have a device 0."""
    return tuple((d.platform, d.process_index, d.id) for d in device_assignment(sharding))


def replicated_on(devices: Sequence[jax.Device]) -> Sharding:
    """A sharding that replicates an array on every one of `devices`, in the order
    given (it must be the program's device assignment order to join one jit)."""
    devices = list(devices)
    if len(devices) == 1:
        return SingleDeviceSharding(devices[0])
    return NamedSharding(Mesh(np.array(devices), ("_vs_all",)), PartitionSpec())


def stacked(sharding: Sharding) -> Sharding:
    """The sharding of `n` arrays of `sharding` stacked on a new leading axis."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return sharding
