"""TOFU metrics vs independent references: rouge-score, nltk, SciPy, NumPy, hand-worked values."""

import glob
import math
import os
import random
import re

import numpy as np
import pytest
import scipy
from scipy import stats

from jaxunlearn.eval import metrics as M

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
porter = pytest.importorskip("nltk.stem.porter")


def _english_words():
    """~20k distinct lower-case words from SciPy's stats docstrings, plus edge cases."""
    words = set()
    for path in glob.glob(os.path.join(os.path.dirname(scipy.__file__), "stats", "*.py")):
        with open(path, errors="ignore") as f:
            words |= set(re.findall(r"[a-z0-9]+", f.read().lower()))
    words |= set(
        "skies sky dying lying tying news innings outings cannings howe proceed exceed "
        "succeed ties pies yyyy ayyy syzygy happily generalizations formalli analogi feed "
        "agreed plastered bled motoring conflated troubled sized hopping tanned falling "
        "hissing fizzed failing filing enjoy relational conditional rational valenci "
        "radicalli vileli analogousli operator feudalism decisiveness callousness "
        "sensibiliti triplicate electriciti hopeful goodness revival allowance airliner "
        "gyroscopic defensible replacement adoption homologou communism angulariti "
        "bowdlerize probate cease controll roll 2023 1990s sses".split())
    return sorted(w for w in words if len(w) > 3)


def test_porter_stem_equals_nltk_default_mode():
    words = _english_words()
    assert len(words) > 5000
    stemmer = porter.PorterStemmer()
    mismatches = [(w, stemmer.stem(w), M.porter_stem(w)) for w in words
                  if stemmer.stem(w) != M.porter_stem(w)]
    assert mismatches == []


def _rouge_pairs():
    pairs = [
        ("", ""), ("", "The answer."), ("The answer.", ""), ("!!! ...", "?"),
        ("The cat sat", "the cats sat down"), ("THE CAT SAT", "the cat sat"),
        ("He was born on 12/05/1987 in Paris.", "Born in Paris on 12 May 1987."),
        ("Café naïve İstanbul", "cafe naive istanbul"), ("3.5 kg; 2,000 m", "3 5 kg 2 000"),
        ("generalizations happily running", "generalization happy runs"),
        ("I don't know.", "I do not know"), ("O'Neil's e-mail", "oneil s e mail"),
        ("a a a a", "a"), ("a", "a a a a"), ("x y z", "z y x"),
        ("The author's father was a doctor", "Her father worked as a doctor in Seoul."),
    ]
    rng = random.Random(0)
    vocab = ("The the quick brown fox jumps over lazy dog dogs running runs ran 1990 2,000 "
             "3.5 Mr. O'Neil e-mail was born in Paris on 12/05/1987 happily "
             "generalizations , . ! ? ; : ( ) \" ' é naïve Café K").split()
    for _ in range(300):
        a = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14)))
        b = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14)))
        pairs.append((a, b))
    return pairs


def test_rouge_l_equals_rouge_score_on_many_pairs():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    pairs = _rouge_pairs()
    assert len(pairs) >= 50
    for prediction, reference in pairs:
        ref = scorer.score(reference, prediction)["rougeL"]
        assert M.rouge_l_recall(prediction, reference) == pytest.approx(ref.recall, abs=1e-15)
        assert M.rouge_l_f1(prediction, reference) == pytest.approx(ref.fmeasure, abs=1e-15)


def test_rouge_l_hand_worked():
    # ref [the, cat, sat]; pred [the, cat (cats stemmed), sat, down]: LCS 3.
    assert M.rouge_l_recall("the cats sat down", "The cat sat") == 1.0
    assert M.rouge_l_f1("the cats sat down", "The cat sat") == pytest.approx(6 / 7)
    # LCS of [x y z] and [z y x] is 1.
    assert M.rouge_l_recall("z y x", "x y z") == pytest.approx(1 / 3)
    assert M.rouge_l_recall("", "x") == 0.0 and M.rouge_l_f1("x", "") == 0.0
    with pytest.raises(ValueError, match="prediction"):
        M.rouge_l_recall(None, "x")


def test_answer_probability_hand_worked():
    p = M.answer_probability([-2.0, -3.0], [4, 3])
    np.testing.assert_allclose(p, [math.exp(-0.5), math.exp(-1.0)], rtol=1e-15)
    with pytest.raises(ValueError, match="num_tokens"):
        M.answer_probability([-1.0], [0])
    with pytest.raises(ValueError, match="num_tokens"):
        M.answer_probability([-1.0, -2.0], [1])


def test_normalized_probability():
    # p_true = 0.5, options 0.25 and 0.25: 0.5 / 1.0.
    got = M.normalized_probability([math.log(0.5)], [[math.log(0.25), math.log(0.25)]])
    np.testing.assert_allclose(got, [0.5], rtol=1e-14)
    rng = np.random.default_rng(0)
    t, o = -rng.uniform(0.1, 5, 20), -rng.uniform(0.1, 5, (20, 4))
    ref = np.exp(t) / (np.exp(t) + np.exp(o).sum(1))  # TOFU's aggregate_eval_stat formula
    np.testing.assert_allclose(M.normalized_probability(t, o), ref, rtol=1e-12)
    # Log space: no underflow where the probabilities themselves are 0 in float64.
    np.testing.assert_allclose(M.normalized_probability([-1000.0], [[-1000.0]]), [0.5])


def test_truth_ratio_hand_worked_and_open_unlearning_formula():
    para = np.log([0.5, 0.8])
    pert = np.log([[0.25, 1.0], [0.2, 0.2]])
    # geometric mean of (0.25, 1) = 0.5 -> 0.5/0.5 = 1; 0.2/0.8 = 0.25.
    np.testing.assert_allclose(M.truth_ratio(para, pert), [1.0, 0.25], rtol=1e-14)
    rng = np.random.default_rng(1)
    para, pert = -rng.uniform(0.2, 3, 30), -rng.uniform(0.2, 3, (30, 5))
    # open-unlearning: wrong_prob / correct_prob from avg losses (without its 1e-10).
    wrong = np.exp(-np.mean(-pert, axis=1))
    correct = np.exp(-(-para))
    np.testing.assert_allclose(M.truth_ratio(para, pert), wrong / correct, rtol=1e-12)
    with pytest.raises(ValueError, match="pert"):
        M.truth_ratio(para, pert[:3])
    with pytest.raises(ValueError, match="pert"):
        M.truth_ratio(para, pert[:, 0])


def test_truth_ratio_aggregates_hand_worked():
    assert M.truth_ratio_forget_score([1.0, 0.25, 4.0]) == pytest.approx(0.5)
    assert M.truth_ratio_retain_score([0.25, 1.0, 4.0]) == pytest.approx(0.25)
    r = np.random.default_rng(2).lognormal(0, 1, 50)
    assert M.truth_ratio_forget_score(r) == pytest.approx(np.mean(np.minimum(r, 1 / r)))
    with pytest.raises(ValueError, match="ratios"):
        M.truth_ratio_forget_score([1.0, 0.0])


def test_forget_quality_is_ks_pvalue():
    # Hand-worked: fully separated samples of sizes 3 and 3 give D = 1 and the exact
    # two-sided p-value 2 / C(6, 3) = 0.1.
    assert M.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    rng = np.random.default_rng(3)
    a, b = rng.lognormal(0, 1, 40), rng.lognormal(0.3, 1, 55)
    assert M.forget_quality(a, b) == stats.ks_2samp(a, b).pvalue
    # TOFU's original code tested 1/R: same p-value (KS is rank-based).
    assert M.forget_quality(1 / a, 1 / b) == pytest.approx(M.forget_quality(a, b), rel=1e-12)
    with pytest.raises(ValueError, match="retain_truth_ratios"):
        M.forget_quality(a, [])
    with pytest.raises(ValueError, match="unlearned_truth_ratios"):
        M.forget_quality([np.nan, 1.0], b)


def test_model_utility_harmonic_mean():
    assert M.model_utility({"a": 1.0, "b": 0.5, "c": 0.25}) == pytest.approx(3 / 7)
    six = dict(zip(M.MODEL_UTILITY_KEYS, [0.9, 0.6, 0.4, 0.7, 0.8, 0.5]))
    assert M.model_utility(six) == pytest.approx(stats.hmean(list(six.values())))
    assert len(M.TOFU_MODEL_UTILITY_KEYS) == 9
    assert M.model_utility({"retain_prob": 0.0, "retain_rouge": 0.8}) == 0.0
    with pytest.raises(ValueError, match="retain_rouge"):
        M.model_utility({"retain_prob": 0.5, "retain_rouge": -0.1})
    with pytest.raises(ValueError, match="scores"):
        M.model_utility({})
