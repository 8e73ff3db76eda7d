"""The cached-reference helpers and term reduction of ``jaxunlearn.methods.base``: top-k
distributions against NumPy, the coarse KL's bound and gradient, and the weights terms
are averaged with."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jaxunlearn import losses, methods


def _numpy_coarse(logp, labels, k):
    """Top-k (label forced in) + tail, with NumPy: returns (index sets, kept logp, tail)."""
    scores = np.where(np.arange(logp.shape[-1]) == labels[..., None], np.inf, logp)
    idx = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    kept = np.take_along_axis(logp, idx, -1)
    tail = np.log1p(-np.exp(kept).sum(-1).clip(max=1 - 1e-15))
    return idx, kept, tail


def test_top_k_reference_matches_numpy_and_bounds_the_full_kl():
    rng = np.random.default_rng(3)
    V, K = 30, 6
    ref_logits = rng.normal(size=(2, 5, V)) * 2.0
    logits = rng.normal(size=(2, 5, V))
    labels = rng.integers(0, V, (2, 5)).astype(np.int32)
    mask = np.ones((2, 5), np.float32)
    mask[1, 3:] = 0
    ref_logp = jax.nn.log_softmax(jnp.asarray(ref_logits, jnp.float32))
    dist = methods.compress_logprobs(ref_logp, jnp.asarray(labels), K)
    idx, kept, tail = _numpy_coarse(np.asarray(ref_logp, np.float64), labels, K)
    assert np.all(np.sort(np.asarray(dist.index), -1) == np.sort(idx, -1))
    assert np.all((np.asarray(dist.index) == labels[..., None]).any(-1)), "label always kept"
    np.testing.assert_allclose(np.sort(np.asarray(dist.logp), -1), np.sort(kept, -1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(dist.tail), tail, atol=1e-5)
    # Coarse KL by NumPy: KL between the (K + 1)-outcome distributions.
    lq = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)), np.float64)
    q_kept = np.take_along_axis(lq, idx, -1)
    q_tail = np.log1p(-np.exp(q_kept).sum(-1))
    kl = (np.exp(kept) * (kept - q_kept)).sum(-1) + np.exp(tail) * (tail - q_tail)
    want = (kl * mask).sum() / mask.sum()
    coarse = losses.forward_kl(methods.model_on_support(jnp.asarray(logits, jnp.float32), dist),
                               methods.ref_on_support(dist), mask)
    np.testing.assert_allclose(float(coarse), want, rtol=1e-4)
    full = losses.forward_kl(jnp.asarray(logits, jnp.float32), ref_logp, mask)
    assert float(coarse) <= float(full) + 1e-6  # data-processing inequality
    exact = methods.compress_logprobs(ref_logp, jnp.asarray(labels), V)  # K >= V: full
    assert exact.index is None
    same = losses.forward_kl(methods.model_on_support(jnp.asarray(logits, jnp.float32), exact),
                             methods.ref_on_support(exact), mask)
    np.testing.assert_allclose(float(same), float(full), rtol=1e-6)
    sup = methods.labels_on_support(jnp.asarray(labels), dist)
    assert np.all(np.take_along_axis(np.asarray(dist.index), np.asarray(sup)[..., None], -1)[..., 0]
                  == labels)


def test_coarse_kl_gradient():
    rng = np.random.default_rng(4)
    ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(2, 3, 12)), jnp.float32))
    dist = methods.compress_logprobs(ref, jnp.zeros((2, 3), jnp.int32), 4)
    mask = jnp.ones((2, 3))

    def f(logits):
        return losses.forward_kl(methods.model_on_support(logits, dist),
                                 methods.ref_on_support(dist), mask)

    check_grads(jax.jit(f), (jnp.asarray(rng.normal(size=(2, 3, 12)), jnp.float32),), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)



def test_term_weights_give_row_and_token_means():
    mask = np.array([[0, 1, 1, 0], [1, 1, 1, 1]], np.float32)
    w = np.array([0.5, 2.0], np.float32)
    weights = methods.term_weights(mask, w)
    np.testing.assert_array_equal(weights["rows"], w)
    np.testing.assert_array_equal(weights["tokens"], mask * w[:, None])
    # Per-token values averaged with them: sum_b w_b sum_t v_bt / sum_b w_b |y_b|.
    values = np.arange(8, dtype=np.float32).reshape(2, 4)
    parts = losses.mean_parts(values, weights["tokens"])
    want = (0.5 * (1 + 2) + 2.0 * (4 + 5 + 6 + 7)) / (0.5 * 2 + 2.0 * 4)
    np.testing.assert_allclose(float(parts.value()), want, rtol=1e-6)
