"""Memorisation metrics vs hand-worked values, literal ports of the reference loops, toy models."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxunlearn.eval import memorization_metrics as mem


def _one_hot_logits(pred_ids, vocab):
    return jax.nn.one_hot(jnp.asarray(pred_ids), vocab) * 5.0


def test_memorization_accuracy_hand_worked():
    preds = [[1, 2, 3, 4], [0, 0, 0, 0], [4, 4, 4, 4]]
    labels = jnp.asarray([[1, 2, 0, 4], [0, 1, 1, 0], [1, 1, 1, 1]])
    mask = jnp.asarray([[1, 1, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]], jnp.float32)
    got = mem.memorization_accuracy(_one_hot_logits(preds, 5), labels, mask)
    np.testing.assert_allclose(got[:2], [3 / 4, 1 / 3])
    assert np.isnan(got[2])  # open-unlearning marks it None
    assert mem.exact_memorization is mem.memorization_accuracy


def test_memorization_accuracy_vs_numpy_jit_and_slicing():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 6)).astype(np.float32)
    labels = rng.integers(0, 6, (4, 7))
    labels[:, ::2] = logits.argmax(-1)[:, ::2]  # make about half of them right
    lengths = [7, 4, 2, 1]
    mask = np.zeros((4, 7), np.float32)
    for b, n in enumerate(lengths):
        mask[b, 7 - n:] = 1
    want = [np.mean(logits[b, 7 - n:].argmax(-1) == labels[b, 7 - n:])
            for b, n in enumerate(lengths)]
    got = mem.memorization_accuracy(logits, labels, mask)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(mem.memorization_accuracy)(logits, labels, mask), got)
    for b, n in enumerate(lengths):
        alone = mem.memorization_accuracy(logits[b:b + 1, 7 - n:], labels[b:b + 1, 7 - n:],
                                          np.ones((1, n)))
        np.testing.assert_allclose(alone[0], got[b])


def _open_unlearning_es(correct_row):
    """Literal port of open-unlearning's ``_extraction_strength`` loop (preds == labels)."""
    valid_len = len(correct_row)
    if valid_len == 0:
        return 0.0
    for k in range(valid_len):
        if all(correct_row[k:]):
            break
    return 1 - k / valid_len


def test_extraction_strength_hand_worked():
    correct = jnp.asarray([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [1, 0, 1, 1, 1],
                           [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]], bool)
    mask = jnp.ones((5, 5))
    # k = one past the last wrong token: 0, 1, 2, 5, 5 -> ES = 1, 0.8, 0.6, 0, 0.
    np.testing.assert_allclose(mem.extraction_strength(correct, mask, convention="strict"),
                               [1.0, 0.8, 0.6, 0.0, 0.0])
    # open-unlearning's loop stops at k = n - 1: 1/n instead of 0.
    np.testing.assert_allclose(mem.extraction_strength(correct, mask),
                               [1.0, 0.8, 0.6, 0.2, 0.2])
    with pytest.raises(ValueError, match="convention"):
        mem.extraction_strength(correct, mask, convention="loose")


def test_extraction_strength_vs_reference_loop_with_prompt_mask():
    rng = np.random.default_rng(1)
    correct = rng.random((30, 8)) < 0.8
    mask = np.zeros((30, 8), np.float32)
    starts = rng.integers(0, 9, 30)  # prompt length; start 8 = empty target
    for b, s in enumerate(starts):
        mask[b, s:] = 1
    got = jax.jit(mem.extraction_strength)(correct, mask)
    want = [_open_unlearning_es(list(correct[b, s:])) for b, s in enumerate(starts)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_extraction_strength_equals_greedy_decoding_on_a_toy_model():
    """A bigram table is a model: decode greedily from each prefix and compare."""
    rng = np.random.default_rng(2)
    vocab = 4
    for _ in range(20):
        table = rng.integers(0, vocab, vocab)  # next token = table[previous token]
        target = rng.integers(0, vocab, 7)
        target[1:] = np.where(rng.random(6) < 0.7, table[target[:-1]], target[1:])
        # Teacher-forced correctness of tokens 1..6 given the true previous token.
        correct = table[target[:-1]] == target[1:]
        n = len(correct)
        k_decoded = n
        for k in range(n + 1):  # shortest prefix (in target tokens) that regenerates the rest
            tok, out = target[k], []
            for _ in range(n - k):
                tok = table[tok]
                out.append(tok)
            if np.array_equal(out, target[k + 1:]):
                k_decoded = k
                break
        es = mem.extraction_strength(correct[None], np.ones((1, n)), convention="strict")
        assert float(es[0]) == pytest.approx(1 - k_decoded / n)


def test_extraction_likelihood_hand_worked():
    target = [1, 2, 3, 4, 5, 6]
    continuations = [
        [2, 3, 9, 5, 6],  # i=1: true 2-grams (23)(34)(45)(56); generated hits (23)(56): 2/4
        [3, 4, 5, 6],  # i=2: 3/3
        [7, 7, 7],  # i=3: 0/2
        [5, 6, 1, 2],  # i=4: cut to [5, 6]: 1/1
    ]
    assert mem.extraction_likelihood(target, continuations, n=2) == pytest.approx(2.5 / 4)
    assert list(mem.extraction_likelihood_prefixes(6, 2)) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="continuations"):
        mem.extraction_likelihood(target, continuations[:3], n=2)
    with pytest.raises(ValueError, match="target"):
        mem.extraction_likelihood(target[:2], continuations, n=2)


def _reference_el(target, generate, n):
    """Port of selective_unlearning's ``validation_el`` for one sequence."""
    max_len = len(target)
    numerator = 0
    for i in reversed(range(1, max_len)):
        label = target[i:max_len]
        pred = generate(target[:i])[: max_len - i]
        p_ngram = [tuple(pred[j:j + n]) for j in range(len(pred) - n + 1)]
        l_ngram = [tuple(label[j:j + n]) for j in range(len(label) - n + 1)]
        l_unique = set(l_ngram)
        try:
            numerator += len([g for g in p_ngram if g in l_unique]) / len(l_ngram)
        except ZeroDivisionError:
            pass
    return numerator / (max_len - 1 - (n - 1))


def test_extraction_likelihood_vs_reference_loop():
    rng = np.random.default_rng(3)
    for n in (1, 3, 10):
        target = list(rng.integers(0, 3, 16))
        memo = {}

        def generate(prefix):
            key = tuple(prefix)
            if key not in memo:  # a deterministic "model": half-right continuation
                rest = target[len(prefix):]
                memo[key] = [t if rng.random() < 0.6 else 7 for t in rest]
            return memo[key]

        continuations = [generate(target[:i]) for i in range(1, len(target))]
        got = mem.extraction_likelihood(target, continuations, n=n)
        assert got == pytest.approx(_reference_el(target, generate, n))


def test_exposure_exact_rank():
    cands = np.arange(1.0, 8.0)  # 7 other candidates: |R| = 8
    assert mem.exposure(0.5, cands) == pytest.approx(3.0)  # rank 1
    assert mem.exposure(3.5, cands) == pytest.approx(1.0)  # rank 4
    assert mem.exposure(8.0, cands) == pytest.approx(0.0)  # rank 8
    assert mem.exposure(3.0, cands) == pytest.approx(3 - math.log2(3.5))  # tie counts 1/2
    # A full toy space: 1000 codes with pseudo-random log-perplexities; rank by sorting.
    rng = np.random.default_rng(4)
    px = rng.normal(5.0, 1.0, 1000)
    order = np.argsort(px)
    for secret in (0, 17, 999):
        rank = int(np.nonzero(order == secret)[0][0]) + 1
        others = np.delete(px, secret)
        assert mem.exposure(px[secret], others) == pytest.approx(math.log2(1000) - math.log2(rank))


def test_exposure_sampled_and_skewnorm():
    cands = np.arange(1.0, 8.0)
    assert mem.exposure(0.5, cands, space_size=1024) == pytest.approx(10.0)
    assert mem.exposure(4.5, cands, space_size=1024) == pytest.approx(
        10 - math.log2(1 + 4 / 7 * 1023))
    with pytest.raises(ValueError, match="space_size"):
        mem.exposure(0.5, cands, space_size=5)
    samples = np.random.default_rng(5).normal(10.0, 2.0, 5000)
    # For normal data the fit is near-symmetric: exposure = -log2 Phi((s - 10) / 2).
    assert mem.exposure_skewnorm(10.0, samples) == pytest.approx(1.0, abs=0.1)
    assert mem.exposure_skewnorm(4.0, samples) == pytest.approx(
        -stats.norm.logcdf(-3.0) / math.log(2), abs=0.5)
    with pytest.raises(ValueError, match="candidate_log_perplexities"):
        mem.exposure_skewnorm(1.0, [1.0, 2.0])


def test_exposure_skewnorm_equals_scipy_fit_and_cdf():
    """The estimator is scipy's MLE skew-normal fit and its CDF, read in bits."""
    rng = np.random.default_rng(11)
    for m in (15, 31):
        cands = stats.skewnorm.rvs(-2.0, loc=30.0, scale=4.0, size=m, random_state=rng)
        a, loc, scale = stats.skewnorm.fit(cands)
        for secret in (cands.min() - 2.0, float(np.median(cands)), cands.max() + 1.0):
            want = -math.log2(stats.skewnorm.cdf(secret, a, loc, scale))
            assert mem.exposure_skewnorm(secret, cands) == pytest.approx(want, rel=1e-9)
    # Capped at log2 |R|: no secret is rarer than rank 1 of R.
    assert mem.exposure_skewnorm(-1e3, cands, space_size=2 ** 20) == pytest.approx(20.0)
    # Candidates without spread: a point mass.
    assert mem.exposure_skewnorm(3.0, [3.0] * 4) == 0.0
    assert mem.exposure_skewnorm(2.0, [3.0] * 4, space_size=1024) == pytest.approx(10.0)


def test_exposure_skewnorm_recovers_a_known_skewed_population():
    """Independent check: candidates drawn from a KNOWN skew-normal; the extrapolated
    exposure of a secret far below every sample approaches -log2 of the true CDF."""
    truth = dict(a=3.0, loc=30.0, scale=6.0)
    cands = stats.skewnorm.rvs(size=4000, random_state=np.random.default_rng(2), **truth)
    secret = float(stats.skewnorm.ppf(2.0 ** -16, **truth))  # 16 bits under the true law
    assert secret < cands.min()
    want = -stats.skewnorm.logcdf(secret, **truth) / math.log(2)
    assert want > math.log2(4000) + 2  # beyond what any rank among the samples can say
    assert mem.exposure_skewnorm(secret, cands) == pytest.approx(want, rel=0.1)


def test_rank_exposure_saturates_where_skewnorm_grades():
    """The issue's case: |R| = 1e6, 31 samples. Every secret below all samples gets the
    rank estimate's ceiling log2 1e6 = 19.93 bits, one sample below it ~log2 31 = 4.95;
    the skew-normal estimate orders the secrets instead."""
    cands = np.random.default_rng(3).normal(40.0, 4.0, 31)
    lo = cands.min()
    secrets = [lo - 0.5, lo - 3.0, lo - 8.0]
    ranks = [mem.exposure(s, cands, space_size=10 ** 6) for s in secrets]
    assert ranks == pytest.approx([math.log2(1e6)] * 3)
    second = np.sort(cands)[1] - 1e-9  # one sample below the secret
    assert mem.exposure(second, cands, space_size=10 ** 6) == pytest.approx(
        math.log2(1e6) - math.log2(1 + 1 / 31 * (1e6 - 1)))
    graded = [mem.exposure_skewnorm(s, cands, space_size=10 ** 6) for s in secrets]
    assert graded[0] < graded[1] < graded[2] <= math.log2(1e6)
