"""Weighted means, kept as numerator and denominator so that partial batches combine exactly.

A mean over a batch split into micro-batches is NOT the mean of the micro-batch means
unless every micro-batch has the same weight (token count, number of sequences, sum
of memorisation weights): ``(s1 + s2) / (c1 + c2) != (s1/c1 + s2/c2) / 2``. Objectives
therefore hand the step :class:`Mean` parts ``(sum_i w_i l_i, sum_i w_i)``; the step adds
the parts over micro-batches and divides once (``train.step``), as MaxText and the
fixed ``transformers`` Trainer do.

Axes: B batch, T positions.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxunlearn.losses._common import _float, _number, _rank, _same_shape

__all__ = ["Mean", "mean_parts", "weighted", "EPS"]

EPS = 1e-8  # guard of every division by a sum of weights (0 / EPS = 0 for empty batches)


class Mean(NamedTuple):
    """A weighted mean as its two sums: ``value() = total / max(count, EPS)``.

    Attributes:
      total: ``sum_i w_i l_i`` (scalar; depends on the parameters).
      count: ``sum_i w_i`` (scalar; the weights never depend on the parameters).
    Parts of disjoint batches add: ``Mean(t1 + t2, c1 + c2)`` is the mean of their union.
    """

    total: jax.Array
    count: jax.Array

    def value(self) -> jax.Array:
        return self.total / jnp.maximum(self.count, EPS)


def mean_parts(values: jax.Array, weights: jax.Array) -> Mean:
    """``Mean(sum w * values, sum w)`` over all entries of ``[B]`` or ``[B, T]`` arrays.

    An entry with weight exactly 0 adds exactly nothing to the value or the gradient,
    even when its value is NaN/inf; weights are stop-gradient'ed (they choose what
    counts, never what is learnt).

    Args:
      values: ``[B]`` per-sequence or ``[B, T]`` per-token losses.
      weights: same shape, non-negative (a 0/1 loss mask, memorisation weights, or both).
    Returns:
      :class:`Mean` of float32 scalars.
    """
    values, w = _float(jnp.asarray(values)), _float(jnp.asarray(weights))
    _same_shape("weights", w, "values", values)
    w = jax.lax.stop_gradient(w)
    return Mean(jnp.sum(jnp.where(w != 0, w * values, 0.0)), jnp.sum(w))


def weighted(per_sequence_loss: jax.Array, weights: jax.Array, *, eps: float = 1e-8) -> jax.Array:
    """Weighted mean of per-sequence losses ``sum_b w_b l_b / max(sum_b w_b, eps)``.

    A sequence with weight exactly 0 gets exactly zero gradient (and even a NaN/inf loss
    there is never read), which is what memorisation weighting and SGA-style selection
    build on. Weights are stop-gradient'ed: they choose what to forget, not what to learn.

    Args:
      per_sequence_loss: ``[B]``; weights: ``[B]`` non-negative; eps: > 0 guard for all-zero weights.
    Returns:
      scalar float32 (0.0 when all weights are 0).
    """
    _number("eps", eps, strictly_positive=True)
    loss = _float(jnp.asarray(per_sequence_loss))
    _rank("per_sequence_loss", loss, 1, "[B]")
    parts = mean_parts(loss, weights)
    return parts.total / jnp.maximum(parts.count, eps)
