"""MIA scores vs NumPy references written after open-unlearning's attacks; AUC vs SciPy."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxunlearn import losses
from jaxunlearn.eval import mia

B, T, V = 5, 9, 11
LENGTHS = [9, 5, 1, 0, 3]  # masked tokens per row, incl. a 1-token and an empty row


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (B, T, V)).astype(np.float32)
    labels = rng.integers(0, V, (B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    for b, n in enumerate(LENGTHS):
        mask[b, T - n:] = 1.0  # answer tokens at the end, as after a prompt
    return logits, labels, mask


def _np_log_softmax(x):
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_token_logp(logits, labels):
    return np.take_along_axis(_np_log_softmax(logits), labels[..., None], -1)[..., 0]


def _np_min_k(lp, k):
    """open-unlearning MinKProbAttack.compute_score, with our sign (higher = member)."""
    if lp.size == 0:
        return 0.0
    num_k = max(1, int(len(lp) * k))
    return float(np.mean(np.sort(lp)[:num_k]))


def test_loss_score_of_token_logprobs():
    logits, labels, mask = _inputs()
    ref = _np_token_logp(logits, labels)
    np.testing.assert_allclose(losses.token_logprobs(logits, labels), ref, rtol=1e-5, atol=1e-5)
    got = mia.loss_score(jnp.asarray(ref), mask)
    for b, n in enumerate(LENGTHS):
        if n == 0:
            assert np.isnan(got[b])  # open-unlearning: 0 / 0 avg loss
        else:
            assert got[b] == pytest.approx(ref[b, T - n:].mean(), rel=1e-5)


def test_masking_equals_slicing():
    logits, labels, mask = _inputs(1)
    lp = losses.token_logprobs(logits, labels)
    # Garbage at masked positions (even -inf) must not change any score.
    poisoned = jnp.where(mask > 0, lp, -jnp.inf)
    for fn in (mia.loss_score, mia.min_k_score):
        full = fn(poisoned, mask)
        for b, n in enumerate(LENGTHS):
            if n:
                sliced = fn(lp[b:b + 1, T - n:], jnp.ones((1, n)))
                np.testing.assert_allclose(full[b], sliced[0], rtol=1e-6)


@pytest.mark.parametrize("k", [0.2, 0.4, 0.57, 1.0])
def test_min_k_vs_numpy(k):
    logits, labels, mask = _inputs(2)
    ref_lp = _np_token_logp(logits, labels)
    got = mia.min_k_score(losses.token_logprobs(logits, labels), mask, k=k)
    want = [_np_min_k(ref_lp[b, T - n:], k) for b, n in enumerate(LENGTHS)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_min_k_count_uses_python_rounding():
    # int(100 * 0.57) == 56 in float64 although 100 * 0.57 "is" 57.
    lp = jnp.arange(100.0)[None]
    assert float(mia.min_k_score(lp, jnp.ones((1, 100)), k=0.57)[0]) == pytest.approx(27.5)
    with pytest.raises(ValueError, match="k"):
        mia.min_k_score(lp, jnp.ones((1, 100)), k=0.0)


def _np_min_k_pp(logits, labels, n, k):
    """open-unlearning MinKPlusPlusAttack.compute_score in float64, our sign."""
    if n == 0:
        return 0.0
    logp = _np_log_softmax(logits[T - n:])
    probs = np.exp(logp)
    mu = (probs * logp).sum(-1)
    sigma = (probs * logp ** 2).sum(-1) - mu ** 2
    sigma = np.maximum(sigma, 1e-6)
    target = np.take_along_axis(logp, labels[T - n:, None], -1)[:, 0]
    scores = (target - mu) / np.sqrt(sigma)
    num_k = max(1, int(len(scores) * k))
    return float(np.mean(np.sort(scores)[:num_k]))


@pytest.mark.parametrize("k", [0.4, 1.0])
def test_min_k_plus_plus_vs_numpy(k):
    logits, labels, mask = _inputs(3)
    got = mia.min_k_plus_plus_score(logits, labels, mask, k=k)
    want = [_np_min_k_pp(logits[b], labels[b], n, k) for b, n in enumerate(LENGTHS)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_min_k_plus_plus_ignores_masked_vocabulary():
    logits, labels, mask = _inputs(4)
    labels = np.minimum(labels, V - 2)
    # An extra vocabulary entry with logit -inf has probability 0: same distribution.
    padded = np.concatenate([logits, np.full((B, T, 1), -np.inf, np.float32)], -1)
    a = mia.min_k_plus_plus_score(logits, labels, mask)
    b = mia.min_k_plus_plus_score(padded, labels, mask)
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_jit_equals_no_jit():
    logits, labels, mask = _inputs(5)
    lp = losses.token_logprobs(logits, labels)
    pp = jax.jit(mia.min_k_plus_plus_score, static_argnames="k")
    np.testing.assert_allclose(pp(logits, labels, mask, k=0.4),
                               mia.min_k_plus_plus_score(logits, labels, mask), rtol=1e-6)
    mk = jax.jit(mia.min_k_score, static_argnames="k")
    np.testing.assert_allclose(mk(lp, mask, k=0.2), mia.min_k_score(lp, mask, k=0.2), rtol=1e-6)
    ref = jax.jit(mia.reference_score)
    np.testing.assert_allclose(ref(lp, lp * 0.5, mask), mia.reference_score(lp, lp * 0.5, mask),
                               rtol=1e-6, equal_nan=True)


def test_zlib_and_reference_scores():
    logits, labels, mask = _inputs(6)
    lp = losses.token_logprobs(logits, labels)
    texts = ["", "Paris", "a" * 200, "The author was born in 1987.", "12 May"]
    got = mia.zlib_score(lp, mask, texts)
    loss = _np_token_logp(logits, labels)
    for b, n in enumerate(LENGTHS):
        if n:
            want = loss[b, T - n:].mean() / len(zlib.compress(texts[b].encode("utf-8")))
            assert got[b] == pytest.approx(want, rel=1e-5)
    assert mia.zlib_entropy("a" * 200) < mia.zlib_entropy("The author was born in 1987.") * 2
    with pytest.raises(ValueError, match="texts"):
        mia.zlib_score(lp, mask, texts[:2])
    ref_lp = lp - 0.75  # a reference model uniformly less confident per token
    diff = mia.reference_score(lp, ref_lp, mask)
    np.testing.assert_allclose(diff[np.array(LENGTHS) > 0], 0.75, rtol=1e-5)


def test_auc_hand_worked_and_vs_mann_whitney():
    # pairs: 3>1, 3>2, 2>1, 2=2 (half) -> 3.5 / 4.
    assert mia.auc([3.0, 2.0], [1.0, 2.0]) == 0.875
    rng = np.random.default_rng(7)
    members = rng.integers(0, 6, 37).astype(float)  # many ties
    nonmembers = rng.integers(0, 5, 23).astype(float)
    u = stats.mannwhitneyu(members, nonmembers).statistic
    assert mia.auc(members, nonmembers) == pytest.approx(u / (37 * 23), abs=1e-15)
    # open-unlearning: loss-like scores, forget labelled 0 and holdout 1 -> same AUC.
    forget_loss, holdout_loss = -members, -nonmembers
    pairs = (holdout_loss[None, :] > forget_loss[:, None]) + 0.5 * (
        holdout_loss[None, :] == forget_loss[:, None])
    assert mia.auc(members, nonmembers) == pytest.approx(pairs.mean(), abs=1e-15)
    with pytest.raises(ValueError, match="nonmember_scores"):
        mia.auc([1.0], [])
    with pytest.raises(ValueError, match="member_scores"):
        mia.auc([np.nan], [1.0])


def test_privleak():
    # MUSE: ((1 - 0.8) - (1 - 0.5)) / (1 - 0.5) * 100 = -60 (members still stand out).
    assert mia.privleak(0.8, 0.5) == pytest.approx(-60.0)
    assert mia.privleak(0.6, 0.6) == 0.0
    assert mia.privleak(0.3, 0.5) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="auc_retain"):
        mia.privleak(0.5, 1.0)
    with pytest.raises(ValueError, match="auc_value"):
        mia.privleak(1.5, 0.5)
