"""Losses over the model's next-token distributions: log-probs, NLL, KL terms, UNDIAL, WGA.

Each token-mean loss ``L = sum_{b,t} mask * l[b,t] / max(sum mask, 1)`` has a
``*_per_token`` form beside it returning ``l`` ``[B, T]`` (exactly 0 where the mask is
0), as optax returns per-example losses: objectives reduce those as ``(sum, count)``
(``losses.mean_parts``) so that micro-batches of different token counts combine
exactly. The scalar form is the mean of the per-token form, nothing else.

Axes: B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxunlearn.losses._common import (_float, _gather, _masked_log_softmax,
                                       _masked_token_mean, _number, _on_mask, _rank,
                                       _same_shape, _token_inputs, _mask_like)

__all__ = ["token_logprobs", "sequence_token_counts", "sequence_logprob", "sequence_mean_nll",
           "token_nll", "gradient_ascent", "forward_kl", "forward_kl_per_token", "reverse_kl",
           "reverse_kl_per_token", "rkld_teacher", "undial", "undial_per_token", "wga",
           "wga_per_token"]


# ---------------------------------------------------------------------------- token log-probs


def token_logprobs(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Log-probability of every label token.

    ``out[b, t] = log_softmax(logits[b, t])[labels[b, t]]``; labels outside ``[0, V)``
    (such as HF's ``-100``) give 0.0. No mask: callers mask the result.

    Args:
      logits: ``[B, T, V]`` any float dtype.
      labels: ``[B, T]`` int token ids.
    Returns:
      ``[B, T]`` float32.
    """
    logits, labels, _ = _token_inputs(logits, labels)
    return _gather(jax.nn.log_softmax(_float(logits), axis=-1), labels)


def sequence_token_counts(mask: jax.Array) -> jax.Array:
    """Number of loss tokens per sequence, ``|y_b| = sum_t mask[b, t]``: ``[B, T] -> [B]`` float32."""
    mask = jnp.asarray(mask)
    _rank("mask", mask, 2, "[B, T]")
    return jnp.sum(_float(mask), axis=-1)


def sequence_logprob(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-sequence log-probability ``log p(y_b | x_b) = sum_t mask[b,t] * log p(labels[b,t])``.

    Args:
      logits: ``[B, T, V]``; labels: ``[B, T]`` int; mask: ``[B, T]`` float 0/1.
    Returns:
      ``[B]`` float32; 0.0 for a sequence with an all-zero mask.
    """
    logits, labels, mask = _token_inputs(logits, labels, mask)
    token_lp = _gather(_masked_log_softmax(logits, mask), labels)
    return jnp.sum(jnp.where(mask != 0, token_lp * mask, 0.0), axis=-1)


def sequence_mean_nll(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Per-sequence average NLL ``-log p(y_b | x_b) / max(|y_b|, 1)``: ``[B, T, V] -> [B]``.

    Used to weight or select sequences (e.g. by how well each one is memorised).
    """
    return -sequence_logprob(logits, labels, mask) / jnp.maximum(sequence_token_counts(mask), 1.0)


def token_nll(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood over all masked tokens of the batch (standard LM loss).

    ``NLL = -sum_{b,t} mask * log p(labels) / max(sum_{b,t} mask, 1)``. Its per-token form
    is ``-mask * token_logprobs`` (``models.outputs.ModelOutput.label_logprobs`` from the
    fused LM head).

    Args:
      logits: ``[B, T, V]``; labels: ``[B, T]`` int; mask: ``[B, T]`` float 0/1.
    Returns:
      scalar float32; 0.0 when the mask is all zeros.
    """
    logits, labels, mask = _token_inputs(logits, labels, mask)
    return -_masked_token_mean(_gather(_masked_log_softmax(logits, mask), labels), mask)


def gradient_ascent(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
    """Gradient ascent on the forget set: ``-token_nll``; minimising it lowers ``log p(forget)``.

    Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in LMs". Shapes as
    in :func:`token_nll`; returns a scalar float32.
    """
    return -token_nll(logits, labels, mask)


# ---------------------------------------------------------------------------- distribution matching


def _kl_inputs(logits, other, other_name, mask):
    logits, other = jnp.asarray(logits), jnp.asarray(other)
    _rank("logits", logits, 3, "[B, T, V]")
    _same_shape(other_name, other, "logits", logits)
    mask = _mask_like(mask, logits, "logits")
    other = jax.lax.stop_gradient(other)
    return _masked_log_softmax(logits, mask), _masked_log_softmax(other, mask), mask


def forward_kl_per_token(logits: jax.Array, ref_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """``KL(ref || model)`` at every position: ``[B, T, V], [B, T, V], [B, T] -> [B, T]``.

    ``sum_v p_ref (log p_ref - log p_model)``, exactly 0 where ``mask`` is 0; the terms of
    :func:`forward_kl`.
    """
    logp, ref_logp, mask = _kl_inputs(logits, ref_logits, "ref_logits", mask)
    return _on_mask(jnp.sum(jnp.exp(ref_logp) * (ref_logp - logp), axis=-1), mask)


def forward_kl(logits: jax.Array, ref_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked tokens of ``KL(ref || model) = sum_v p_ref (log p_ref - log p_model)``.

    The retain-set regulariser of grad_diff/NPO-KL (Maini et al. 2024). ``ref_logits`` is
    stop-gradient'ed.

    Args:
      logits: ``[B, T, V]`` trained model; ref_logits: ``[B, T, V]`` frozen model; mask ``[B, T]``.
    Returns:
      scalar float32, >= 0; 0 for identical distributions.
    """
    per_token = forward_kl_per_token(logits, ref_logits, mask)
    return _masked_token_mean(per_token, _float(jnp.asarray(mask)))


def reverse_kl_per_token(logits: jax.Array, teacher_logits: jax.Array,
                         mask: jax.Array) -> jax.Array:
    """``KL(model || teacher)`` at every position, ``[B, T]``, 0 off the mask: the terms of
    :func:`reverse_kl`."""
    logp, teacher_logp, mask = _kl_inputs(logits, teacher_logits, "teacher_logits", mask)
    return _on_mask(jnp.sum(jnp.exp(logp) * (logp - teacher_logp), axis=-1), mask)


def reverse_kl(logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked tokens of ``KL(model || teacher) = sum_v p (log p - log p_teacher)``.

    Mode-seeking distillation towards a teacher, as RKLD minimises (Wang et al. 2024,
    "RKLD", eq. 4). ``teacher_logits`` is stop-gradient'ed.

    Args:
      logits: ``[B, T, V]`` trained model; teacher_logits: ``[B, T, V]``; mask ``[B, T]``.
    Returns:
      scalar float32, >= 0; 0 for identical distributions.
    """
    per_token = reverse_kl_per_token(logits, teacher_logits, mask)
    return _masked_token_mean(per_token, _float(jnp.asarray(mask)))


def rkld_teacher(logits: jax.Array, strengthened_logits: jax.Array, alpha: float) -> jax.Array:
    """RKLD's unlearning teacher: ``logits - alpha * relu(strengthened_logits - logits)``.

    Tokens a model further fine-tuned on the forget set (``strengthened_logits``) scores
    higher than the original (``logits``) are pushed down; all others are left unchanged.
    Wang et al. 2024, "RKLD", eq. 3, after Eldan & Russinovich 2023, "Who's Harry Potter?".

    Args:
      logits: ``[B, T, V]`` original model; strengthened_logits: ``[B, T, V]``; alpha >= 0.
    Returns:
      ``[B, T, V]`` float32 teacher logits (feed to :func:`reverse_kl`).
    """
    _number("alpha", alpha, strictly_positive=False)
    logits, strengthened = _float(jnp.asarray(logits)), _float(jnp.asarray(strengthened_logits))
    _rank("logits", logits, 3, "[B, T, V]")
    _same_shape("strengthened_logits", strengthened, "logits", logits)
    return logits - alpha * jax.nn.relu(strengthened - logits)


# ---------------------------------------------------------------------------- UNDIAL, WGA


def undial_per_token(logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array,
                     mask: jax.Array, beta: float) -> jax.Array:
    """UNDIAL's cross-entropy at every position, ``[B, T]``, 0 off the mask: :func:`undial`'s terms."""
    _number("beta", beta, strictly_positive=False)
    logits, labels, mask = _token_inputs(logits, labels, mask)
    teacher = jnp.asarray(teacher_logits)
    _same_shape("teacher_logits", teacher, "logits", logits)
    teacher = _float(jax.lax.stop_gradient(teacher))
    adjusted = teacher - beta * jax.nn.one_hot(labels, logits.shape[-1], dtype=teacher.dtype)
    target = jnp.exp(_masked_log_softmax(adjusted, mask))
    return _on_mask(-jnp.sum(target * _masked_log_softmax(logits, mask), axis=-1), mask)


def undial(
    logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array, mask: jax.Array, beta: float
) -> jax.Array:
    """UNDIAL self-distillation towards a teacher with the label logit lowered (Dong et al. 2024, eq. 2).

    ``q = softmax(sg(teacher_logits) - beta * onehot(label))``,
    ``L = mean over masked tokens of -sum_v q_v log softmax(logits)_v``.

    Differs from open-unlearning, which averages over every position including padding.

    Args:
      logits: ``[B, T, V]`` trained model; teacher_logits: ``[B, T, V]`` frozen original model;
      labels: ``[B, T]`` int; mask: ``[B, T]``; beta: >= 0 logit reduction of the label token.
    Returns:
      scalar float32.
    """
    per_token = undial_per_token(logits, teacher_logits, labels, mask, beta)
    return _masked_token_mean(per_token, _float(jnp.asarray(mask)))


def wga_per_token(logits: jax.Array, labels: jax.Array, mask: jax.Array, beta: float) -> jax.Array:
    """WGA's ``-sg(p(label)^beta) * CE`` at every position, ``[B, T]``, 0 off the mask."""
    _number("beta", beta, strictly_positive=False)
    logits, labels, mask = _token_inputs(logits, labels, mask)
    token_lp = _gather(_masked_log_softmax(logits, mask), labels)
    weight = jax.lax.stop_gradient(jnp.exp(beta * token_lp))  # p^beta, without a 0**0 at beta=0
    return _on_mask(weight * token_lp, mask)


def wga(logits: jax.Array, labels: jax.Array, mask: jax.Array, beta: float) -> jax.Array:
    """Weighted gradient ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives", sec. 4).

    ``CE = -log p(label)``, ``w = sg(exp(-CE))^beta = sg(p(label)^beta)``,
    ``L = -mean over masked tokens of w * CE``.

    Convention (as open-unlearning's ``compute_wga_loss``): the weight is the token's own
    probability raised to ``beta``, stop-gradient'ed, and the mean is over masked tokens.
    Tokens already forgotten (small p) get small weight. ``beta = 0`` is gradient ascent.

    Args:
      logits: ``[B, T, V]``; labels: ``[B, T]`` int; mask: ``[B, T]``; beta: >= 0.
    Returns:
      scalar float32.
    """
    per_token = wga_per_token(logits, labels, mask, beta)
    return _masked_token_mean(per_token, _float(jnp.asarray(mask)))
