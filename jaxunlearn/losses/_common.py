"""Input checks and numeric helpers shared by the loss modules (private)."""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp


class LossInputError(ValueError):
    """An argument of a loss has the wrong shape, dtype or value; the message names it."""


def _rank(name: str, x: jax.Array, ndim: int, axes: str) -> None:
    if x.ndim != ndim:
        raise LossInputError(f"{name} must have shape {axes} ({ndim} dims), got shape {tuple(x.shape)}")


def _same_shape(name: str, x: jax.Array, ref_name: str, ref: jax.Array) -> None:
    if tuple(x.shape) != tuple(ref.shape):
        raise LossInputError(
            f"{name} must have the same shape as {ref_name} {tuple(ref.shape)}, got {tuple(x.shape)}"
        )


def _number(name: str, value, *, strictly_positive: bool) -> None:
    """Validate a hyper-parameter when it is a Python number (traced values pass unchecked)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    bad = value <= 0 if strictly_positive else value < 0
    if bad or value != value or abs(value) == float("inf"):
        bound = "> 0" if strictly_positive else ">= 0"
        raise LossInputError(f"{name} must be a finite number {bound}, got {value!r}")


def _float(x: jax.Array) -> jax.Array:
    # float32 at least: bf16 has ~3 significant digits, so a bf16 log_softmax/logsumexp over
    # a 100k-token vocabulary loses the small log-prob differences unlearning relies on.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _token_inputs(logits, labels, mask=None):
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    _rank("logits", logits, 3, "[B, T, V]")
    _rank("labels", labels, 2, "[B, T]")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise LossInputError(f"labels must hold integer token ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(logits.shape[:2]):
        raise LossInputError(
            f"labels shape {tuple(labels.shape)} must equal logits' [B, T] {tuple(logits.shape[:2])}"
        )
    if mask is None:
        return logits, labels, None
    mask = jnp.asarray(mask)
    _same_shape("mask", mask, "labels", labels)
    return logits, labels, _float(mask)


def _mask_like(mask, x: jax.Array, what: str) -> jax.Array:
    """``mask`` checked to be ``[B, T]`` = ``x.shape[:2]``, as float32."""
    mask = jnp.asarray(mask)
    if tuple(mask.shape) != tuple(x.shape[:2]):
        raise LossInputError(
            f"mask shape {tuple(mask.shape)} must equal {what}' [B, T] {tuple(x.shape[:2])}"
        )
    return _float(mask)


def _masked_log_softmax(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """float32 log_softmax ``[B, T, V]`` with masked rows' logits replaced by zeros first."""
    logits = jnp.where(mask[..., None] != 0, _float(logits), 0.0)
    return jax.nn.log_softmax(logits, axis=-1)


def _gather(logp: jax.Array, labels: jax.Array) -> jax.Array:
    """``logp[b, t, labels[b, t]]`` ``[B, T]``; 0.0 where a label is outside ``[0, V)``."""
    vocab = logp.shape[-1]
    valid = (labels >= 0) & (labels < vocab)  # e.g. HF's -100 ignore index on padding
    picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(valid, picked, 0.0)


def _on_mask(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``values`` where ``mask != 0``, exactly 0 elsewhere (no NaN from masked garbage)."""
    return jnp.where(mask != 0, values, 0.0)


def _masked_token_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(mask * values) / max(sum(mask), 1)`` over ``[B, T]``; masked values never read."""
    total = jnp.sum(jnp.where(mask != 0, values * mask, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1.0)


def _log_sigmoid(x: jax.Array) -> jax.Array:
    # log(sigmoid(x)) computed as -softplus(-x): finite for |x| in the thousands, where
    # log(sigmoid(x)) would give log(0) = -inf and a NaN gradient.
    return jax.nn.log_sigmoid(x)
