"""``train/mesh.py``: mesh shapes and errors that name the field; the tensor axis: Megatron column/row splits from the logical
rules, divisibility errors naming the field, and 1x2x4 / 2x1x4 (data x fsdp x tensor)
meshes on 8 simulated devices equal to one device for the forward pass, one NPO
unlearning step and the exact Hessian-vector product.

Sharded reductions sum in another order, so results are compared with bounds relative to
the largest magnitude of the compared quantity, not elementwise.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import losses, methods, secondorder
from jaxunlearn.data.batch import Batch
from jaxunlearn.errors import MeshError
from jaxunlearn.models import Llama, LlamaConfig
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import OptimizerConfig, init_train_state, make_optimizer, make_train_step, \
    state_shardings

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


# 8 heads, 4 kv heads, 64 ffn units and 64 tokens: every tensor-split axis divides by 4.
CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=8, num_kv_heads=4, tie_word_embeddings=False)
MESHES = pytest.mark.parametrize("shape", [(1, 2, 4), (2, 1, 4)], ids=["1x2x4", "2x1x4"])
B, T = 4, 10


def _params():
    return nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)


def _batch(seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, CONFIG.vocab_size, (B, T + 1)).astype(np.int32)
    att = np.ones((B, T), np.int32)
    att[1, :3] = 0  # left padding
    att[2, 7:] = 0  # right padding
    loss = (att * (np.arange(T) >= 4)).astype(np.float32)  # answer tokens
    return Batch(ids[:, :-1] * att, ids[:, 1:] * att, loss, att)


def _close(got, want, rel=1e-5):
    """Every leaf within ``rel`` of the largest magnitude among the expected leaves."""
    want_leaves = [np.asarray(x) for x in jax.tree.leaves(want)]
    scale = max(float(np.max(np.abs(x))) for x in want_leaves)
    for g, w in zip(jax.tree.leaves(got), want_leaves):
        np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=rel * scale)


def _placed(shape):
    mesh = mesh_lib.make_mesh(*shape)
    graphdef, params = _params()
    return mesh, graphdef, jax.device_put(params, mesh_lib.param_shardings(params, mesh))


def test_logical_rules_split_columns_rows_and_vocabulary():
    mesh, _, params = _placed((1, 2, 4))
    specs = jax.tree.map(lambda x: tuple(x.sharding.spec), nnx.to_pure_dict(params))
    layers = specs["layers"]
    # Column-parallel: q/k/v by heads, gate/up by ffn units; row-parallel: o and down.
    assert layers["attn"]["q"] == layers["attn"]["k"] == (None, "fsdp", "tensor", None)
    assert layers["attn"]["o"] == (None, "tensor", None, "fsdp")
    assert layers["mlp"]["gate"] == layers["mlp"]["up"] == (None, "fsdp", "tensor")
    assert layers["mlp"]["down"] == (None, "tensor", "fsdp")
    assert layers["input_norm"]["scale"] == (None, "fsdp")
    # Embedding and LM head on the vocabulary.
    assert specs["embed"] == ("tensor", "fsdp") and specs["lm_head"] == ("fsdp", "tensor")
    # Batches stay on (data, fsdp): replicated over the tensor axis.
    assert tuple(mesh_lib.batch_sharding(mesh).spec) == (("data", "fsdp"),)
    assert mesh_lib.batch_shards(mesh) == 2


# (num_heads is a multiple of num_kv_heads, so kv heads that divide imply heads that do.)
@pytest.mark.parametrize("field,value", [("num_kv_heads", 2), ("intermediate_size", 66),
                                         ("vocab_size", 66)])
def test_tensor_axis_that_does_not_divide_names_the_field(field, value):
    config = CONFIG.replace(**{field: value})
    _, params = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))), nnx.Param)
    with pytest.raises(mesh_lib.MeshError, match=f"mesh.tensor=4 does not divide the model's "
                                                 f"{field}={value}"):
        mesh_lib.param_shardings(params, mesh_lib.make_mesh(1, 2, 4))
    with pytest.raises(mesh_lib.MeshError, match="mesh.tensor must be >= 1"):
        mesh_lib.MeshConfig(tensor=0)
    with pytest.raises(mesh_lib.MeshError, match="needs 16 devices"):
        mesh_lib.make_mesh(2, 2, 4)


@MESHES
def test_forward_equals_one_device(shape):
    graphdef, params = _params()
    batch = _batch(0)

    def logits(p, ids, mask):
        return nnx.merge(graphdef, p)(ids, mask)

    want = jax.jit(logits)(params, batch.input_ids, batch.attention_mask)
    mesh, _, sharded = _placed(shape)
    ids, mask = mesh_lib.shard_batch((batch.input_ids, batch.attention_mask), mesh)
    got = jax.jit(logits)(sharded, ids, mask)
    real = batch.attention_mask.astype(bool)
    _close(np.asarray(got)[real], np.asarray(want)[real])


def _npo_step(mesh):
    """One SGD update of the library's NPO objective (+ retain NLL): ``(loss, new params)``.

    SGD, so the update is linear in the gradient and comparable with a relative bound
    (Adam's first step is about ``lr * sign(g)``, which rounding can flip).
    """
    graphdef, params = _params()
    forget, retain = _batch(1), _batch(2)
    # Reference log-probs: the model's own, shifted so NPO's sigmoid is not at 1/2.
    logits = jax.jit(lambda p: nnx.merge(graphdef, p)(forget.input_ids, forget.attention_mask))(params)
    ref = np.asarray(losses.sequence_logprob(logits, forget.labels, forget.loss_mask)) - 0.5
    objective = methods.get_method({"name": "npo", "beta": 0.5}).objective(graphdef, CONFIG)
    batch = {"forget": {"answer": forget}, "retain": retain,
             "cache": {"ref_logp": {"answer": ref.astype(np.float32)},
                       "weight": np.ones(B, np.float32)}}
    opt = make_optimizer(OptimizerConfig(learning_rate=0.1, optimizer="sgd", schedule="constant",
                                         clip_norm=None), total_steps=1)
    if mesh is not None:
        params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
        batch = mesh_lib.shard_batch(batch, mesh)
    state = init_train_state(params, opt, jax.random.key(0), mesh)
    step = make_train_step(objective, opt, mesh=mesh,
                           state_sharding=state_shardings(state) if mesh else None, donate=False)
    new, metrics = step(state, batch)
    return float(metrics["loss"]), jax.tree.map(jnp.subtract, new.params, params)


@pytest.fixture(scope="module")
def npo_one_device():
    return _npo_step(None)


@MESHES
def test_npo_step_equals_one_device(shape, npo_one_device):
    loss1, update1 = npo_one_device
    loss8, update8 = _npo_step(mesh_lib.make_mesh(*shape))
    assert loss8 == pytest.approx(loss1, rel=1e-5)
    assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(update1)) > 1e-3
    _close(update8, update1)


@MESHES
def test_exact_hvp_equals_one_device(shape):
    graphdef, params = _params()
    batch = _batch(3)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])

    def hv(p, v, b):
        def nll(q):
            out = nnx.merge(graphdef, q)(b.input_ids, b.attention_mask)
            return losses.token_nll(out, b.labels, b.loss_mask)
        return secondorder.hvp(nll, p, v)

    want = jax.jit(hv)(params, v, batch)
    mesh, _, sharded = _placed(shape)
    v_sharded = jax.device_put(v, mesh_lib.param_shardings(params, mesh))
    got = jax.jit(hv)(sharded, v_sharded, mesh_lib.shard_batch(batch, mesh))
    _close(got, want)
    assert any("tensor" in tuple(x.sharding.spec) for x in jax.tree.leaves(got))
