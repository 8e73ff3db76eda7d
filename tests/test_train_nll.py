"""The one NLL objective (``jaxunlearn.train.nll``): the fused training loss against NumPy's
log-softmax of the model's logits, its gradient against autodiff through them, and
micro-batches of unequal token counts equal to the whole batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxunlearn.data.batch import Batch
from jaxunlearn.models import Llama
from jaxunlearn.models.presets import tiny
from jaxunlearn.train.nll import nll_objective
from jaxunlearn.train.step import init_train_state, make_train_step, objective_value

CONFIG = tiny(vocab_size=64)
T = 12


def _batch(rows=3, seed=5):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, CONFIG.vocab_size, (rows, T + 1)).astype(np.int32)
    mask = np.ones((rows, T), np.float32)
    mask[0, :5] = 0.0  # a QA row: answer-only loss
    att = np.ones((rows, T), np.int32)
    att[2, 8:] = 0  # a right-padded row
    mask[2, 8:] = 0.0
    return Batch(ids[:, :-1], ids[:, 1:], mask, att)


def _numpy_nll(graphdef, params, b):
    logits = np.asarray(nnx.merge(graphdef, params)(b.input_ids, b.attention_mask), np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, b.labels[..., None], -1)[..., 0]
    return -(tok * b.loss_mask).sum() / b.loss_mask.sum()


def test_nll_objective_equals_the_nll_of_the_models_logits():
    """Fused LM head (no ``[B, T, V]`` in memory) against NumPy, and its gradient against
    autodiff through the logits."""
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(1)), nnx.Param)
    batch = _batch()
    objective = nll_objective(graphdef)
    loss, metrics = objective_value(objective, params, batch)
    np.testing.assert_allclose(float(loss), _numpy_nll(graphdef, params, batch), rtol=1e-6)
    assert float(metrics["tokens"]) == batch.loss_mask.sum()

    def through_logits(p):
        logits = nnx.merge(graphdef, p)(batch.input_ids, batch.attention_mask)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        tok = jnp.take_along_axis(logp, batch.labels[..., None], -1)[..., 0]
        return -(tok * batch.loss_mask).sum() / batch.loss_mask.sum()

    grad = jax.grad(lambda p: objective_value(objective, p, batch)[0])(params)
    ref = jax.grad(through_logits)(params)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_nll_grad_accum_equals_one_batch_with_unequal_token_counts():
    """``jaxunlearn train``'s loss: 4 rows with 1 loss token and 4 with 11 as 2 and 4
    micro-batches give the whole batch's loss, token count and SGD update."""
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(2)), nnx.Param)
    b = _batch(rows=8, seed=6)
    mask = np.zeros_like(b.loss_mask)
    mask[:4, -1] = 1.0
    mask[4:, 1:] = 1.0
    b = b._replace(loss_mask=mask, attention_mask=np.ones_like(b.attention_mask))
    objective = nll_objective(graphdef)
    opt = optax.sgd(1.0)
    whole, m1 = make_train_step(objective, opt, donate=False)(
        init_train_state(params, opt, jax.random.key(0)), b)
    np.testing.assert_allclose(float(m1["loss"]), _numpy_nll(graphdef, params, b), rtol=1e-6)
    update = [np.asarray(p) - np.asarray(w) for p, w in zip(jax.tree.leaves(params),
                                                           jax.tree.leaves(whole.params))]
    scale = max(float(np.abs(u).max()) for u in update)
    for accum in (2, 4):
        micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), b)
        state, m = make_train_step(objective, opt, grad_accum=accum, donate=False)(
            init_train_state(params, opt, jax.random.key(0)), micro)
        np.testing.assert_allclose(float(m["loss"]), float(m1["loss"]), rtol=1e-6)
        assert float(m["tokens"]) == float(m1["tokens"]) == mask.sum()
        for u, p, w in zip(update, jax.tree.leaves(params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(p) - np.asarray(w), u, rtol=0,
                                       atol=1e-5 * scale)
