"""Losses over per-sequence log-probabilities: NPO, SimNPO, DPO.

Each takes ``[B]`` per-sequence log-probs (``losses.sequence_logprob``) and returns the
mean over the batch; its ``*_per_sequence`` form beside it returns the ``[B]`` terms
(as optax returns per-example losses), which objectives weight and reduce as
``(sum, count)`` (``losses.mean_parts``) so micro-batches combine exactly.

Axes: B batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxunlearn.losses._common import _float, _log_sigmoid, _number, _rank, _same_shape

__all__ = ["npo", "npo_per_sequence", "simnpo", "simnpo_per_sequence", "dpo",
           "dpo_per_sequence"]


def npo_per_sequence(logp: jax.Array, ref_logp: jax.Array, beta: float = 0.1) -> jax.Array:
    """``-(2/beta) * log_sigmoid(-beta * (logp_b - ref_logp_b))`` per sequence: ``[B], [B] -> [B]``.

    The terms of :func:`npo` (its mean); shapes, convention and stop-gradient as there.
    """
    _number("beta", beta, strictly_positive=True)
    logp, ref_logp = _float(jnp.asarray(logp)), _float(jnp.asarray(ref_logp))
    _rank("logp", logp, 1, "[B]")
    _same_shape("ref_logp", ref_logp, "logp", logp)
    log_ratio = logp - jax.lax.stop_gradient(ref_logp)
    return -(2.0 / beta) * _log_sigmoid(-beta * log_ratio)


def npo(logp: jax.Array, ref_logp: jax.Array, beta: float = 0.1) -> jax.Array:
    """Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization", eq. 3).

    ``L = -(2/beta) * mean_b log_sigmoid(-beta * (logp_b - ref_logp_b))``.

    Convention: the ``2/beta`` factor of the paper is kept (so ``L -> gradient ascent`` as
    ``beta -> 0``, and ``L = (2/beta) log 2`` when ``logp == ref_logp``); some
    implementations drop it, which silently rescales the learning rate.

    Args:
      logp: ``[B]`` per-sequence forget log-probs of the trained model (:func:`sequence_logprob`).
      ref_logp: ``[B]`` the same under the frozen reference model (stop-gradient'ed).
      beta: inverse temperature, > 0.
    Returns:
      scalar float32; ``dL/dlogp > 0``, so descent pushes ``logp`` down.
    """
    return jnp.mean(npo_per_sequence(logp, ref_logp, beta))


def simnpo_per_sequence(logp: jax.Array, num_tokens: jax.Array, beta: float = 4.5,
                        delta: float = 0.0) -> jax.Array:
    """``-(2/beta) * log_sigmoid(beta * (-logp_b / |y_b| - delta))`` per sequence: ``[B] -> [B]``.

    The terms of :func:`simnpo` (its mean); shapes and conventions as there.
    """
    _number("beta", beta, strictly_positive=True)
    logp, num_tokens = _float(jnp.asarray(logp)), _float(jnp.asarray(num_tokens))
    _rank("logp", logp, 1, "[B]")
    _same_shape("num_tokens", num_tokens, "logp", logp)
    mean_nll = -logp / jnp.maximum(jax.lax.stop_gradient(num_tokens), 1.0)
    return -(2.0 / beta) * _log_sigmoid(beta * (mean_nll - delta))


def simnpo(logp: jax.Array, num_tokens: jax.Array, beta: float = 4.5, delta: float = 0.0) -> jax.Array:
    """SimNPO, reference-free and length-normalised NPO (Fan et al. 2024, "Simplicity Prevails", eq. 4).

    ``L = -(2/beta) * mean_b log_sigmoid(beta * (-logp_b / |y_b| - delta))``.

    Convention: the paper's margin ``gamma`` is ``beta * delta`` here (``delta`` is a margin
    on the per-token NLL, as in open-unlearning). ``|y_b|`` is guarded by ``max(|y_b|, 1)``.

    Args:
      logp: ``[B]`` per-sequence forget log-probs; num_tokens: ``[B]`` loss tokens per sequence
        (:func:`sequence_token_counts`); beta > 0; delta: margin.
    Returns:
      scalar float32.
    """
    return jnp.mean(simnpo_per_sequence(logp, num_tokens, beta, delta))


def dpo_per_sequence(logp_win: jax.Array, logp_lose: jax.Array, ref_win: jax.Array,
                     ref_lose: jax.Array, beta: float = 0.1) -> jax.Array:
    """``-(2/beta) * log_sigmoid(beta * ((logp_win - ref_win) - (logp_lose - ref_lose)))``, ``[B]``.

    The terms of :func:`dpo` (its mean); shapes, convention and stop-gradients as there.
    """
    _number("beta", beta, strictly_positive=True)
    arrays = [_float(jnp.asarray(a)) for a in (logp_win, logp_lose, ref_win, ref_lose)]
    logp_win, logp_lose, ref_win, ref_lose = arrays
    _rank("logp_win", logp_win, 1, "[B]")
    for name, a in (("logp_lose", logp_lose), ("ref_win", ref_win), ("ref_lose", ref_lose)):
        _same_shape(name, a, "logp_win", logp_win)
    sg = jax.lax.stop_gradient
    margin = (logp_win - sg(ref_win)) - (logp_lose - sg(ref_lose))
    return -(2.0 / beta) * _log_sigmoid(beta * margin)


def dpo(
    logp_win: jax.Array,
    logp_lose: jax.Array,
    ref_win: jax.Array,
    ref_lose: jax.Array,
    beta: float = 0.1,
) -> jax.Array:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7) with the NPO-style ``2/beta`` scale.

    ``L = -(2/beta) * mean_b log_sigmoid(beta * ((logp_win - ref_win) - (logp_lose - ref_lose)))``.

    For IdkDPO (Maini et al. 2024, TOFU) the winner is an "I don't know" answer and the loser
    the true forget answer. The ``2/beta`` factor follows open-unlearning (the DPO paper has
    1); at equal margins ``L = (2/beta) log 2``.

    Args:
      logp_win, logp_lose: ``[B]`` per-sequence log-probs of the trained model.
      ref_win, ref_lose: ``[B]`` the same under the frozen reference (stop-gradient'ed).
      beta: > 0.
    Returns:
      scalar float32.
    """
    return jnp.mean(dpo_per_sequence(logp_win, logp_lose, ref_win, ref_lose, beta))
