"""Unlearning objectives as pure functions of arrays.

Every function here takes arrays the training step has already computed (logits,
per-sequence log-probs, hidden activations) and returns a loss; none calls a model.

Conventions (see DESIGN.md):
  * ``logits[b, t]`` scores ``labels[b, t]``; the batch builder shifted them, losses never do.
  * ``mask`` is float 0/1 ``[B, T]``: 1 on answer tokens, 0 on prompt and padding.
  * A per-sequence log-prob is the SUM of token log-probs over the mask; a token loss is
    the mean over all masked tokens of the batch (divided by ``max(count, 1)``).
  * Positions with mask 0 contribute nothing to the value *or* the gradient, even when
    their logits are garbage (huge, inf, NaN): they are replaced by zeros before any
    arithmetic, so no NaN can leak through a ``0 * NaN`` product or its backward pass.
  * Reference / teacher inputs are wrapped in ``jax.lax.stop_gradient``: they are
    targets from a frozen model, never something to optimise.
  * Results are float32 (float64 stays float64) whatever the input dtype.

Axes: B batch, T positions, V vocabulary, D hidden size.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

__all__ = [
    "LossInputError",
    "token_logprobs",
    "sequence_token_counts",
    "sequence_logprob",
    "sequence_mean_nll",
    "token_nll",
    "gradient_ascent",
    "npo",
    "simnpo",
    "dpo",
    "forward_kl",
    "reverse_kl",
    "rkld_teacher",
    "weighted",
    "rmu_control_vector",
    "rmu_forget",
    "rmu_retain",
    "undial",
    "wga",
]


class LossInputError(ValueError):
    """An argument of a loss has the wrong shape, dtype or value; the message names it."""


# ---------------------------------------------------------------------------- checks


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


# ---------------------------------------------------------------------------- helpers


def _float(x: jax.Array) -> jax.Array:
    # float32 at least: bf16 has ~3 significant digits, so a bf16 log_softmax/logsumexp over
    # a 100k-token vocabulary loses the small log-prob differences unlearning relies on.
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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


def _masked_token_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """``sum(mask * values) / max(sum(mask), 1)`` over ``[B, T]``; masked values never read."""
    total = jnp.sum(jnp.where(mask != 0, values * mask, 0.0))
    return total / jnp.maximum(jnp.sum(mask), 1.0)


def _log_sigmoid(x: jax.Array) -> jax.Array:
    # log(sigmoid(x)) computed as -softplus(-x): finite for |x| in the thousands, where
    # log(sigmoid(x)) would give log(0) = -inf and a NaN gradient.
    return jax.nn.log_sigmoid(x)


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

    ``NLL = -sum_{b,t} mask * log p(labels) / max(sum_{b,t} mask, 1)``.

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


# ---------------------------------------------------------------------------- preference losses


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
    _number("beta", beta, strictly_positive=True)
    logp, ref_logp = _float(jnp.asarray(logp)), _float(jnp.asarray(ref_logp))
    _rank("logp", logp, 1, "[B]")
    _same_shape("ref_logp", ref_logp, "logp", logp)
    log_ratio = logp - jax.lax.stop_gradient(ref_logp)
    return -(2.0 / beta) * jnp.mean(_log_sigmoid(-beta * log_ratio))


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
    _number("beta", beta, strictly_positive=True)
    logp, num_tokens = _float(jnp.asarray(logp)), _float(jnp.asarray(num_tokens))
    _rank("logp", logp, 1, "[B]")
    _same_shape("num_tokens", num_tokens, "logp", logp)
    mean_nll = -logp / jnp.maximum(jax.lax.stop_gradient(num_tokens), 1.0)
    return -(2.0 / beta) * jnp.mean(_log_sigmoid(beta * (mean_nll - delta)))


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
    _number("beta", beta, strictly_positive=True)
    arrays = [_float(jnp.asarray(a)) for a in (logp_win, logp_lose, ref_win, ref_lose)]
    logp_win, logp_lose, ref_win, ref_lose = arrays
    _rank("logp_win", logp_win, 1, "[B]")
    for name, a in (("logp_lose", logp_lose), ("ref_win", ref_win), ("ref_lose", ref_lose)):
        _same_shape(name, a, "logp_win", logp_win)
    sg = jax.lax.stop_gradient
    margin = (logp_win - sg(ref_win)) - (logp_lose - sg(ref_lose))
    return -(2.0 / beta) * jnp.mean(_log_sigmoid(beta * margin))


# ---------------------------------------------------------------------------- distribution matching


def _kl_inputs(logits, other, other_name, mask):
    logits, other, mask = jnp.asarray(logits), jnp.asarray(other), jnp.asarray(mask)
    _rank("logits", logits, 3, "[B, T, V]")
    _same_shape(other_name, other, "logits", logits)
    if tuple(mask.shape) != tuple(logits.shape[:2]):
        raise LossInputError(
            f"mask shape {tuple(mask.shape)} must equal logits' [B, T] {tuple(logits.shape[:2])}"
        )
    mask = _float(mask)
    return _masked_log_softmax(logits, mask), _masked_log_softmax(jax.lax.stop_gradient(other), mask), mask


def forward_kl(logits: jax.Array, ref_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked tokens of ``KL(ref || model) = sum_v p_ref (log p_ref - log p_model)``.

    The retain-set regulariser of grad_diff/NPO-KL (Maini et al. 2024). ``ref_logits`` is
    stop-gradient'ed.

    Args:
      logits: ``[B, T, V]`` trained model; ref_logits: ``[B, T, V]`` frozen model; mask ``[B, T]``.
    Returns:
      scalar float32, >= 0; 0 for identical distributions.
    """
    logp, ref_logp, mask = _kl_inputs(logits, ref_logits, "ref_logits", mask)
    kl = jnp.sum(jnp.exp(ref_logp) * (ref_logp - logp), axis=-1)
    return _masked_token_mean(kl, mask)


def reverse_kl(logits: jax.Array, teacher_logits: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over masked tokens of ``KL(model || teacher) = sum_v p (log p - log p_teacher)``.

    Mode-seeking distillation towards a teacher, as RKLD minimises (Wang et al. 2024,
    "RKLD", eq. 4). ``teacher_logits`` is stop-gradient'ed.

    Args:
      logits: ``[B, T, V]`` trained model; teacher_logits: ``[B, T, V]``; mask ``[B, T]``.
    Returns:
      scalar float32, >= 0; 0 for identical distributions.
    """
    logp, teacher_logp, mask = _kl_inputs(logits, teacher_logits, "teacher_logits", mask)
    kl = jnp.sum(jnp.exp(logp) * (logp - teacher_logp), axis=-1)
    return _masked_token_mean(kl, mask)


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


# ---------------------------------------------------------------------------- weighting


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
    loss, w = _float(jnp.asarray(per_sequence_loss)), _float(jnp.asarray(weights))
    _rank("per_sequence_loss", loss, 1, "[B]")
    _same_shape("weights", w, "per_sequence_loss", loss)
    w = jax.lax.stop_gradient(w)
    total = jnp.sum(jnp.where(w != 0, w * loss, 0.0))
    return total / jnp.maximum(jnp.sum(w), eps)


# ---------------------------------------------------------------------------- RMU


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


def _activation_sq_error(activations, target, mask):
    activations, target, mask = jnp.asarray(activations), jnp.asarray(target), jnp.asarray(mask)
    _rank("activations", activations, 3, "[B, T, D]")
    if tuple(mask.shape) != tuple(activations.shape[:2]):
        raise LossInputError(
            f"mask shape {tuple(mask.shape)} must equal activations' [B, T] {tuple(activations.shape[:2])}"
        )
    mask = _float(mask)
    keep = mask[..., None] != 0
    diff = jnp.where(keep, _float(activations), 0.0) - jnp.where(keep, _float(target), 0.0)
    return _masked_token_mean(jnp.mean(jnp.square(diff), axis=-1), mask)


def rmu_forget(activations: jax.Array, control: jax.Array, mask: jax.Array) -> jax.Array:
    """RMU forget loss: ``mean over masked tokens of mean_d (a[b,t,d] - control[d])^2``.

    Li et al. 2024 (WMDP), eq. 1: steer the layer-l activations of forget tokens towards a
    scaled random direction. The paper averages over all positions; here padding is masked.

    Args:
      activations: ``[B, T, D]`` trained model, layer l; control: ``[D]`` (:func:`rmu_control_vector`);
      mask: ``[B, T]``.
    Returns:
      scalar float32.
    """
    activations, control = jnp.asarray(activations), jnp.asarray(control)
    _rank("activations", activations, 3, "[B, T, D]")
    if tuple(control.shape) != tuple(activations.shape[-1:]):
        raise LossInputError(
            f"control must have shape [D] = {tuple(activations.shape[-1:])}, got {tuple(control.shape)}"
        )
    target = jnp.broadcast_to(jax.lax.stop_gradient(control), activations.shape)
    return _activation_sq_error(activations, target, mask)


def rmu_retain(activations: jax.Array, ref_activations: jax.Array, mask: jax.Array) -> jax.Array:
    """RMU retain loss: ``mean over masked tokens of mean_d (a - a_frozen)^2`` (Li et al. 2024, eq. 2).

    Args:
      activations: ``[B, T, D]`` trained model; ref_activations: ``[B, T, D]`` frozen model
      (stop-gradient'ed); mask: ``[B, T]``.
    Returns:
      scalar float32.
    """
    activations, ref = jnp.asarray(activations), jnp.asarray(ref_activations)
    _same_shape("ref_activations", ref, "activations", activations)
    return _activation_sq_error(activations, jax.lax.stop_gradient(ref), mask)


# ---------------------------------------------------------------------------- UNDIAL, WGA


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
    _number("beta", beta, strictly_positive=False)
    logits, labels, mask = _token_inputs(logits, labels, mask)
    teacher = jnp.asarray(teacher_logits)
    _same_shape("teacher_logits", teacher, "logits", logits)
    teacher = _float(jax.lax.stop_gradient(teacher))
    adjusted = teacher - beta * jax.nn.one_hot(labels, logits.shape[-1], dtype=teacher.dtype)
    target = jnp.exp(_masked_log_softmax(adjusted, mask))
    cross_entropy = -jnp.sum(target * _masked_log_softmax(logits, mask), axis=-1)
    return _masked_token_mean(cross_entropy, mask)


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
    _number("beta", beta, strictly_positive=False)
    logits, labels, mask = _token_inputs(logits, labels, mask)
    token_lp = _gather(_masked_log_softmax(logits, mask), labels)
    cross_entropy = -token_lp
    weight = jax.lax.stop_gradient(jnp.exp(beta * token_lp))  # p^beta, without a 0**0 at beta=0
    return -_masked_token_mean(weight * cross_entropy, mask)
