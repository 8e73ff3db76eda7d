"""The sharded train step: 1 device == 8 simulated devices, NaN guard, and gradient
accumulation by ``(sum, count)``: micro-batches of unequal token counts give the update
of one batch of the same rows."""

import numpy as np
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxunlearn.losses import Mean
from jaxunlearn.models import Llama, LlamaConfig
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import (Objective, OptimizerConfig, init_train_state, make_optimizer,
                                   make_train_step, objective_value, state_shardings)

CONFIG = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=2,
                     num_heads=4, num_kv_heads=2)


def _nll_sum(logits, labels, mask):
    # Independent of jaxunlearn.losses on purpose: this file tests the step only.
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    tok = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return -(tok * mask).sum()


def nll_objective(graphdef, poison=False):
    """Token NLL as an Objective: sums over this batch, divided by the update's tokens."""

    def counts(batch):
        return {"tokens": batch["loss_mask"].sum()}

    def loss(p, batch, key, totals):
        m = nnx.merge(graphdef, p)
        total = _nll_sum(m(batch["ids"], batch["mask"]), batch["labels"], batch["loss_mask"])
        if poison:
            total = total * jnp.where(batch["ids"][0, 0] == 7, jnp.nan, 1.0)
        rows = jnp.asarray(batch["ids"].shape[0], jnp.float32)
        return total / totals["tokens"], {"nll": Mean(total, counts(batch)["tokens"]),
                                          "rows": rows}

    return Objective(counts=counts, loss=loss)


def _setup(mesh=None, poison=False):
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    objective = nll_objective(graphdef, poison)

    if mesh is not None:
        params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=1), total_steps=4)
    state = init_train_state(params, opt, jax.random.key(0), mesh)
    step = make_train_step(objective, opt, mesh=mesh,
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


def _unequal_batch(B=8, T=12):
    """Rows 0-3 with 2 loss tokens, rows 4-7 with 10: micro-batches of 8 and 40 tokens."""
    b = _batches(1, B=B, T=T)[0]
    b["mask"][:] = 1
    b["loss_mask"][:] = 0.0
    b["loss_mask"][:4, -2:] = 1.0
    b["loss_mask"][4:, 2:] = 1.0
    return b


def test_gradient_accumulation_equals_full_batch_with_unequal_token_counts():
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    objective = nll_objective(graphdef)
    full = _unequal_batch()
    opt = optax.sgd(1.0)  # the update is minus the gradient
    a, ma = make_train_step(objective, opt, donate=False)(
        init_train_state(params, opt, jax.random.key(0)), full)
    # Independent reference: the NLL of the whole batch by autodiff, no step involved.
    ref_loss, ref_grad = jax.value_and_grad(lambda p: _nll_sum(
        nnx.merge(graphdef, p)(full["ids"], full["mask"]), full["labels"], full["loss_mask"])
        / full["loss_mask"].sum())(params)
    np.testing.assert_allclose(float(ma["loss"]), float(ref_loss), rtol=1e-6)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(ref_grad))
    for accum in (2, 4):
        micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), full)
        b, mb = make_train_step(objective, opt, grad_accum=accum, donate=False)(
            init_train_state(params, opt, jax.random.key(0)), micro)
        np.testing.assert_allclose(float(mb["loss"]), float(ref_loss), rtol=1e-6)
        # Mean metrics are divided once; plain ones are added (rows of the update).
        np.testing.assert_allclose(float(mb["nll"]), float(ref_loss), rtol=1e-6)
        assert float(mb["rows"]) == float(ma["rows"]) == 8.0
        for p0, x, y, g in zip(jax.tree.leaves(params), jax.tree.leaves(a.params),
                               jax.tree.leaves(b.params), jax.tree.leaves(ref_grad)):
            np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=0, atol=1e-5 * scale)
            # SGD at rate 1 steps by minus the reference gradient.
            np.testing.assert_allclose(np.asarray(p0) - np.asarray(y), np.asarray(g), rtol=0,
                                       atol=1e-5 * scale)


def test_objective_value_is_the_whole_batch_mean():
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    full = _unequal_batch()
    loss, metrics = objective_value(nll_objective(graphdef), params, full)
    logits = np.asarray(nnx.merge(graphdef, params)(full["ids"], full["mask"]), np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, full["labels"][..., None], -1)[..., 0]
    want = -(tok * full["loss_mask"]).sum() / full["loss_mask"].sum()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["nll"]), want, rtol=1e-5)
