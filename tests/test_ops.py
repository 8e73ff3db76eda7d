"""Fused LM-head log-probs (jaxunlearn.ops) against losses.*, NumPy float64 and torch autograd."""

import numpy as np
import pytest
import scipy.special
import torch

import jax
import jax.numpy as jnp
from jax.test_util import check_grads

from _training import tiny_config
from jaxunlearn import losses, ops
from jaxunlearn.secondorder import hvp

B, T, D, V = 3, 5, 8, 37


def _inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(B, T, D)).astype(dtype)
    head = (rng.normal(size=(D, V)) / np.sqrt(D)).astype(dtype)
    labels = rng.integers(0, V, size=(B, T)).astype(np.int32)
    labels[0, 1] = -100  # HF's ignore index: log-prob 0
    mask = np.ones((B, T), np.float32)
    mask[0, :2] = 0.0  # prompt
    mask[2, 3:] = 0.0  # padding
    return hidden, head, labels, mask


def _numpy_token_logprobs(hidden, head, labels):
    logits = hidden.astype(np.float64) @ head.astype(np.float64)
    logp = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    valid = (labels >= 0) & (labels < V)
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return np.where(valid, picked, 0.0)


@pytest.mark.parametrize("chunk_size", [None, 4, 5, 15, 64])
def test_values_match_numpy_and_losses(chunk_size):
    hidden, head, labels, mask = _inputs()
    ref_tok = _numpy_token_logprobs(hidden, head, labels)
    got = ops.sequence_logprob_from_hidden(hidden, head, labels, mask, chunk_size=chunk_size)
    np.testing.assert_allclose(np.asarray(got), (ref_tok * mask).sum(-1), rtol=1e-5, atol=1e-5)
    logits = jnp.einsum("BTD,DV->BTV", hidden, head)
    np.testing.assert_allclose(np.asarray(got), np.asarray(losses.sequence_logprob(logits, labels, mask)),
                               rtol=1e-5, atol=1e-5)
    nll = ops.token_nll_from_hidden(hidden, head, labels, mask, chunk_size=chunk_size)
    np.testing.assert_allclose(float(nll), float(losses.token_nll(logits, labels, mask)), rtol=1e-5)
    np.testing.assert_allclose(float(nll), -(ref_tok * mask).sum() / mask.sum(), rtol=1e-5)
    tok = ops.token_logprobs_from_hidden(hidden, head, labels, chunk_size=chunk_size)
    np.testing.assert_allclose(np.asarray(tok), ref_tok, rtol=1e-5, atol=1e-5)
    assert got.dtype == jnp.float32 and got.shape == (B,)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_gradients_match_torch_autograd(chunk_size):
    hidden, head, labels, mask = _inputs(1)
    weights = np.array([0.7, -1.3, 2.0], np.float32)  # an arbitrary cotangent on [B]

    def f(h, w):
        return jnp.sum(weights * ops.sequence_logprob_from_hidden(h, w, labels, mask,
                                                                   chunk_size=chunk_size))

    gh, gw = jax.grad(f, argnums=(0, 1))(hidden, head)
    th = torch.tensor(hidden, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(head, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(th @ tw, dim=-1)
    tl = torch.tensor(np.where(labels >= 0, labels, 0), dtype=torch.long)
    tok = logp.gather(-1, tl[..., None])[..., 0] * torch.tensor((labels >= 0) * mask)
    (tok.sum(-1) * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(np.asarray(gh), th.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy(), rtol=1e-4, atol=1e-5)
    # Masked positions get exactly zero gradient.
    assert np.all(np.asarray(gh)[mask == 0] == 0.0)


@pytest.mark.parametrize("chunk_size,order", [(None, 1), (4, 2)])
def test_check_grads_forward_and_reverse(chunk_size, order):
    # Numerical derivatives in float64; order 2 (chunked path) differentiates the
    # derivative rule itself. Forward-over-reverse is also covered by the HVP test.
    hidden, head, labels, mask = _inputs(2)
    with jax.enable_x64(True):
        h, w = jnp.asarray(hidden, jnp.float64), jnp.asarray(head, jnp.float64)

        @jax.jit  # check_grads evaluates f many times: compile once
        def f(h, w):
            return ops.token_nll_from_hidden(h, w, labels, mask, chunk_size=chunk_size)

        check_grads(f, (h, w), order=order, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)


def test_hvp_through_fused_op_equals_hvp_through_logits():
    # secondorder.hvp is jvp-over-grad: the custom_jvp rule must support both directions.
    hidden, head, labels, mask = _inputs(3)
    v = jnp.asarray(np.random.default_rng(4).normal(size=head.shape).astype(np.float32))

    def fused(w):
        return ops.token_nll_from_hidden(hidden, w, labels, mask)

    def plain(w):
        return losses.token_nll(jnp.einsum("BTD,DV->BTV", hidden, w), labels, mask)

    np.testing.assert_allclose(np.asarray(hvp(fused, head, v)), np.asarray(hvp(plain, head, v)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_jit_equals_no_jit(chunk_size):
    hidden, head, labels, mask = _inputs(5)

    def f(h, w):
        return ops.sequence_logprob_from_hidden(h, w, labels, mask, chunk_size=chunk_size)

    eager = f(hidden, head)
    jitted = jax.jit(f)(hidden, head)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-6, atol=1e-6)
    g1 = jax.grad(lambda h, w: f(h, w).sum(), argnums=1)(hidden, head)
    g2 = jax.jit(jax.grad(lambda h, w: f(h, w).sum(), argnums=1))(hidden, head)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g1), rtol=1e-5, atol=1e-6)


def test_masking_equals_slicing():
    hidden, head, labels, _ = _inputs(6)
    mask = np.ones((B, T), np.float32)
    mask[:, 3:] = 0.0
    full = ops.sequence_logprob_from_hidden(hidden, head, labels, mask, chunk_size=4)
    sliced = ops.sequence_logprob_from_hidden(hidden[:, :3], head, labels[:, :3], mask[:, :3])
    np.testing.assert_allclose(np.asarray(full), np.asarray(sliced), rtol=1e-6, atol=1e-6)
    grad = jax.jit(jax.grad(lambda w, h, y, m: ops.token_nll_from_hidden(h, w, y, m)))
    g_full = grad(head, hidden, labels, mask)
    g_sliced = grad(head, hidden[:, :3], labels[:, :3], mask[:, :3])
    np.testing.assert_allclose(np.asarray(g_full), np.asarray(g_sliced), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_garbage_in_masked_positions_never_leaks(chunk_size):
    hidden, head, labels, mask = _inputs(7)
    hidden = hidden.copy()
    hidden[2, 4] = np.nan  # a padded position
    hidden[0, 0] = np.inf  # a prompt position

    def f(h, w):
        return ops.sequence_logprob_from_hidden(h, w, labels, mask, chunk_size=chunk_size).sum()

    value, (gh, gw) = jax.value_and_grad(f, argnums=(0, 1))(hidden, head)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(gh))) and np.all(np.isfinite(np.asarray(gw)))
    clean = hidden.copy()
    clean[2, 4] = 0.0
    clean[0, 0] = 0.0
    np.testing.assert_allclose(float(value), float(f(clean, head)), rtol=1e-6)


def test_bfloat16_inputs_close_to_float32():
    hidden, head, labels, mask = _inputs(8)
    f32 = ops.sequence_logprob_from_hidden(hidden, head, labels, mask)
    bf = ops.sequence_logprob_from_hidden(jnp.asarray(hidden, jnp.bfloat16),
                                          jnp.asarray(head, jnp.bfloat16), labels, mask)
    assert bf.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf), np.asarray(f32), rtol=2e-2, atol=0.1)
    g = jax.grad(lambda h: ops.token_nll_from_hidden(h, jnp.asarray(head, jnp.bfloat16), labels,
                                                     mask))(jnp.asarray(hidden, jnp.bfloat16))
    g32 = jax.grad(lambda h: ops.token_nll_from_hidden(h, head, labels, mask))(hidden)
    assert g.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(g32), rtol=0.05, atol=2e-3)


def test_bad_inputs_name_the_field():
    hidden, head, labels, mask = _inputs()
    with pytest.raises(losses.LossInputError, match="hidden"):
        ops.sequence_logprob_from_hidden(hidden[0], head, labels, mask)
    with pytest.raises(losses.LossInputError, match="head"):
        ops.sequence_logprob_from_hidden(hidden, head.T, labels, mask)
    with pytest.raises(losses.LossInputError, match="labels"):
        ops.sequence_logprob_from_hidden(hidden, head, labels[:, :2], mask)
    with pytest.raises(losses.LossInputError, match="labels"):
        ops.sequence_logprob_from_hidden(hidden, head, labels.astype(np.float32), mask)
    with pytest.raises(losses.LossInputError, match="mask"):
        ops.token_nll_from_hidden(hidden, head, labels, mask[:, :2])
    with pytest.raises(losses.LossInputError, match="chunk_size"):
        ops.token_logprobs_from_hidden(hidden, head, labels, chunk_size=0)


# ---------------------------------------------------------------- the model hooks these ops use


def _tiny_model(**overrides):
    from flax import nnx

    from jaxunlearn.models import Llama

    config = tiny_config(41, hidden_size=16, intermediate_size=24, **overrides)
    return Llama(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("tied", [True, False])
def test_model_hidden_states_and_head_reproduce_logits(tied):
    model = _tiny_model(tie_word_embeddings=tied)
    rng = np.random.default_rng(9)
    ids = jnp.asarray(rng.integers(0, 41, (2, 6)), jnp.int32)
    attn = jnp.asarray([[1] * 6, [0, 0, 1, 1, 1, 1]], jnp.int32)
    labels = jnp.roll(ids, -1, axis=1)
    mask = attn.astype(jnp.float32)
    from flax import nnx

    graphdef, params = nnx.split(model)

    @jax.jit  # one compilation instead of op-by-op dispatch
    def run(params):
        m = nnx.merge(graphdef, params)
        return m(ids, attn), m.hidden_states(ids, attn), m.output_head()

    logits, hidden, head = run(params)
    assert hidden.shape == (2, 6, 16) and head.shape == (16, 41)
    np.testing.assert_allclose(np.asarray(jnp.einsum("BTD,DV->BTV", hidden, head)),
                               np.asarray(logits), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(ops.sequence_logprob_from_hidden(hidden, head, labels, mask)),
        np.asarray(losses.sequence_logprob(logits, labels, mask)), rtol=1e-5, atol=1e-5)


def test_model_remat_policies_keep_gradients():
    from flax import nnx

    ids = jnp.asarray(np.random.default_rng(10).integers(0, 41, (2, 5)), jnp.int32)
    labels, mask = jnp.roll(ids, -1, axis=1), jnp.ones((2, 5), jnp.float32)

    def grads(**overrides):
        graphdef, params = nnx.split(_tiny_model(**overrides), nnx.Param)

        def loss(p):
            m = nnx.merge(graphdef, p)
            return ops.token_nll_from_hidden(m.hidden_states(ids), m.output_head(), labels, mask)

        return jax.tree.leaves(jax.jit(jax.grad(loss))(params))

    base = grads()
    for policy in ("full", "dots_with_no_batch_dims_saveable"):
        for a, b in zip(base, grads(remat=policy)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def test_attention_matches_jax_dot_product_attention_semantics():
    # attention_impl="cudnn" calls jax.nn.dot_product_attention with this mask and
    # is_causal; its XLA implementation must agree with the einsum one.
    from jaxunlearn.models.block import _attention

    rng = np.random.default_rng(11)
    q = jnp.asarray(rng.normal(size=(2, 6, 4, 8)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(2, 6, 2, 8)), jnp.float32)
    pad = jnp.asarray([[1] * 6, [1, 1, 1, 1, 0, 0]], bool)
    key_mask = jnp.tril(jnp.ones((6, 6), bool))[None] & pad[:, None, :]
    ours = _attention(q, k, v, key_mask)
    ref = jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None], is_causal=True,
                                       implementation="xla")
    real = np.asarray(pad)
    np.testing.assert_allclose(np.asarray(ours)[real], np.asarray(ref)[real], rtol=1e-5, atol=1e-5)


def test_model_config_rejects_unknown_policy_and_attention():
    with pytest.raises(ValueError, match="remat"):
        _tiny_model(remat="sometimes")
    with pytest.raises(ValueError, match="attention_impl"):
        _tiny_model(attention_impl="flash3")
