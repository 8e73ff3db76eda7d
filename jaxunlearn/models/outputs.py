"""What one forward pass of the model returns, and the label log-probabilities read from it.

Every caller that needs an answer's log-probability (training, the reference cache,
unlearning objectives, second-order updates, evaluation) takes it from
:func:`forward`'s :class:`ModelOutput`: the label log-probs come from the LM head
fused with the log-softmax (``jaxunlearn.ops``, never the ``[B, T, V]`` logits), on the
loss tokens only when the batch carries a padding-free plan (``models.compact``). So
the log-prob a method is trained on, the one its reference was cached with and the
one it is scored by are the same function of the weights.

Axes: B batch, T positions, D model width, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn import losses, ops
from jaxunlearn.models import compact

__all__ = ["ModelOutput", "forward", "compact_label_logprobs"]


class ModelOutput:
    """One forward pass of the model on a ``Batch``, seen through what objectives read.

    ``label_logprobs`` (and everything built on it: sequence log-probs, NLL, answer
    probability) comes from ``jaxunlearn.ops``, fused with the LM head: label-only
    objectives never form the float32 ``[B, T, V]`` logits and log-softmax, nor their
    backward. ``logits`` is formed only when read (KL terms and evaluation need whole
    distributions); both are computed at most once. Lives inside a traced function;
    not a pytree.

    Attributes:
      batch: the ``Batch`` ``[B, T]`` it was run on.
      final: ``[B, T, D]`` final-normed hidden states.
      head: ``[D, V]`` the LM head in the compute dtype.
      hidden: ``[B, T, D]`` residual stream after the requested block, or None.
    """

    def __init__(self, batch: Any, final: jax.Array, head: jax.Array,
                 hidden: jax.Array | None = None):
        self.batch, self.final, self.head, self.hidden = batch, final, head, hidden
        self._logits: jax.Array | None = None
        self._label_logprobs: jax.Array | None = None

    @property
    def logits(self) -> jax.Array:
        """``[B, T, V]`` in the compute dtype, as ``Llama.__call__``."""
        if self._logits is None:
            self._logits = jnp.einsum("BTD,DV->BTV", self.final, self.head)
        return self._logits

    @property
    def label_logprobs(self) -> jax.Array:
        """``[B, T]`` float32 ``log p(labels)``, 0 where ``loss_mask`` is 0."""
        if self._label_logprobs is None:
            b = self.batch
            plan = getattr(b, "compaction", None)
            if plan is None:
                self._label_logprobs = ops.token_logprobs_from_hidden(
                    self.final, self.head, b.labels, mask=b.loss_mask)
            else:
                self._label_logprobs = compact_label_logprobs(self.final, self.head, b, plan)
        return self._label_logprobs

    def token_counts(self) -> jax.Array:
        """``[B]`` loss tokens per sequence, ``|y_b|`` (``losses.sequence_token_counts``)."""
        return losses.sequence_token_counts(self.batch.loss_mask)

    def sequence_logprob(self) -> jax.Array:
        """``[B]`` summed answer log-probs ``log p(y_b | x_b)``: ``losses.sequence_logprob``."""
        return jnp.sum(self.label_logprobs, axis=-1)

    def nll_sum(self) -> jax.Array:
        """Scalar ``-sum_{b,t} mask * log p(labels)``: the numerator of :meth:`token_nll`."""
        return -jnp.sum(self.label_logprobs)

    def token_nll(self) -> jax.Array:
        """Scalar mean NLL over the masked tokens of this batch: ``losses.token_nll``."""
        count = jnp.sum(jnp.asarray(self.batch.loss_mask, jnp.float32))
        return self.nll_sum() / jnp.maximum(count, 1.0)

    def token_prob(self) -> jax.Array:
        """``[B]`` TOFU's per-token answer probability ``exp(log p(y_b|x_b) / |y_b|)``."""
        return jnp.exp(self.sequence_logprob() / jnp.maximum(self.token_counts(), 1.0))

    def answer_prob(self) -> jax.Array:
        """Scalar mean over sequences of :meth:`token_prob` (progress displays; never optimised)."""
        return jnp.mean(self.token_prob())


def compact_label_logprobs(final: jax.Array, head: jax.Array, batch: Any, plan: Any
                           ) -> jax.Array:
    """``[B, T]`` label log-probs with the LM head applied to ``plan.labels`` tokens per group.

    The loss tokens come first in each group's order (``models.compact``); the rest of
    the ``C`` picked are mask-0 tokens, which ``ops`` scores 0 without gradient. A group
    with more loss tokens than its capacity gives NaN (never a silently wrong loss).
    """
    B, T = batch.labels.shape
    order = compact.token_order(batch.loss_mask, plan.groups, plan.labels)
    picked = ops.token_logprobs_from_hidden(
        compact.gather(final, order), head, compact.gather(batch.labels, order),
        mask=compact.gather(batch.loss_mask, order))
    poison = jnp.where(compact.overflow(batch.loss_mask, plan.groups, plan.labels), jnp.nan, 0.0)
    return compact.scatter(picked, order, B, T) + poison


def forward(graphdef: nnx.GraphDef, params: Any, batch: Any,
            hidden_layer: int | None = None) -> ModelOutput:
    """:class:`ModelOutput` of the model ``(graphdef, params)`` on a ``Batch`` ``[B, T]``.

    ``params`` may be the ``nnx.Param`` state or the whole model state. A batch with a
    ``compaction`` runs padding-free (``models.compact``): the trunk on its real tokens,
    the fused LM head on its loss tokens; equal values at those tokens.
    """
    model = nnx.merge(graphdef, params)
    final, hidden = model.trunk(batch.input_ids, batch.attention_mask, hidden_layer=hidden_layer,
                                compaction=getattr(batch, "compaction", None))
    return ModelOutput(batch, final, model.output_head(), hidden)
