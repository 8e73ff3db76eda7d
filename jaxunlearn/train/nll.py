"""The one NLL objective: training the target and retain models, fine-tuning, TAU, second order.

The token NLL of a batch's loss tokens (answer-only on QA items, every token on
documents: the mask says which), read from the fused LM head (``models.outputs``: no
``[B, T, V]`` logits, forward or backward; ``benchmarks/train_nll.py``: 0.73 of the time
through logits on the demo model), equal to ``losses.token_nll`` of the logits up to
rounding; as a ``train.step.Objective``, so micro-batches combine exactly.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxunlearn import losses
from jaxunlearn.models.outputs import forward
from jaxunlearn.train.step import Objective

__all__ = ["nll_objective"]


def nll_objective(graphdef: nnx.GraphDef) -> Objective:
    """Token NLL ``-sum mask * log p(labels) / sum mask`` of a ``Batch`` ``[B, T]`` as an Objective.

    ``counts``: ``{"tokens": sum mask}``; ``loss``: this batch's ``-sum mask * log p``
    over the whole update's tokens; metric ``tokens``: loss tokens in the update.
    """
    def counts(batch):
        return {"tokens": jnp.sum(jnp.asarray(batch.loss_mask, jnp.float32))}

    def loss(params, batch, key, totals):
        del key  # no dropout
        nll_sum = forward(graphdef, params, batch).nll_sum()
        return (nll_sum / jnp.maximum(totals["tokens"], losses.EPS),
                {"tokens": counts(batch)["tokens"]})

    return Objective(counts=counts, loss=loss)
