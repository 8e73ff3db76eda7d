"""Membership-inference attacks (MIA) on per-token log-probs, their AUC and privacy leakage.

Sign convention: every score here is **higher = more likely a member** (seen in
training). open-unlearning signs its statistics the other way (loss-like, "higher =
less likely member", ``src/evals/metrics/mia/``) and then calls ``roc_auc_score`` with
the forget set labelled 0; the two conventions give the same AUC: ``auc(forget,
holdout)`` here equals open-unlearning's ``mia_*`` ``agg_value``.

Shapes: B sequences, T positions, V vocabulary. ``logits[b, t]`` scores ``labels[b, t]``
(the batch builder shifts); ``mask`` is float 0/1 on the scored tokens. Token
log-probs come from the model's forward pass (``models.outputs``) or, from logits,
``losses.token_logprobs``. open-unlearning leaves the last answer token (EOS) out of
Min-K% and Min-K%++ (``tokenwise_logprobs`` drops it) but keeps it in LOSS/ZLib/reference;
a driver reproduces that through ``mask``.
Empty rows (no masked token) give NaN for LOSS-type scores and 0 for Min-K scores, as
open-unlearning does.

The array scores are jittable (``k`` is static); ``auc`` and ``privleak`` are host-side
float64.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn.losses import token_logprobs


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    on = mask > 0
    # where(), not a product: a -inf log-prob at a masked position must not leak NaN.
    return jnp.sum(jnp.where(on, values, 0.0), axis=-1) / jnp.sum(on, axis=-1)


def loss_score(token_logp: jax.Array, mask: jax.Array) -> jax.Array:
    """LOSS attack (Yeom et al. 2018): ``-NLL/|y| = mean_t log p(y_t)``, ``[B, T] -> [B]``."""
    return _masked_mean(token_logp, mask)


def zlib_entropy(text: str) -> int:
    """Length in bytes of ``zlib.compress(text.encode("utf-8"))`` (default level)."""
    if not isinstance(text, str):
        raise ValueError(f"texts: expected str, got {type(text).__name__}")
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(token_logp: jax.Array, mask: jax.Array, texts: Sequence[str]) -> jax.Array:
    """ZLib attack (Carlini et al. 2021): ``(-NLL/|y|) / zlib_entropy(text)``, ``[B]``.

    ``texts[b]`` is the decoded target text of row b (open-unlearning decodes the
    label tokens with special tokens skipped). Not jittable (the strings), but cheap.
    """
    if len(texts) != token_logp.shape[0]:
        raise ValueError(f"texts: has {len(texts)} entries for {token_logp.shape[0]} rows")
    lengths = jnp.asarray([zlib_entropy(t) for t in texts], dtype=jnp.float32)
    return loss_score(token_logp, mask) / lengths


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k: the fraction of lowest tokens must be in (0, 1], got {k}")


def _lowest_k_mean(values: jax.Array, mask: jax.Array, k: float) -> jax.Array:
    """Mean of the ``max(1, int(n*k))`` lowest masked values per row, 0 for empty rows."""
    T = values.shape[-1]
    # Python's int(n * k) for every possible n, baked in as a constant: the same float64
    # rounding as open-unlearning, and still jittable.
    counts = jnp.asarray([max(1, int(n * k)) for n in range(T + 1)], dtype=jnp.int32)
    on = mask > 0
    n = jnp.sum(on, axis=-1)
    kk = counts[n]
    lowest = jnp.sort(jnp.where(on, values, jnp.inf), axis=-1)
    take = jnp.arange(T) < kk[:, None]
    total = jnp.sum(jnp.where(take, lowest, 0.0), axis=-1)
    return jnp.where(n > 0, total / kk, 0.0)


def min_k_score(token_logp: jax.Array, mask: jax.Array, *, k: float = 0.4) -> jax.Array:
    """Min-K% Prob (Shi et al. 2024): mean of the lowest ``k`` fraction of token log-probs.

    ``score_b = mean(lowest max(1, int(n_b k)) of log p(y_t))`` over the n_b masked
    tokens, ``[B, T] -> [B]``. ``k = 0.4`` as open-unlearning's TOFU/MUSE configs.
    """
    _check_k(k)
    return _lowest_k_mean(token_logp, mask, k)


def min_k_plus_plus_score(logits: jax.Array, labels: jax.Array, mask: jax.Array, *,
                          k: float = 0.4) -> jax.Array:
    """Min-K%++ (Zhang et al. 2024, eq. 3): Min-K% of vocabulary-standardised log-probs.

    ``z_t = (log p(y_t) - mu_t) / sigma_t`` with ``mu_t = E_{v~p_t}[log p_t(v)]`` and
    ``sigma_t^2 = E_{v~p_t}[(log p_t(v) - mu_t)^2]`` under the model's own next-token
    distribution ``p_t``; then the mean of the lowest ``max(1, int(n k))`` of z.
    ``sigma^2`` is clamped at 1e-6 as open-unlearning does; it computes the variance
    as ``E[log p^2] - mu^2``, equal in exact arithmetic to the centred form used here
    (which cancels less in float32).

    Args:
      logits: ``[B, T, V]``; labels: ``[B, T]`` int; mask: ``[B, T]`` 0/1.
    Returns:
      ``[B]`` scores, higher = more likely member.
    """
    _check_k(k)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    # p = 0 exactly where logp = -inf (masked vocabulary): 0 * -inf must count as 0.
    mu = jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)
    var = jnp.sum(jnp.where(p > 0, p * jnp.square(logp - mu[..., None]), 0.0), axis=-1)
    z = (token_logprobs(logits, labels) - mu) / jnp.sqrt(jnp.maximum(var, 1e-6))
    return _lowest_k_mean(z, mask, k)


def reference_score(token_logp: jax.Array, ref_token_logp: jax.Array,
                    mask: jax.Array) -> jax.Array:
    """Reference-model attack (Carlini et al. 2021): ``NLL_ref - NLL_target`` per token mean.

    ``[B, T], [B, T] -> [B]``; the negation of open-unlearning's ``target_loss -
    ref_loss``: a target that is more confident than the reference looks like a member.
    """
    return loss_score(token_logp, mask) - loss_score(ref_token_logp, mask)


def _scores(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array of scores, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name}: contains NaN (a sequence with no scored tokens?)")
    return a


def auc(member_scores, nonmember_scores) -> float:
    """ROC AUC of "member vs non-member": ``P(s_member > s_nonmember) + P(tie) / 2``.

    The Mann-Whitney U of the members divided by ``|members| |non-members|``;
    0.5 = the attack cannot tell them apart, 1 = it separates them perfectly.

    Args:
      member_scores: ``[M]`` scores of training members (e.g. the forget set).
      nonmember_scores: ``[N]`` scores of non-members (e.g. the holdout set).
    """
    m = _scores(member_scores, "member_scores")
    n = np.sort(_scores(nonmember_scores, "nonmember_scores"))
    below = np.searchsorted(n, m, side="left")
    ties = np.searchsorted(n, m, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (m.size * n.size))


def privleak(auc_value: float, auc_retain: float) -> float:
    """MUSE privacy leakage: ``((1 - AUC) - (1 - AUC_retain)) / (1 - AUC_retain) * 100``.

    ``auc_value`` is the unlearned model's forget-vs-holdout AUC, ``auc_retain`` the
    same for the model retrained without the forget set. MUSE reports AUC as
    ``1 - auc`` of this module (and open-unlearning's), hence the ``1 -``. Near 0 is
    good; negative = under-unlearned (members still stand out), positive =
    over-unlearned. open-unlearning adds 1e-10 to the denominator; we refuse
    ``auc_retain == 1`` instead.
    """
    for name, v in (("auc_value", auc_value), ("auc_retain", auc_retain)):
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}: an AUC must lie in [0, 1], got {v}")
    if float(auc_retain) == 1.0:
        raise ValueError("auc_retain: privleak is undefined when the retain model's AUC is 1")
    ref = 1.0 - float(auc_retain)
    return ((1.0 - float(auc_value)) - ref) / ref * 100.0
