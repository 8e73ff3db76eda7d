"""Padding-free token layout: the token-wise work of a step on the tokens that count.

A padded batch ``[B, T]`` spends its padded fraction of every projection, MLP and LM-head
product on positions whose outputs nothing reads; an unlearning batch (question +
answer, padded to a bucket length) is commonly 25-60 % padding, and the LM head is only
read at the answer tokens. With a :class:`Compaction` the model runs its token-wise
parts (norms, q/k/v/o projections, MLP, rotary embedding) on the ``C`` real tokens of
each group only, and ``models.outputs.ModelOutput`` applies the LM head to the loss tokens only.
Attention needs the ``[B, T]`` layout (each row attends within itself), so every layer
scatters q/k/v back to it and gathers attention's output: memory moves of ``[C, N*H]``,
no arithmetic. Outputs at the real tokens equal the padded computation's; padding
positions hold unspecified (finite) values, as they do in the padded computation.

Capacities are static (they are shapes), so the caller fixes them for a whole run: the
host knows every batch's masks in advance (:func:`covering`). Rows are compacted in
``groups`` consecutive blocks, one per batch shard of a mesh, so that under data
parallelism each gather stays on its device.

A group's order puts its real tokens first (in row-major order) and then padding
tokens, so the first ``C`` entries are distinct in-range indices: gathers need no fill
value and scatters have unique indices. A group with more real tokens than ``C`` would
lose tokens; :func:`overflow` tells, and the model poisons the output with NaN then.

Axes: B rows, T positions, G groups, M = B/G*T tokens per group, C capacity per group.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Compaction", "group_counts", "covering", "token_order", "overflow", "gather", "scatter"]


@dataclasses.dataclass(frozen=True)
class Compaction:
    """Static capacities of the padding-free layout of one kind of batch.

    Attributes:
      groups: row blocks compacted separately (the batch shards of the mesh; 1 on one device).
      tokens: per group, how many real (``attention_mask`` 1) tokens the trunk runs on.
      labels: per group, how many loss (``loss_mask`` 1) tokens the LM head runs on.
    """

    groups: int
    tokens: int
    labels: int

    def __post_init__(self):
        for name in ("groups", "tokens", "labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Compaction.{name} must be a positive int, got {value!r}")


# A leafless pytree node: it rides in a batch through jit (part of the treedef, so a new
# capacity retraces), tree.map, device_put and scan without being an array.
jax.tree_util.register_static(Compaction)


def group_counts(mask: np.ndarray, groups: int) -> np.ndarray:
    """``[B, T]`` 0/1 mask -> ``[G]`` count of nonzero entries per row block (host side)."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the rows of a [B, T] mask, "
                         f"got shape {mask.shape}")
    return (mask.reshape(groups, -1) != 0).sum(axis=1)


def covering(groups: int, token_counts, label_counts, *, multiple: int = 8) -> Compaction:
    """The smallest :class:`Compaction` that holds every given per-group count.

    Args:
      groups: row blocks per batch.
      token_counts, label_counts: array-likes of per-group counts of real / loss tokens,
        over every batch the capacities must serve (:func:`group_counts`).
      multiple: capacities are rounded up to it (matrix kernels like multiples of 8).
    """
    def cap(counts) -> int:
        need = max(int(np.max(np.asarray(counts), initial=0)), 1)
        return -(-need // multiple) * multiple

    return Compaction(groups, cap(token_counts), cap(label_counts))


def token_order(mask: jax.Array, groups: int, size: int) -> jax.Array:
    """Per group, the flat indices of its ``size`` first tokens, real tokens first.

    Args:
      mask: ``[B, T]``; nonzero marks the tokens to keep.
      groups: ``G``, must divide ``B``.
      size: the capacity; a group has only ``M`` tokens, so ``C = min(size, M)``.
    Returns:
      ``[G, C]`` int32 indices into the group's ``M`` tokens (row-major): the kept tokens
      in order, then the others in order.
    """
    B, T = mask.shape
    flat = jnp.asarray(mask).reshape(groups, (B // groups) * T) != 0
    # Stable: kept tokens keep their order, so causal structure is untouched.
    order = jnp.argsort(~flat, axis=1, stable=True)
    return order[:, :min(size, flat.shape[1])].astype(jnp.int32)


def overflow(mask: jax.Array, groups: int, size: int) -> jax.Array:
    """Scalar bool: does some group hold more than ``size`` kept tokens?"""
    counts = jnp.sum(jnp.asarray(mask).reshape(groups, -1) != 0, axis=1)
    return jnp.any(counts > size)


def gather(x: jax.Array, order: jax.Array) -> jax.Array:
    """``[B, T, ...] -> [G, C, ...]``: the tokens :func:`token_order` picked."""
    G, C = order.shape
    grouped = x.reshape(G, -1, *x.shape[2:])
    return jax.vmap(lambda xs, idx: xs.at[idx].get(mode="promise_in_bounds"))(
        grouped, order)


def scatter(xc: jax.Array, order: jax.Array, rows: int, length: int) -> jax.Array:
    """``[G, C, ...] -> [B, T, ...]``: inverse of :func:`gather`; zeros where nothing was picked."""
    G, C = order.shape
    M = rows // G * length

    def one(values, idx):
        out = jnp.zeros((M, *values.shape[1:]), values.dtype)
        return out.at[idx].set(values, unique_indices=True, mode="promise_in_bounds")

    return jax.vmap(one)(xc, order).reshape(rows, length, *xc.shape[2:])
