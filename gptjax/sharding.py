"""The only place that builds device meshes and maps logical axis names to mesh axes."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from gptjax import axes
from gptjax.errors import GptjaxError

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]


def resolve_mesh_shape(shape: dict[str, int], num_devices: int) -> tuple[int, ...]:
    """{'data': d, 'fsdp': f, 'tensor': t} with at most one -1 -> concrete sizes for the devices."""
    missing = [a for a in MESH_AXES if a not in shape]
    if missing:
        raise GptjaxError(f"mesh {shape} lacks the axes {missing}; give all of {MESH_AXES}")
    sizes = [int(shape[a]) for a in MESH_AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    bad = [f"{a}={s}" for a, s in zip(MESH_AXES, sizes) if s == 0 or s < -1]
    if bad or len(free) > 1:
        raise GptjaxError(
            f"mesh {dict(zip(MESH_AXES, sizes))} is invalid ({', '.join(bad) or 'two -1'}): "
            "each of mesh.data, mesh.fsdp, "
            "mesh.tensor must be a positive integer, at most one of them -1 (all the rest). "
            "Fix the config, e.g. --config.mesh.data=-1 --config.mesh.fsdp=1 "
            "--config.mesh.tensor=1")
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise GptjaxError(
                f"mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: the fixed "
                f"axes multiply to {fixed}, which does not divide {num_devices}. Choose sizes "
                f"whose product divides {num_devices}.")
        sizes[free[0]] = num_devices // fixed
    elif fixed != num_devices:
        raise GptjaxError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {fixed} devices but {num_devices} are "
            "available. Make data*fsdp*tensor equal the device count, or set one axis to -1.")
    return tuple(sizes)


def make_mesh(shape: dict[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh over all devices (of every process) or the given ones."""
    devices = list(jax.devices() if devices is None else devices)
    try:
        sizes = resolve_mesh_shape(shape, len(devices))
    except GptjaxError as e:
        if jax.process_count() == 1:
            raise
        # Name where the devices are: a multi-process mesh spans every process's devices.
        raise GptjaxError(
            f"{e} (The devices are global: {jax.process_count()} processes with "
            f"{jax.local_device_count()} device(s) each; start more processes or give each more "
            "devices, e.g. launch/local.py --devices_per_process.)") from None
    if devices == list(jax.devices()):
        # Topology-aware placement (ICI/NVLink neighbours on the fast axes) when using them all.
        return jax.make_mesh(sizes, MESH_AXES, axis_types=(AxisType.Auto,) * 3,
                             devices=devices)
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
                axis_types=(AxisType.Auto,) * 3)


@contextlib.contextmanager
def activated(mesh: Mesh, rules: Rules):
    """Mesh + logical rules in scope, so the model's activation constraints bind while tracing."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(list(rules)):
        yield


def rules_from_config(rules: Any) -> tuple[tuple[str, Any], ...]:
    """Config rules (list of [logical, mesh axis | [mesh axes] | None]) -> flax rules tuple."""
    out = []
    for logical, physical in rules:
        if isinstance(physical, (list, tuple)):
            physical = tuple(physical)
            unknown = [p for p in physical if p not in MESH_AXES]
        else:
            unknown = [] if physical is None or physical in MESH_AXES else [physical]
        if unknown:
            raise GptjaxError(f"sharding rule {logical!r} -> {physical!r} names unknown mesh "
                              f"axes {unknown}; mesh axes are {MESH_AXES}")
        out.append((str(logical), physical))
    return tuple(out)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for a pytree whose leaves are (abstract) flax `Partitioned` boxes."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, list(rules))


def batch_axes(rules: Rules) -> Any:
    """The mesh axes the batch dimension is split over, per the rules."""
    for logical, physical in rules:
        if logical == axes.BATCH:
            return physical
    return None


def batch_sharding(mesh: Mesh, rules: Rules, leading: int = 0) -> NamedSharding:
    """Sharding of a (..., B, ...) batch with `leading` unsharded dims before B (e.g. a stack of
    batches): B over the batch axes, everything else replicated."""
    return NamedSharding(mesh, P(*([None] * leading), batch_axes(rules)))


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split: the product of its mesh axes' sizes."""
    ax = batch_axes(rules)
    if ax is None:
        return 1
    ax = (ax,) if isinstance(ax, str) else ax
    return math.prod(mesh.shape[a] for a in ax)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: Any, sharding: NamedSharding) -> Any:
    """Assemble global arrays from this process's rows (each process passes its own slice);
    `local` is one array or a pytree of them, all laid out by `sharding`."""
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def to_host(tree: Any) -> Any:
    """Host numpy copies of a pytree of global arrays, in every process (arrays sharded over
    several processes' devices are gathered first: a collective, so every process must call)."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))
    return jax.tree.map(one, tree)
