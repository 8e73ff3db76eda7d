"""Verbatim-memorisation metrics: MA / exact memorisation, extraction strength, EL_n, exposure.

Pure functions of logits, token ids or log-perplexities; a model's per-sequence
memorisation over records is ``eval.sequence_memorization``, and the unlearning methods
that act on it (SGA, TAU) are in the method layer.

Teacher-forced metrics (``memorization_accuracy``, ``extraction_strength``) take
logits ``[B, T, V]`` or greedy correctness ``[B, T]`` with ``logits[b, t]`` scoring
``labels[b, t]`` and a 0/1 ``mask``; they are jittable. Extraction likelihood works
on token-id lists of greedy continuations a decoder produced; exposure on
log-perplexities of a canary and its candidates. Those two run on the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np


def greedy_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``argmax_v logits[b, t, v] == labels[b, t]``: ``[B, T, V], [B, T] -> [B, T]`` bool.

    Ties go to the lowest id (``jnp.argmax`` and ``torch.argmax`` agree).
    """
    return jnp.argmax(logits, axis=-1) == labels


def memorization_accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Memorisation accuracy MA (Tirumala et al. 2022; Jang et al. 2023, eq. 2).

    ``MA_b = sum_t mask * 1[argmax p(. | y_<t) = y_t] / sum_t mask`` with teacher
    forcing, ``[B, T, V] -> [B]``. It is open-unlearning's ``exact_memorization``
    (fraction of answer tokens the greedy model gets right given the true prefix);
    open-unlearning leaves out the last answer token (EOS), which the driver
    reproduces through ``mask``. Rows without masked tokens give NaN (open-unlearning
    reports None for them and drops them from the mean).
    """
    on = mask > 0
    hits = jnp.sum(jnp.where(on, greedy_correct(logits, labels), False), axis=-1)
    return hits / jnp.sum(on, axis=-1)


exact_memorization = memorization_accuracy


def extraction_strength(correct: jax.Array, mask: jax.Array, *,
                        convention: Literal["open_unlearning", "strict"] = "open_unlearning"
                        ) -> jax.Array:
    """Extraction strength ``ES = 1 - k / n`` (Carlini et al. 2021; open-unlearning).

    ``k`` is the shortest prefix of the n target tokens after which greedy decoding
    reproduces the rest. Greedy decoding from a true prefix reproduces the suffix
    exactly when the teacher-forced argmax is right at every later position, so k is
    one past the last wrong position: ES is read off ``greedy_correct`` without a
    decoder. ``convention="open_unlearning"`` keeps that code's loop bound
    (``k <= n - 1``), so a row whose last token is wrong scores ``1/n``, not 0;
    ``"strict"`` gives 0. Rows with no masked token score 0 in both.

    Args:
      correct: ``[B, T]`` bool, ``greedy_correct(logits, labels)``.
      mask: ``[B, T]`` 0/1 on the target tokens (any layout, e.g. after a prompt).
    Returns:
      ``[B]`` in [0, 1]; 1 = the whole target comes out given only the first token.
    """
    if convention not in ("open_unlearning", "strict"):
        raise ValueError(f"convention: expected 'open_unlearning' or 'strict', got {convention!r}")
    on = mask > 0
    n = jnp.sum(on, axis=-1)
    rank = jnp.cumsum(on, axis=-1)  # 1-based index of each target token among targets
    k = jnp.max(jnp.where(on & ~correct, rank, 0), axis=-1)
    if convention == "open_unlearning":
        k = jnp.minimum(k, n - 1)
    return jnp.where(n > 0, 1.0 - k / jnp.maximum(n, 1), 0.0)


def extraction_likelihood_prefixes(num_tokens: int, n: int = 10) -> range:
    """Prefix lengths whose continuations ``extraction_likelihood`` needs: ``1 .. T - n``."""
    return range(1, num_tokens - n + 1)


def _ngrams(seq: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def extraction_likelihood(target: Sequence[int], continuations: Sequence[Sequence[int]], *,
                          n: int = 10) -> float:
    """Extraction likelihood EL_n (Jang et al. 2023, eq. 1; Barbulescu & Triantafillou 2024).

    ``EL_n(x) = sum_{i=1}^{T-n} overlap_n(f(x_<i), x_>=i) / (T - n)`` where ``f(x_<i)``
    is the greedy continuation of the first i tokens up to total length T, and
    ``overlap_n(a, b) = #{g in ngrams_n(a) : g in ngrams_n(b)} / |ngrams_n(b)|``.
    Matches the reference code (``validation_el`` in GeorgeOctavian/selective_unlearning,
    from joeljang/knowledge-unlearning): generated n-grams are counted with
    multiplicity against the *set* of true n-grams and divided by the number of true
    n-grams. Only prefixes i <= T - n leave a true n-gram to find; ``T - n`` is their
    number, the reference code's ``max_len - 1 - (n - 1)``.

    Args:
      target: the T token ids of the memorised sequence.
      continuations: ``continuations[i - 1]`` = generated ids (without the prefix) after
        prefix ``target[:i]``, for i = 1 .. T - n (``extraction_likelihood_prefixes``);
        longer lists are accepted and extra entries ignored; each continuation is cut
        to ``T - i`` tokens (generation stops at total length T).
      n: n-gram size (10 in the papers).
    Returns:
      EL_n in [0, 1].
    """
    T = len(target)
    if n < 1:
        raise ValueError(f"n: the n-gram size must be >= 1, got {n}")
    if T <= n:
        raise ValueError(f"target: has {T} tokens; EL_{n} needs more than n = {n}")
    if len(continuations) < T - n:
        raise ValueError(f"continuations: need one per prefix length 1..{T - n}, "
                         f"got {len(continuations)}")
    target = [int(t) for t in target]
    total = 0.0
    for i in extraction_likelihood_prefixes(T, n):
        truth = _ngrams(target[i:], n)
        truth_set = set(truth)
        generated = _ngrams([int(t) for t in continuations[i - 1]][: T - i], n)
        total += sum(g in truth_set for g in generated) / len(truth)
    return total / (T - n)


def exposure(secret_log_perplexity: float, candidate_log_perplexities, *,
             space_size: int | None = None) -> float:
    """Canary exposure (Carlini et al. 2019, "The Secret Sharer", def. 4).

    ``exposure = log2 |R| - log2 rank(s)``, rank 1 = the lowest log-perplexity in the
    randomness space R. Ties count half (``rank = 1 + #lower + #equal / 2``).

    * ``space_size=None``: ``candidate_log_perplexities`` is all of R except the secret,
      ``|R| = len(candidates) + 1``; the exact rank.
    * ``space_size=|R|``: the candidates are a uniform sample of R without the secret;
      the secret's rank among them is scaled to the full space,
      ``rank = 1 + (#lower + #equal / 2) / m * (|R| - 1)``. Resolution is limited to
      ``log2 m``; ``exposure_skewnorm`` extrapolates beyond it.

    Returns:
      exposure in bits, in ``[0, log2 |R|]``.
    """
    c = np.asarray(candidate_log_perplexities, dtype=np.float64)
    if c.ndim != 1 or c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError("candidate_log_perplexities: expected a non-empty finite 1-D array")
    s = float(secret_log_perplexity)
    if not math.isfinite(s):
        raise ValueError(f"secret_log_perplexity: must be finite, got {secret_log_perplexity}")
    before = np.sum(c < s) + 0.5 * np.sum(c == s)
    if space_size is None:
        size, rank = c.size + 1, 1.0 + before
    else:
        if space_size <= c.size:
            raise ValueError(f"space_size: {space_size} must exceed the {c.size} "
                             "sampled candidates")
        size, rank = space_size, 1.0 + before / c.size * (space_size - 1)
    return math.log2(size) - math.log2(rank)


def exposure_skewnorm(secret_log_perplexity: float, candidate_log_perplexities, *,
                      space_size: int | None = None) -> float:
    """Extrapolated exposure (Carlini et al. 2019, sec. 4.2): fit a skew-normal density.

    ``exposure = -log2 Pr_{r in R}[Px(r) <= Px(s)]`` with the probability read off a
    ``scipy.stats.skewnorm`` fitted (maximum likelihood, ``skewnorm.fit``) to the sampled
    candidates' log-perplexities, as tensorflow/privacy's ``compute_exposure_extrapolation``;
    so a secret that beats every sample gets a graded exposure instead of the rank
    estimate's ceiling ``log2 |R|`` (and the gap below it, ``log2 m`` for m samples).

    Args:
      secret_log_perplexity: ``Px(s)``, the secret's ``-log p(secret | prefix)``.
      candidate_log_perplexities: ``[m]``, m >= 3, the sampled candidates' ``Px``.
      space_size: ``|R|``; when given the result is capped at ``log2 |R|`` (no secret can
        be rarer than rank 1 of R; the fitted tail may claim more).
    Returns:
      exposure in bits, ``>= 0``. Candidates without spread fit a point mass: 0 bits
      when the secret is not below it, else the cap (``inf`` without ``space_size``).
    """
    c = np.asarray(candidate_log_perplexities, dtype=np.float64)
    if c.ndim != 1 or c.size < 3 or not np.all(np.isfinite(c)):
        raise ValueError("candidate_log_perplexities: need at least 3 finite samples to fit")
    s = float(secret_log_perplexity)
    if not math.isfinite(s):
        raise ValueError(f"secret_log_perplexity: must be finite, got {secret_log_perplexity}")
    cap = math.inf if space_size is None else math.log2(space_size)
    if np.ptp(c) == 0.0:  # skewnorm.fit would divide by a zero scale
        return 0.0 if s >= c[0] else cap
    from scipy import stats  # here: importing scipy.stats costs ~0.8 s per process

    a, loc, scale = stats.skewnorm.fit(c)
    logcdf = float(stats.skewnorm.logcdf(s, a, loc, scale))
    return float(min(max(-logcdf / math.log(2.0), 0.0), cap))
