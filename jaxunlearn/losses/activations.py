"""RMU's losses on a layer's activations (Li et al. 2024, "The WMDP Benchmark").

The scalar losses average as open-unlearning's ``compute_activation_loss``
(``src/trainer/unlearn/rmu.py``): per sequence over its masked positions, then over the
sequences, so a long answer weighs no more than a short one. Beside each are its
``*_per_sequence`` form (``[B]``, reduced exactly over micro-batches as row means by
``losses.mean_parts``) and ``*_per_token`` terms (``[B, T]``, 0 off the mask).

Axes: B batch, T positions, D hidden size.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxunlearn.losses._common import (LossInputError, _float, _mask_like, _number, _on_mask,
                                       _rank, _same_shape)

__all__ = ["rmu_control_vector", "rmu_forget", "rmu_forget_per_sequence",
           "rmu_forget_per_token", "rmu_retain", "rmu_retain_per_sequence",
           "rmu_retain_per_token"]


def rmu_control_vector(key: jax.Array, dim: int, scale: float) -> jax.Array:
    """RMU's fixed control vector ``c * u / ||u||`` with ``u ~ U[0, 1)^D``.

    Li et al. 2024, "The WMDP Benchmark", sec. 5 (steering coefficient ``c``). Drawn once
    per run from the run key and kept fixed.

    Returns:
      ``[D]`` float32 with L2 norm ``scale`` and non-negative entries.
    """
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
        raise LossInputError(f"dim must be a positive integer, got {dim!r}")
    _number("scale", scale, strictly_positive=True)
    u = jax.random.uniform(key, (int(dim),), dtype=jnp.float32)
    return scale * u / jnp.linalg.norm(u)


def _sq_error_per_token(activations, target, mask):
    """``mean_d (a - target)^2`` ``[B, T]``, 0 off the mask (masked activations never read)."""
    activations, target = jnp.asarray(activations), jnp.asarray(target)
    _rank("activations", activations, 3, "[B, T, D]")
    mask = _mask_like(mask, activations, "activations")
    keep = mask[..., None] != 0
    diff = jnp.where(keep, _float(activations), 0.0) - jnp.where(keep, _float(target), 0.0)
    return _on_mask(jnp.mean(jnp.square(diff), axis=-1), mask)


def rmu_forget_per_token(activations: jax.Array, control: jax.Array, mask: jax.Array) -> jax.Array:
    """``mean_d (a[b,t,d] - control[d])^2`` per position, ``[B, T]``: :func:`rmu_forget`'s terms."""
    activations, control = jnp.asarray(activations), jnp.asarray(control)
    _rank("activations", activations, 3, "[B, T, D]")
    if tuple(control.shape) != tuple(activations.shape[-1:]):
        raise LossInputError(
            f"control must have shape [D] = {tuple(activations.shape[-1:])}, got {tuple(control.shape)}"
        )
    target = jnp.broadcast_to(jax.lax.stop_gradient(control), activations.shape)
    return _sq_error_per_token(activations, target, mask)


def _per_sequence(per_token: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum_t mask * v / max(sum_t mask, 1)`` per row: ``[B, T] -> [B]`` (0 for an empty row)."""
    mask = _float(jnp.asarray(mask))
    return jnp.sum(per_token * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def _sequence_mean(per_sequence: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over the rows with at least one masked position (open-unlearning would divide
    an empty row by 0; padding rows of a fixed-size batch are left out instead)."""
    rows = (jnp.sum(jnp.asarray(mask) != 0, axis=-1) > 0).astype(per_sequence.dtype)
    return jnp.sum(per_sequence * rows) / jnp.maximum(jnp.sum(rows), 1.0)


def rmu_forget_per_sequence(activations: jax.Array, control: jax.Array,
                            mask: jax.Array) -> jax.Array:
    """``(1/|m_b|) sum_{t in m_b} mean_d (a[b,t,d] - control[d])^2``, ``[B]``."""
    return _per_sequence(rmu_forget_per_token(activations, control, mask), mask)


def rmu_forget(activations: jax.Array, control: jax.Array, mask: jax.Array) -> jax.Array:
    """RMU forget loss: ``mean_b (1/|m_b|) sum_{t in m_b} mean_d (a[b,t,d] - control[d])^2``.

    Li et al. 2024 (WMDP), eq. 1: steer the layer-l activations of forget tokens towards a
    scaled random direction; averaged per sequence, then over the sequences (rows with
    no masked position left out), as open-unlearning's ``compute_activation_loss``.

    Args:
      activations: ``[B, T, D]`` trained model, layer l; control: ``[D]`` (:func:`rmu_control_vector`);
      mask: ``[B, T]``.
    Returns:
      scalar float32.
    """
    return _sequence_mean(rmu_forget_per_sequence(activations, control, mask), mask)


def rmu_retain_per_token(activations: jax.Array, ref_activations: jax.Array,
                         mask: jax.Array) -> jax.Array:
    """``mean_d (a - a_frozen)^2`` per position, ``[B, T]``: :func:`rmu_retain`'s terms."""
    activations, ref = jnp.asarray(activations), jnp.asarray(ref_activations)
    _same_shape("ref_activations", ref, "activations", activations)
    return _sq_error_per_token(activations, jax.lax.stop_gradient(ref), mask)


def rmu_retain_per_sequence(activations: jax.Array, ref_activations: jax.Array,
                            mask: jax.Array) -> jax.Array:
    """``(1/|m_b|) sum_{t in m_b} mean_d (a - a_frozen)^2``, ``[B]``."""
    return _per_sequence(rmu_retain_per_token(activations, ref_activations, mask), mask)


def rmu_retain(activations: jax.Array, ref_activations: jax.Array, mask: jax.Array) -> jax.Array:
    """RMU retain loss: ``mean_b (1/|m_b|) sum_{t in m_b} mean_d (a - a_frozen)^2`` (Li et al.
    2024, eq. 2), per sequence then over the sequences, as :func:`rmu_forget`.

    Args:
      activations: ``[B, T, D]`` trained model; ref_activations: ``[B, T, D]`` frozen model
      (stop-gradient'ed); mask: ``[B, T]``.
    Returns:
      scalar float32.
    """
    return _sequence_mean(rmu_retain_per_sequence(activations, ref_activations, mask), mask)
