"""train.mesh: mesh shapes, the logical-axis table, parameter and batch shardings."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from _training import tiny_config
from jaxunlearn.errors import MeshError
from jaxunlearn.models import Llama
from jaxunlearn.train import mesh as mesh_lib


def test_mesh_shapes_and_the_rest_of_the_devices():
    assert len(jax.devices()) >= 8, "conftest sets 8 host devices"
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4} and mesh.axis_names == ("data", "fsdp")
    assert dict(mesh_lib.make_mesh(data=0, fsdp=2).shape) == {"data": 4, "fsdp": 2}
    assert mesh_lib.make_mesh().devices.size == 1


def test_mesh_errors_name_the_field():
    with pytest.raises(MeshError, match="needs 16 devices"):
        mesh_lib.make_mesh(data=4, fsdp=4)
    with pytest.raises(MeshError, match="mesh.fsdp=3 does not divide"):
        mesh_lib.make_mesh(data=0, fsdp=3)
    with pytest.raises(MeshError, match="batch_size=6"):
        mesh_lib.check_batch_divides(6, mesh_lib.make_mesh(data=2, fsdp=2))
    mesh_lib.check_batch_divides(8, mesh_lib.make_mesh(data=2, fsdp=2))
    with pytest.raises(MeshError, match="mesh.fsdp must be >= 1"):
        mesh_lib.MeshConfig(fsdp=0)
    with pytest.raises(MeshError, match="mesh.data must be >= 0"):
        mesh_lib.MeshConfig(data=-1)


def test_logical_axes_map_to_fsdp_only_where_it_divides():
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    assert mesh_lib.logical_to_spec(("embed", "mlp"), (32, 48), mesh) == P("fsdp", None)
    assert mesh_lib.logical_to_spec(("vocab", "embed"), (50, 32), mesh) == P(None, "fsdp")
    assert mesh_lib.logical_to_spec(("embed",), (6,), mesh) == P(None)  # 6 % 4: whole
    # One mesh axis shards at most one dimension.
    assert mesh_lib.logical_to_spec(("embed", "embed"), (8, 8), mesh) == P("fsdp", None)
    assert mesh_lib.logical_to_spec(None, (3,), mesh) == P()


def test_parameters_are_sharded_on_their_width_and_batches_on_both_axes():
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    _, params = nnx.split(Llama(tiny_config(64), rngs=nnx.Rngs(0)), nnx.Param)
    placed = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    specs = [x.sharding.spec for x in jax.tree.leaves(placed)]
    assert any("fsdp" in s for s in specs)
    for x, spec in zip(jax.tree.leaves(placed), specs):
        for dim, axis in zip(x.shape, spec):
            assert axis is None or dim % mesh.shape[axis] == 0
    batch = {"ids": np.arange(8 * 3).reshape(8, 3)}
    on_mesh = mesh_lib.shard_batch(batch, mesh)["ids"]
    assert on_mesh.sharding.spec == P(("data", "fsdp"))
    shards = sorted((s.index[0].start, np.asarray(s.data).tolist())
                    for s in on_mesh.addressable_shards)
    assert shards == [(i, [batch["ids"][i].tolist()]) for i in range(8)]  # one row each
