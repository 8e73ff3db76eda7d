"""Device mesh and sharding rules: one code path from 1 CPU to a multi-host slice.

The mesh has three axes, ``("data", "fsdp", "tensor")``. Parameters declare logical axis
names when they are created (``out_sharding=("embed", "mlp")`` in ``models/block.py``);
the one table below maps logical names to mesh axes. Batches are split over
``("data", "fsdp")`` and replicated over ``tensor``.

Tensor parallelism follows Megatron-LM's column/row split (as MaxText's logical rules
do): q/k/v and the MLP's gate/up are split by output columns (heads, kv heads, ffn
units), o and down by input rows, so each device computes its heads' attention and its
ffn units' share whole and one reduction per block sums the row-split outputs; the
embedding and LM head are split over the vocabulary. The partitioner (GSPMD) inserts
the collectives; the values are those of one device.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxunlearn.errors import MeshError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # a batch's leading (row) axis is split over these

# Logical parameter axis -> mesh axis. FSDP shards every weight along the model width,
# tensor parallelism along heads, kv heads, ffn units and vocabulary; head_dim and the
# stacked layers axis of scanned blocks stay whole.
LOGICAL_TO_MESH: dict[str, str | None] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "layers": None,
    "lora_rank": None,  # a LoRA adapter's rank axis (models.lora): small, kept whole
}
# The model config field behind each tensor-split logical axis, for error messages.
_TENSOR_FIELDS = {"vocab": "vocab_size", "mlp": "intermediate_size", "heads": "num_heads",
                  "kv_heads": "num_kv_heads"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Mesh shape; ``data * fsdp * tensor`` devices are used.

    ``data=0`` means "all devices not used by fsdp and tensor".
    """

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        if self.data < 0:
            raise MeshError(f"mesh.data must be >= 0, got {self.data}")
        for name in ("fsdp", "tensor"):
            if getattr(self, name) < 1:
                raise MeshError(f"mesh.{name} must be >= 1, got {getattr(self, name)}")


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over the first ``data * fsdp * tensor`` devices.

    ``tensor`` is the innermost (fastest-varying) axis: its devices are neighbours, as
    tensor parallelism communicates every block.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data == 0:
        if len(devices) % (fsdp * tensor):
            raise MeshError(f"mesh.fsdp={fsdp} x mesh.tensor={tensor} does not divide the "
                            f"{len(devices)} devices")
        data = len(devices) // (fsdp * tensor)
    need = data * fsdp * tensor
    if need > len(devices):
        raise MeshError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} needs {need} devices, "
                        f"only {len(devices)} available")
    return Mesh(np.array(devices[:need]).reshape(data, fsdp, tensor), MESH_AXES)


def from_config(config: MeshConfig, devices=None) -> Mesh:
    """The mesh a run's ``mesh`` section asks for."""
    return make_mesh(config.data, config.fsdp, config.tensor, devices)


def logical_to_spec(names: tuple | None, shape: tuple[int, ...], mesh: Mesh) -> P:
    """Mesh ``PartitionSpec`` for a parameter.

    An fsdp axis that does not divide evenly stays whole (a norm scale of odd width);
    a tensor-split axis must divide (``MeshError`` naming the model field), or the
    devices of one tensor group would hold different heads than their computation needs.
    """
    if not names:
        return P()
    spec = []
    for name, size in zip(names, shape):
        axis = LOGICAL_TO_MESH.get(name) if isinstance(name, str) else None
        if axis == "tensor" and size % mesh.shape[axis]:
            raise MeshError(f"mesh.tensor={mesh.shape[axis]} does not divide the model's "
                            f"{_TENSOR_FIELDS.get(name, name)}={size}")
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


def batch_shards(mesh: Mesh) -> int:
    """How many ways a batch's rows are split: ``data * fsdp``."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Batches ``[B, ...]``: rows split over ``("data", "fsdp")``, replicated over ``tensor``."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_batch_divides(batch_size: int, mesh: Mesh, field: str = "batch_size") -> None:
    n = batch_shards(mesh)
    if batch_size % n:
        raise MeshError(f"{field}={batch_size} is not divisible by the mesh's {n} batch shards "
                        f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']})")


def place_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """The global array ``x`` (a host array, the same on every process) laid out as
    ``sharding``: each process puts on its own devices only the slices they hold."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places a host batch (pytree of ``[B, ...]`` numpy arrays) on the mesh: rows split
    over ``("data", "fsdp")``, each process feeding its own devices' rows."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: place_global(x, sharding), batch)
