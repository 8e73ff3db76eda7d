"""The sharded train step: 1 device == 8 simulated devices, NaN guard, grad accumulation."""

import numpy as np
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from jaxunlearn.models import Llama, LlamaConfig
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import (OptimizerConfig, init_train_state, make_optimizer,
                                   make_train_step, state_shardings)

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2)


def _nll(logits, labels, mask):
    # Independent of jaxunlearn.losses on purpose: this file tests the step only.
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    tok = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return -(tok * mask).sum() / mask.sum()


def _setup(mesh=None, poison=False):
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p, batch, key):
        m = nnx.merge(graphdef, p)
        loss = _nll(m(batch["ids"], batch["mask"]), batch["labels"], batch["loss_mask"])
        if poison:
            loss = loss * jnp.where(batch["ids"][0, 0] == 7, jnp.nan, 1.0)
        return loss, {"tokens": batch["loss_mask"].sum()}

    if mesh is not None:
        params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1), total_steps=4)
    state = init_train_state(params, opt, jax.random.key(0), mesh)
    step = make_train_step(loss_fn, opt, mesh=mesh,
                           state_sharding=state_shardings(state) if mesh else None)
    return state, step


def _batches(n=3, B=8, T=12):
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        ids = rng.integers(0, CONFIG.vocab_size, (B, T)).astype(np.int32)
        mask = np.ones((B, T), np.int32)
        mask[::3, -4:] = 0
        out.append({"ids": ids, "mask": mask, "labels": np.roll(ids, -1, 1),
                    "loss_mask": mask.astype(np.float32)})
    return out


def test_one_device_equals_eight_simulated_devices():
    assert len(jax.devices()) >= 8, "conftest sets 8 host devices"
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    s1, step1 = _setup()
    s8, step8 = _setup(mesh)
    # Weights really are split over fsdp (the stacked layers axis never is).
    q = s8.params["layers"]["attn"]["q"][...]
    assert tuple(q.sharding.spec[:2]) == (None, "fsdp")
    losses1, losses8 = [], []
    for b in _batches():
        s1, m1 = step1(s1, b)
        s8, m8 = step8(s8, mesh_lib.shard_batch(b, mesh))
        losses1.append(float(m1["loss"]))
        losses8.append(float(m8["loss"]))
    np.testing.assert_allclose(losses8, losses1, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-5)
    assert losses1[-1] < losses1[0]
    # Adam's moments are sharded like their parameters, before and after the steps (a
    # replicated copy on every device would cost 2x the model per device under FSDP).
    param = {jax.tree_util.keystr(k): x for k, x in jax.tree_util.tree_leaves_with_path(s8.params)}
    adam = s8.opt_state[1][0]
    for moments in (adam.mu, adam.nu):
        for k, x in jax.tree_util.tree_leaves_with_path(moments):
            p = param[jax.tree_util.keystr(k)]
            assert x.sharding.is_equivalent_to(p.sharding, p.ndim), jax.tree_util.keystr(k)
    assert not all(p.sharding.is_fully_replicated for p in param.values())


def test_adafactor_state_is_sharded_like_its_parameters():
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    _, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    opt = make_optimizer(OptimizerConfig(optimizer="adafactor"), total_steps=4)
    state = init_train_state(params, opt, jax.random.key(0), mesh)
    by_shape = {}
    for p in jax.tree.leaves(params):
        by_shape.setdefault(p.shape, []).append(p.sharding)
    # This model's dims are below Adafactor's factoring threshold: full second moments.
    leaves = [x for x in jax.tree.leaves(state.opt_state) if x.shape in by_shape and x.ndim >= 2]
    assert leaves
    for x in leaves:
        assert any(x.sharding.is_equivalent_to(s, x.ndim) for s in by_shape[x.shape])
    assert not all(x.sharding.is_fully_replicated for x in leaves)


def test_non_finite_step_keeps_previous_state():
    state, step = _setup(poison=True)
    b = _batches(1)[0]
    b["ids"][0, 0] = 7
    before = jax.tree.map(np.asarray, state.params)
    state, metrics = step(state, b)
    assert float(metrics["finite"]) == 0.0
    for a, c in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(a, np.asarray(c))
    assert int(state.step) == 0


def test_gradient_accumulation_equals_full_batch():
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(p, batch, key):
        m = nnx.merge(graphdef, p)
        return _nll(m(batch["ids"], batch["mask"]), batch["labels"], batch["loss_mask"]), {}

    full = {k: v for k, v in _batches(1, B=8)[0].items()}
    full["mask"][:] = 1
    full["loss_mask"][:] = 1.0
    micro = jax.tree.map(lambda x: x.reshape(2, 4, *x.shape[1:]), full)
    opt = optax.sgd(0.1)
    a, _ = make_train_step(loss_fn, opt, donate=False)(init_train_state(params, opt, jax.random.key(0)), full)
    b, _ = make_train_step(loss_fn, opt, grad_accum=2, donate=False)(
        init_train_state(params, opt, jax.random.key(0)), micro)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_mesh_errors_name_the_field():
    with pytest.raises(mesh_lib.MeshError, match="needs 16 devices"):
        mesh_lib.make_mesh(data=4, fsdp=4)
    with pytest.raises(mesh_lib.MeshError, match="batch_size=6"):
        mesh_lib.check_batch_divides(6, mesh_lib.make_mesh(data=2, fsdp=2))
