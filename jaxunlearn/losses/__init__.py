"""Unlearning objectives as pure functions of arrays.

Every function here takes arrays the training step has already computed (logits,
per-sequence log-probs, hidden activations) and returns a loss; none calls a model.

Conventions (see DESIGN.md):
  * ``logits[b, t]`` scores ``labels[b, t]``; the batch builder shifted them, losses never do.
  * ``mask`` is float 0/1 ``[B, T]``: 1 on answer tokens, 0 on prompt and padding.
  * A per-sequence log-prob is the SUM of token log-probs over the mask; a token loss is
    the mean over all masked tokens of the batch (divided by ``max(count, 1)``).
  * Each batch-mean loss has a per-example form beside it (``*_per_sequence`` ``[B]``,
    ``*_per_token`` ``[B, T]``) whose mean it is; objectives reduce those as
    ``(sum, count)`` (:func:`mean_parts`, :class:`Mean`) so that the training step can add
    micro-batches and divide once: ``grad_accum`` then never changes a result.
  * Positions with mask 0 contribute nothing to the value *or* the gradient, even when
    their logits are garbage (huge, inf, NaN): they are replaced by zeros before any
    arithmetic, so no NaN can leak through a ``0 * NaN`` product or its backward pass.
  * Reference / teacher inputs are wrapped in ``jax.lax.stop_gradient``: they are
    targets from a frozen model, never something to optimise.
  * Results are float32 (float64 stays float64) whatever the input dtype.

Modules: ``tokens`` (log-probs, NLL, KL terms, UNDIAL, WGA), ``sequences`` (NPO, SimNPO,
DPO), ``activations`` (RMU), ``reduce`` (weighted means as sums and counts).

Axes: B batch, T positions, V vocabulary, D hidden size.
"""

from jaxunlearn.losses._common import LossInputError
from jaxunlearn.losses.activations import (rmu_control_vector, rmu_forget,
                                           rmu_forget_per_sequence, rmu_forget_per_token,
                                           rmu_retain, rmu_retain_per_sequence,
                                           rmu_retain_per_token)
from jaxunlearn.losses.reduce import EPS, Mean, mean_parts, weighted
from jaxunlearn.losses.sequences import (dpo, dpo_per_sequence, npo, npo_per_sequence, simnpo,
                                         simnpo_per_sequence)
from jaxunlearn.losses.tokens import (forward_kl, forward_kl_per_token, gradient_ascent,
                                      reverse_kl, reverse_kl_per_token, rkld_teacher,
                                      sequence_logprob, sequence_mean_nll, sequence_token_counts,
                                      token_logprobs, token_nll, undial, undial_per_token, wga,
                                      wga_per_token)

__all__ = [
    "LossInputError",
    "token_logprobs",
    "sequence_token_counts",
    "sequence_logprob",
    "sequence_mean_nll",
    "token_nll",
    "gradient_ascent",
    "npo",
    "npo_per_sequence",
    "simnpo",
    "simnpo_per_sequence",
    "dpo",
    "dpo_per_sequence",
    "forward_kl",
    "forward_kl_per_token",
    "reverse_kl",
    "reverse_kl_per_token",
    "rkld_teacher",
    "weighted",
    "Mean",
    "mean_parts",
    "EPS",
    "rmu_control_vector",
    "rmu_forget",
    "rmu_forget_per_sequence",
    "rmu_forget_per_token",
    "rmu_retain",
    "rmu_retain_per_sequence",
    "rmu_retain_per_token",
    "undial",
    "undial_per_token",
    "wga",
    "wga_per_token",
]
