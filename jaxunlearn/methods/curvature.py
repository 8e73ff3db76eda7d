"""The loss the second-order methods remove and its curvature, on micro-batches of the model.

``answer_nll`` is the token-mean answer NLL (``train.nll.nll_objective``, the loss
the target was trained with) over a ``[B, T]`` batch or all ``[K, C, T]`` micro-batches
together; ``curvature_product`` its Gauss-Newton or exact Hessian product on the same
layouts (every micro-batch divided by the tokens of all, so the result equals the
product on the concatenated batch); ``largest_eigenvalue`` LiSSA's scale. Every forward
pass sees at most ``C`` rows: memory is one micro-batch's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn import losses, secondorder
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.models.outputs import forward
from jaxunlearn.solvers import tree_norm, tree_vdot
from jaxunlearn.train.nll import nll_objective
from jaxunlearn.train.step import objective_value

__all__ = ["answer_nll", "curvature_product", "micro_batches", "largest_eigenvalue"]

PyTree = Any


def _total_tokens(objective, batch) -> Any:
    """The objective's counts over a ``[B, T]`` batch or all ``[K, C, T]`` micro-batches."""
    if batch.input_ids.ndim == 2:
        return objective.counts(batch)
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), jax.vmap(objective.counts)(batch))


def answer_nll(graphdef: nnx.GraphDef) -> Callable[[PyTree, batch_lib.Batch], jax.Array]:
    """``(params, batch) -> scalar`` token-mean answer NLL (``train.nll.nll_objective``).

    ``NLL = −Σ_{b,t} mask·log p(label) / max(Σ mask, 1)`` over ``[B, T]`` arrays, or over all
    micro-batches of ``[K, C, T]`` arrays together: each micro-batch's NLL sum divided by
    the tokens of all, added in a ``lax.scan`` of checkpointed micro-batches (the gradient
    holds one micro-batch's activations at a time, at the cost of one extra forward
    pass). Empty rows (mask 0) add nothing.
    """
    objective = nll_objective(graphdef)

    def loss_fn(params, batch):
        if batch.input_ids.ndim == 2:
            return objective_value(objective, params, batch)[0]
        totals = _total_tokens(objective, batch)
        one = jax.checkpoint(lambda p, mb: objective.loss(p, mb, None, totals)[0])

        def step(acc, mb):
            return acc + one(params, mb), None

        total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), batch)
        return total

    return loss_fn


def curvature_product(graphdef: nnx.GraphDef, kind: str) -> secondorder.CurvatureFn:
    """``(params, batch, v) -> C v``, ``C`` the curvature of :func:`answer_nll` on ``batch``.

    ``kind="gauss_newton"``: ``Jᵀ H_out J`` with the closed-form softmax cross-entropy output
    Hessian (``secondorder.gnvp``, ``softmax_cross_entropy_hvp``), PSD; ``"hessian"``: the
    exact Hessian (``secondorder.hvp``). For ``[K, C, T]`` micro-batches the product is
    ``Σ_k C_k v`` with every micro-batch's NLL sum divided by the *total* token count, so
    it equals the product on the concatenated ``[K·C, T]`` batch.
    """
    if kind not in ("gauss_newton", "hessian"):
        raise ValueError(f"kind must be 'gauss_newton' or 'hessian', got {kind!r}")
    objective = nll_objective(graphdef)

    def one(params, mb, v, totals):
        if kind == "hessian":
            return secondorder.hvp(lambda p: objective.loss(p, mb, None, totals)[0], params, v)
        total = jnp.maximum(totals["tokens"], losses.EPS)

        def logits_fn(p):
            return forward(graphdef, p, mb).logits

        def out_loss(z):  # the same NLL as a function of the logits
            return -jnp.sum(losses.sequence_logprob(z, mb.labels, mb.loss_mask)) / total

        weights = mb.loss_mask / total
        return secondorder.gnvp(logits_fn, out_loss, params, v,
                                output_hvp=lambda z, u: secondorder.softmax_cross_entropy_hvp(
                                    z, u, weights))

    def product(params, batch, v):
        totals = _total_tokens(objective, batch)
        if batch.input_ids.ndim == 2:
            return one(params, batch, v, totals)

        def step(acc, mb):
            return jax.tree.map(jnp.add, acc, one(params, mb, v, totals)), None

        out, _ = jax.lax.scan(step, jax.tree.map(jnp.zeros_like, v), batch)
        return out

    return product


def micro_batches(encoded: Sequence[batch_lib.Encoded], rows: int, micro_batch: int,
                  seq_len: int, pad_id: int) -> batch_lib.Batch:
    """``[K, C, T]`` arrays: ``encoded`` (at most ``rows``) padded with empty rows to
    ``rows = K·C`` and cut into ``K`` micro-batches of ``C = micro_batch`` rows."""
    b = batch_lib.collate(list(encoded), seq_len, pad_id, batch_size=rows)
    return jax.tree.map(lambda x: x.reshape(rows // micro_batch, micro_batch, seq_len), b)


def largest_eigenvalue(matvec, like: PyTree, damping: float, iters: int = 20) -> jax.Array:
    """Power-iteration estimate of ``λ_max(C + λI)`` (Rayleigh quotient), from a fixed start."""
    leaves, treedef = jax.tree.flatten(like)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, x.dtype)
                                     for k, x in zip(keys, leaves)])

    def unit(v):
        n = tree_norm(v)
        return jax.tree.map(lambda x: x / n, v)

    def apply(v):  # (C + λI) v
        return jax.tree.map(lambda cv, x: cv + damping * x, matvec(v), v)

    v = unit(jax.lax.fori_loop(0, iters, lambda _, v: apply(unit(v)), v))
    return tree_vdot(v, apply(v))
