"""TOFU metrics: answer probability, ROUGE-L, truth ratio, forget quality, model utility.

Every function here post-processes numbers a model driver has already produced
(per-sequence log-probs, generated strings); none calls a model. They run on the
host in float64 NumPy so that aggregates match SciPy/NumPy references exactly.

Definitions follow open-unlearning (``src/evals/metrics/memorization.py``,
``privacy.py``, ``utility.py``; Maini et al. 2024, TOFU) so numbers are comparable.
Notation: N questions, K perturbed (wrong) answers per question. "Per-token-averaged
log-prob" means ``sequence_logprob / num_answer_tokens`` (= ``-avg_loss`` there).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

# The six scores our benchmark's model utility combines: {retain people, world facts}
# x {probability, ROUGE-L recall, truth ratio}. World-facts probability is normalised
# over the options (``normalized_probability``); truth ratios use the retain aggregate.
# Holdout people are never trained on, so their low probability says nothing about
# utility: they are deliberately absent.
MODEL_UTILITY_KEYS = (
    "retain_prob", "retain_rouge", "retain_truth_ratio",
    "world_facts_prob", "world_facts_rouge", "world_facts_truth_ratio",
)
# TOFU's nine (open-unlearning ``model_utility.yaml``): the six above plus real authors.
TOFU_MODEL_UTILITY_KEYS = MODEL_UTILITY_KEYS + (
    "real_authors_prob", "real_authors_rouge", "real_authors_truth_ratio",
)


def _array(x, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name}: is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return a


def per_token_logprob(seq_logprob, num_tokens) -> np.ndarray:
    """Per-token-averaged log-probability ``sum_t log p(y_t) / |y|``.

    Args:
      seq_logprob: ``[N]`` sums of answer-token log-probs (``losses.sequence_logprob``).
      num_tokens: ``[N]`` number of answer tokens of each sequence (> 0).
    Returns:
      ``[N]`` float64.
    """
    lp = _array(seq_logprob, "seq_logprob", 1)
    n = _array(num_tokens, "num_tokens", 1)
    if lp.shape != n.shape:
        raise ValueError(f"num_tokens: shape {n.shape} differs from seq_logprob {lp.shape}")
    if np.any(n <= 0):
        raise ValueError("num_tokens: every sequence needs at least one answer token")
    return lp / n


def answer_probability(seq_logprob, num_tokens) -> np.ndarray:
    """TOFU "Probability": ``exp(-NLL / |y|) = exp(per_token_logprob)``, shape ``[N]``.

    The length-normalised (geometric-mean per-token) probability of the answer,
    open-unlearning's ``evaluate_probability`` ``prob``.
    """
    return np.exp(per_token_logprob(seq_logprob, num_tokens))


def normalized_probability(true_logprob, option_logprobs) -> np.ndarray:
    """Probability of the true answer normalised over the options, TOFU world facts.

    ``p_true / (p_true + sum_k p_k)`` with ``p = exp(per-token-averaged log-prob)``.
    Computed as a softmax in log space (no underflow); open-unlearning's
    ``probability_w_options`` adds 1e-10 to the denominator, a difference only when
    all options have per-token probability below ~1e-10.

    Args:
      true_logprob: ``[N]`` per-token-averaged log-probs of the true answers.
      option_logprobs: ``[N, K]`` the same for the K wrong options.
    Returns:
      ``[N]`` values in (0, 1].
    """
    t = _array(true_logprob, "true_logprob", 1)
    o = _array(option_logprobs, "option_logprobs", 2)
    if o.shape[0] != t.shape[0]:
        raise ValueError(f"option_logprobs: has {o.shape[0]} rows, true_logprob has {t.shape[0]}")
    both = np.concatenate([t[:, None], o], axis=1)
    top = both.max(axis=1, keepdims=True)
    return np.exp(t - top[:, 0]) / np.exp(both - top).sum(axis=1)


def truth_ratio(para, pert) -> np.ndarray:
    """Truth ratio ``R = exp(mean_k pert_k - para)`` = P(perturbed) / P(paraphrased).

    ``mean_k`` averages the per-token log-probs, i.e. a geometric mean of the
    per-token probabilities, exactly as open-unlearning's ``truth_ratio`` (which
    averages ``avg_loss`` over the K perturbations before ``exp``). Two notes:
    open-unlearning divides by ``p_para + 1e-10`` (we compute in log space; the two
    differ only when ``p_para < ~1e-8``); TOFU's original utility code averaged the
    perturbed *probabilities* (arithmetic mean) instead, and its forget quality used
    ``1/R``, which gives the same KS p-value (the KS test is invariant under a
    strictly monotone map of both samples).

    Args:
      para: ``[N]`` per-token-averaged log-probs of the paraphrased true answers
        (the original answer for world facts, which have no paraphrase).
      pert: ``[N, K]`` per-token-averaged log-probs of the perturbed answers.
    Returns:
      ``[N]`` positive ratios; < 1 means the model prefers the truth.
    """
    p = _array(para, "para", 1)
    q = _array(pert, "pert", 2)
    if q.shape[0] != p.shape[0]:
        raise ValueError(f"pert: has {q.shape[0]} rows, para has {p.shape[0]}")
    return np.exp(q.mean(axis=1) - p)


def truth_ratio_forget_score(ratios) -> float:
    """Forget-set aggregate ``mean(min(R, 1/R))``: 1 when true and false are equally likely.

    open-unlearning's ``closer_to_1_better``. Computed as ``exp(-|log R|)``.
    """
    r = _array(ratios, "ratios", 1)
    if np.any(r <= 0):
        raise ValueError("ratios: truth ratios must be positive")
    return float(np.mean(np.exp(-np.abs(np.log(r)))))


def truth_ratio_retain_score(ratios) -> float:
    """Retain/world-facts aggregate ``mean(max(0, 1 - R))``: higher = truth preferred.

    open-unlearning's ``true_better``; the value that enters model utility.
    """
    r = _array(ratios, "ratios", 1)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality(unlearned_truth_ratios, retain_truth_ratios) -> float:
    """TOFU forget quality: two-sample KS-test p-value of forget-set truth ratios.

    Compares the unlearned model's truth ratios on the forget set with those of the
    model trained on the retain set only (``scipy.stats.ks_2samp``, default exact/
    asymptotic choice, as open-unlearning's ``ks_test``). High = indistinguishable.

    Args:
      unlearned_truth_ratios: ``[N]`` ratios of the unlearned model.
      retain_truth_ratios: ``[M]`` ratios of the retain-only reference model.
    Returns:
      p-value in [0, 1].
    """
    a = _array(unlearned_truth_ratios, "unlearned_truth_ratios", 1)
    b = _array(retain_truth_ratios, "retain_truth_ratios", 1)
    from scipy import stats  # here: importing scipy.stats costs ~0.8 s per process

    return float(stats.ks_2samp(a, b).pvalue)


def model_utility(scores: Mapping[str, float]) -> float:
    """Harmonic mean of the named non-negative scores (0 if any score is 0).

    TOFU's model utility is the harmonic mean of nine numbers ({retain, real authors,
    world facts} x {probability, ROUGE-L recall, truth-ratio score}); our benchmark has
    no real authors and passes the six ``MODEL_UTILITY_KEYS``; TOFU-format data passes
    ``TOFU_MODEL_UTILITY_KEYS``. Any names are accepted; the names only make reports
    readable and errors precise.
    """
    if not scores:
        raise ValueError("scores: model utility needs at least one score")
    values = []
    for key, value in scores.items():
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"scores[{key!r}]: must be a finite non-negative number, "
                             f"got {value!r}")
        values.append(v)
    if min(values) == 0.0:
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


# --------------------------------------------------------------------------- ROUGE
# rouge-score 0.1.2 tokenisation: lowercase, every non-[a-z0-9] character becomes a
# space, split on whitespace, Porter-stem tokens longer than 3 characters.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_VOWELS = frozenset("aeiou")
# NLTK-extension irregular forms, looked up before any rule fires.
_IRREGULAR = {
    "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie",
    "news": "news", "innings": "inning", "inning": "inning", "outings": "outing",
    "outing": "outing", "cannings": "canning", "canning": "canning", "howe": "howe",
    "proceed": "proceed", "exceed": "exceed", "succeed": "succeed",
}


def _consonants(word: str) -> list[bool]:
    # 'y' is a consonant at the start or after a vowel, a vowel after a consonant.
    flags: list[bool] = []
    for ch in word:
        flags.append(ch not in _VOWELS and (ch != "y" or not flags or not flags[-1]))
    return flags


def _measure(stem: str) -> int:
    """Porter's m in ``[C](VC)^m[V]``: the number of vowel->consonant transitions."""
    f = _consonants(stem)
    return sum(1 for a, b in zip(f, f[1:]) if not a and b)


def _ends_cvc(word: str) -> bool:
    f = _consonants(word)
    if len(word) >= 3:
        return f[-3] and not f[-2] and f[-1] and word[-1] not in "wxy"
    return len(word) == 2 and not f[0] and f[1]  # NLTK extension for two letters


def _first_rule(word: str, rules) -> str:
    """Apply the rule whose suffix matches first; if its condition fails, stop."""
    for suffix, repl, cond in rules:
        if word.endswith(suffix):
            stem = word[: len(word) - len(suffix)]
            return stem + repl if cond(stem) else word
    return word


def _m_gt(k: int):
    return lambda stem: _measure(stem) > k


_STEP1A = [(s, r, lambda stem: True) for s, r in [
    ("sses", "ss"), ("ies", "i"), ("ss", "ss"), ("s", "")]]
_STEP2 = [(s, r, _m_gt(0)) for s, r in [
    ("ational", "ate"), ("tional", "tion"), ("enci", "ence"), ("anci", "ance"),
    ("izer", "ize"), ("bli", "ble"), ("alli", "al"), ("entli", "ent"), ("eli", "e"),
    ("ousli", "ous"), ("ization", "ize"), ("ation", "ate"), ("ator", "ate"),
    ("alism", "al"), ("iveness", "ive"), ("fulness", "ful"), ("ousness", "ous"),
    ("aliti", "al"), ("iviti", "ive"), ("biliti", "ble"), ("fulli", "ful")]]
# 'logi' -> 'log' when the stem *including the l* has m > 0 (NLTK extension).
_STEP2.append(("logi", "log", lambda stem: _measure(stem + "l") > 0))
_STEP3 = [(s, r, _m_gt(0)) for s, r in [
    ("icate", "ic"), ("ative", ""), ("alize", "al"), ("iciti", "ic"), ("ical", "ic"),
    ("ful", ""), ("ness", "")]]
_STEP4 = [(s, "", _m_gt(1)) for s in [
    "al", "ance", "ence", "er", "ic", "able", "ible", "ant", "ement", "ment", "ent"]]
_STEP4.append(("ion", "", lambda stem: _measure(stem) > 1 and stem[-1] in "st"))
_STEP4 += [(s, "", _m_gt(1)) for s in ["ou", "ism", "ate", "iti", "ous", "ive", "ize"]]


def _step1b(w: str) -> str:
    if w.endswith("ied"):
        return w[:-3] + ("ie" if len(w) == 4 else "i")
    if w.endswith("eed"):
        return w[:-1] if _measure(w[:-3]) > 0 else w
    for suffix in ("ed", "ing"):
        if w.endswith(suffix) and not all(_consonants(w[: -len(suffix)])):
            w = w[: -len(suffix)]
            break
    else:
        return w
    if w.endswith(("at", "bl", "iz")):
        return w + "e"
    if len(w) >= 2 and w[-1] == w[-2] and _consonants(w)[-1]:
        return w if w[-1] in "lsz" else w[:-1]
    return w + "e" if _measure(w) == 1 and _ends_cvc(w) else w


def _step2(w: str) -> str:
    if w.endswith("alli") and _measure(w[:-4]) > 0:
        return _step2(w[:-2])  # 'alli' -> 'al', then step 2 again (NLTK extension)
    return _first_rule(w, _STEP2)


def porter_stem(word: str) -> str:
    """Porter (1980) stemmer with NLTK's extensions, equal to ``nltk``'s default mode.

    rouge-score's ``use_stemmer=True`` uses ``nltk.stem.porter.PorterStemmer()``;
    this reimplementation keeps nltk out of the runtime dependencies.
    """
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) <= 2:
        return w
    if w.endswith("ies") and len(w) == 4:
        w = w[:-1]
    else:
        w = _first_rule(w, _STEP1A)
    w = _step1b(w)
    if w.endswith("y") and len(w) > 2 and _consonants(w[:-1])[-1]:
        w = w[:-1] + "i"  # step 1c, NLTK: only after a consonant that is not the whole stem
    w = _first_rule(_step2(w), _STEP3)
    w = _first_rule(w, _STEP4)
    if w.endswith("e"):  # step 5a
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(w[:-1])):
            w = w[:-1]
    if w.endswith("ll") and _measure(w[:-1]) > 1:  # step 5b
        w = w[:-1]
    return w


def rouge_tokens(text: str) -> list[str]:
    """rouge-score's default tokeniser with the stemmer on: ``str`` -> stemmed tokens."""
    tokens = _NON_ALNUM.sub(" ", text.lower()).split()
    return [porter_stem(t) if len(t) > 3 else t for t in tokens]


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    # One DP row at a time: O(|a| |b|) time, O(|b|) memory.
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l(prediction: str, reference: str) -> tuple[float, float]:
    if not isinstance(prediction, str) or not isinstance(reference, str):
        raise ValueError("prediction/reference: ROUGE-L needs two strings")
    ref, pred = rouge_tokens(reference), rouge_tokens(prediction)
    if not ref or not pred:
        return 0.0, 0.0
    lcs = _lcs_length(ref, pred)
    return lcs / len(pred), lcs / len(ref)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall ``LCS(ref, pred) / |ref|`` on rouge-score's stemmed tokens.

    Equals ``RougeScorer(["rougeL"], use_stemmer=True).score(reference, prediction)
    ["rougeL"].recall`` (TOFU, open-unlearning ``rougeL_recall``); 0 when either text
    has no tokens.
    """
    return _rouge_l(prediction, reference)[1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 ``2PR / (P + R)`` (MUSE's ``rougeL_f1``), same tokens as the recall."""
    p, r = _rouge_l(prediction, reference)
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)
