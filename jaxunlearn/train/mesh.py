"""Device mesh and sharding rules: one code path from 1 CPU to a multi-host slice.

The mesh has two axes, ``("data", "fsdp")``. Parameters declare logical axis names when
they are created (``out_sharding=("embed", "mlp")`` in ``models/llama.py``); the one
table below maps logical names to mesh axes. Batches are split over both axes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxunlearn.errors import UserError

MESH_AXES = ("data", "fsdp")

# Logical parameter axis -> mesh axis. FSDP shards every weight along the model
# width; all other axes stay whole (tensor parallelism is not used at these sizes).
LOGICAL_TO_MESH: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": None,
    "mlp": None,
    "heads": None,
    "kv_heads": None,
    "head_dim": None,
}


class MeshError(UserError):
    """A mesh that does not fit the devices or the batch."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Mesh shape; ``data * fsdp`` must equal the number of devices used.

    ``data=0`` means "all devices not used by fsdp".
    """

    data: int = 1
    fsdp: int = 1

    def __post_init__(self):
        if self.data < 0:
            raise MeshError(f"mesh.data must be >= 0, got {self.data}")
        if self.fsdp < 1:
            raise MeshError(f"mesh.fsdp must be >= 1, got {self.fsdp}")


def make_mesh(data: int = 1, fsdp: int = 1, devices=None) -> Mesh:
    """A ``("data", "fsdp")`` mesh over the first ``data * fsdp`` devices."""
    devices = list(jax.devices() if devices is None else devices)
    if data == 0:
        if len(devices) % fsdp:
            raise MeshError(f"mesh.fsdp={fsdp} does not divide the {len(devices)} devices")
        data = len(devices) // fsdp
    need = data * fsdp
    if need > len(devices):
        raise MeshError(f"mesh data={data} x fsdp={fsdp} needs {need} devices, "
                        f"only {len(devices)} available")
    return Mesh(np.array(devices[:need]).reshape(data, fsdp), MESH_AXES)


def logical_to_spec(names: tuple | None, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Mesh ``PartitionSpec`` for a parameter; axes that don't divide evenly stay whole."""
    if not names:
        return P()
    spec = []
    for name, size in zip(names, shape):
        axis = LOGICAL_TO_MESH.get(name) if isinstance(name, str) else None
        if axis is not None and (size % mesh.shape[axis] or axis in spec):
            axis = None
        spec.append(axis)
    return P(*spec)


def param_shardings(state: nnx.State, mesh: Mesh) -> Any:
    """``NamedSharding`` for every variable of ``state`` (same tree structure)."""

    def one(var):
        names = var.get_metadata().get("out_sharding") if hasattr(var, "get_metadata") else None
        return var.replace(NamedSharding(mesh, logical_to_spec(names, var.shape, mesh)))

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches ``[B, ...]`` are split over both mesh axes (pure data parallelism for data)."""
    return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divides(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    n = math.prod(mesh.shape.values())
    if batch_size % n:
        raise MeshError(f"{field}={batch_size} is not divisible by the mesh's {n} devices "
                        f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (pytree of ``[B, ...]`` numpy arrays) on the mesh."""
    return jax.device_put(batch, batch_sharding(mesh))


def maybe_initialize_distributed(enabled: bool) -> None:
    """Multi-host runs call ``jax.distributed.initialize()`` first; nothing else changes.

    Without a cluster to join (no coordinator given or detected, e.g. ``distributed=true``
    on a single host) JAX's error becomes a ``MeshError``: one line, exit 2.
    """
    if enabled:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise MeshError(f"distributed=true: cannot join a multi-host job ({first}); on a "
                            "single host leave distributed=false") from None
