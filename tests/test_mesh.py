"""train.mesh: mesh shapes, and errors that name the field (the logical-axis table and
the sharded computations are tested where they are used: test_step, test_unlearn)."""

import jax
import pytest

from jaxunlearn.errors import MeshError
from jaxunlearn.train import mesh as mesh_lib


def test_mesh_shapes_and_the_rest_of_the_devices():
    assert len(jax.devices()) >= 8, "conftest sets 8 host devices"
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    assert (mesh.shape["data"], mesh.shape["fsdp"]) == (2, 4) and mesh.devices.size == 8
    zero = mesh_lib.make_mesh(data=0, fsdp=2)  # data=0: every device fsdp leaves
    assert (zero.shape["data"], zero.shape["fsdp"]) == (len(jax.devices()) // 2, 2)
    assert mesh_lib.make_mesh().devices.size == 1


def test_mesh_errors_name_the_field():
    with pytest.raises(MeshError, match="needs 16 devices"):
        mesh_lib.make_mesh(data=4, fsdp=4)
    with pytest.raises(MeshError, match="batch_size=6"):
        mesh_lib.check_batch_divides(6, mesh_lib.make_mesh(data=2, fsdp=2))
    mesh_lib.check_batch_divides(8, mesh_lib.make_mesh(data=2, fsdp=2))
    with pytest.raises(MeshError, match="mesh.fsdp must be >= 1"):
        mesh_lib.MeshConfig(fsdp=0)
    with pytest.raises(MeshError, match="mesh.data must be >= 0"):
        mesh_lib.MeshConfig(data=-1)
