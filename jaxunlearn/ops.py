"""Label log-probabilities straight from the last hidden states, fused with the LM head.

``losses.sequence_logprob(hidden @ head, labels, mask)`` first materialises the float32
logits ``[B, T, V]`` and then differentiates a generic ``log_softmax`` + gather: for
Llama-3's 128k vocabulary at ``B=8, T=2048`` that is 8.6 GB of logits, and the backward
pass adds a scatter, a masked copy and the ``log_softmax`` transpose over the same size.
The functions here compute the same values with one rule whose derivative is written out:

    logits = h W                                   [N, V]  float32 (bf16 inputs accumulate in f32)
    log p(y) = logits[y] - logsumexp(logits)        [N]
    d log p(y) = sum_v (onehot(y)_v - softmax_v) * (dh W + h dW)_v

so reverse mode is one elementwise product and the two matmuls ``dh = g r W^T``,
``dW = h^T (g r)`` with ``r = onehot(y) - softmax(logits)``, nothing else over ``[N, V]``.
It is a ``jax.custom_jvp`` (not ``custom_vjp``), so forward mode and
Hessian-vector products (``secondorder.hvp``) work through it too.

``chunk_size=c`` processes ``c`` tokens at a time under ``jax.checkpoint`` inside a
``lax.scan``: the peak extra memory is ``c x V`` float32 instead of ``N x V``, at the
price of recomputing each chunk's logits in the backward pass (one more ``N x D x V``
matmul, about +1/3 of the head's cost). Use it when the logits do not fit (GPU, big
vocabularies); ``chunk_size=None`` keeps the residual ``r`` for the whole batch and is
the fastest when memory allows.

Axes: B batch, T positions, N = B*T tokens, D model width, V vocabulary.
Conventions are those of ``jaxunlearn.losses``: ``logits[b, t]`` scores ``labels[b, t]``;
labels outside ``[0, V)`` (HF's -100) give 0.0; positions with mask 0 contribute nothing
to the value or the gradient, even when their hidden states are NaN.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from jaxunlearn.losses import LossInputError

__all__ = ["token_logprobs_from_hidden", "sequence_logprob_from_hidden", "token_nll_from_hidden"]


# ---------------------------------------------------------------------------- the fused rule


def _logits(hidden: jax.Array, head: jax.Array) -> jax.Array:
    # float32 out even for bf16 operands (the softmax over 32k-128k entries needs it);
    # float64 stays float64.
    out = jnp.promote_types(jnp.promote_types(hidden.dtype, head.dtype), jnp.float32)
    return jnp.einsum("ND,DV->NV", hidden, head, preferred_element_type=out)


def _primal(hidden, head, labels):
    """``(log p(labels) [N], r [N, V])`` with ``r = onehot - softmax`` (0 on invalid labels)."""
    logits = _logits(hidden, head)
    n, vocab = logits.shape
    valid = (labels >= 0) & (labels < vocab)
    safe = jnp.where(valid, labels, 0)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
    logp = jnp.where(valid, picked - lse, 0.0)
    # The one-hot part is an N-element scatter into -softmax, not an [N, V] iota compare
    # (which the CPU compiler materialises: 1 GiB of int32 per 2048 tokens at V=128k).
    r = jnp.where(valid[:, None], -jnp.exp(logits - lse[:, None]), 0.0)
    r = r.at[jnp.arange(n), safe].add(valid.astype(r.dtype))
    return logp, r


@jax.custom_jvp
def _dense_logprobs(hidden: jax.Array, head: jax.Array, labels: jax.Array) -> jax.Array:
    """``log softmax(hidden @ head)[labels]``: ``[N, D], [D, V], [N] int -> [N]`` float32."""
    return _primal(hidden, head, labels)[0]


@_dense_logprobs.defjvp
def _dense_logprobs_jvp(primals, tangents):
    hidden, head, labels = primals
    t_hidden, t_head, _ = tangents  # labels are integers: their tangent is float0
    logp, r = _primal(hidden, head, labels)
    # Linear in (t_hidden, t_head); reverse mode transposes it into g*r, g*r W^T, h^T g*r.
    # The tangent matmuls run in the operands' dtype, as autodiff of a plain matmul would:
    # for bf16 weights the [D, V] head gradient then never exists in float32 (2 GiB at 8B).
    t_logits = (jnp.einsum("ND,DV->NV", t_hidden, head)
                + jnp.einsum("ND,DV->NV", hidden, t_head)).astype(r.dtype)
    return logp, jnp.sum(r * t_logits, axis=-1)


def _chunked_logprobs(hidden, head, labels, chunk_size: int):
    """:func:`_dense_logprobs` ``chunk_size`` tokens at a time, recomputed in the backward pass."""
    n = hidden.shape[0]
    pad = -n % chunk_size
    if pad:
        # Padded rows: zero hidden states and label -1, i.e. log-prob 0 and no gradient.
        hidden = jnp.concatenate([hidden, jnp.zeros((pad, hidden.shape[1]), hidden.dtype)])
        labels = jnp.concatenate([labels, jnp.full((pad,), -1, labels.dtype)])
    chunks = (n + pad) // chunk_size
    body = jax.checkpoint(lambda h, y: _dense_logprobs(h, head, y))

    def step(carry, xs):
        return carry, body(*xs)

    _, out = jax.lax.scan(step, None, (hidden.reshape(chunks, chunk_size, -1),
                                       labels.reshape(chunks, chunk_size)))
    return out.reshape(-1)[:n]


# ---------------------------------------------------------------------------- public API


def _check(hidden, head, labels, mask, chunk_size):
    hidden, head, labels = jnp.asarray(hidden), jnp.asarray(head), jnp.asarray(labels)
    if hidden.ndim != 3:
        raise LossInputError(f"hidden must have shape [B, T, D] (3 dims), got shape {tuple(hidden.shape)}")
    if head.ndim != 2 or head.shape[0] != hidden.shape[2]:
        raise LossInputError(f"head must have shape [D, V] with D = hidden's {hidden.shape[2]}, "
                             f"got shape {tuple(head.shape)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise LossInputError(f"labels must hold integer token ids, got dtype {labels.dtype}")
    if tuple(labels.shape) != tuple(hidden.shape[:2]):
        raise LossInputError(f"labels shape {tuple(labels.shape)} must equal hidden's [B, T] "
                             f"{tuple(hidden.shape[:2])}")
    if mask is not None:
        mask = jnp.asarray(mask)
        if tuple(mask.shape) != tuple(labels.shape):
            raise LossInputError(f"mask must have the same shape as labels {tuple(labels.shape)}, "
                                 f"got {tuple(mask.shape)}")
        mask = mask.astype(jnp.promote_types(mask.dtype, jnp.float32))
    if chunk_size is not None and (isinstance(chunk_size, bool)
                                   or not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise LossInputError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    return hidden, head, labels.astype(jnp.int32), mask


def token_logprobs_from_hidden(hidden: jax.Array, head: jax.Array, labels: jax.Array, *,
                               mask: jax.Array | None = None,
                               chunk_size: int | None = None) -> jax.Array:
    """Log-probability of every label under the LM head, without the ``[B, T, V]`` tensors.

    ``out[b, t] = log_softmax(hidden[b, t] @ head)[labels[b, t]]``, equal to
    ``losses.token_logprobs(hidden @ head, labels)`` (times ``mask`` when given).

    Args:
      hidden: ``[B, T, D]`` final (normed) hidden states, any float dtype.
      head: ``[D, V]`` the output projection (``embed.T`` for tied embeddings).
      labels: ``[B, T]`` int; entries outside ``[0, V)`` give 0.0.
      mask: optional ``[B, T]`` 0/1; masked positions give 0.0 and no gradient (their
        hidden rows are zeroed before the matmul, so NaN/inf there cannot leak).
      chunk_size: tokens per chunk (``None``: the whole batch at once); see the module doc.
    Returns:
      ``[B, T]`` float32 (float64 for float64 inputs).
    """
    hidden, head, labels, mask = _check(hidden, head, labels, mask, chunk_size)
    B, T, D = hidden.shape
    if mask is not None:
        hidden = jnp.where(mask[..., None] != 0, hidden, jnp.zeros((), hidden.dtype))
    flat_h, flat_y = hidden.reshape(B * T, D), labels.reshape(B * T)
    if chunk_size is None or chunk_size >= B * T:
        out = _dense_logprobs(flat_h, head, flat_y)
    else:
        out = _chunked_logprobs(flat_h, head, flat_y, int(chunk_size))
    out = out.reshape(B, T)
    if mask is not None:
        out = jnp.where(mask != 0, out * mask, 0.0)
    return out


def sequence_logprob_from_hidden(hidden: jax.Array, head: jax.Array, labels: jax.Array,
                                 mask: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
    """Per-sequence log-probability ``sum_t mask[b,t] * log p(labels[b,t])`` from hidden states.

    Equal to ``losses.sequence_logprob(hidden @ head, labels, mask)``.

    Args:
      hidden: ``[B, T, D]``; head: ``[D, V]``; labels: ``[B, T]`` int; mask: ``[B, T]`` 0/1.
      chunk_size: see :func:`token_logprobs_from_hidden`.
    Returns:
      ``[B]`` float32; 0.0 for a sequence with an all-zero mask.
    """
    if mask is None:
        raise LossInputError("mask is required ([B, T] 0/1 over the answer tokens)")
    return jnp.sum(token_logprobs_from_hidden(hidden, head, labels, mask=mask,
                                              chunk_size=chunk_size), axis=-1)


def token_nll_from_hidden(hidden: jax.Array, head: jax.Array, labels: jax.Array,
                          mask: jax.Array, *, chunk_size: int | None = None) -> jax.Array:
    """Mean NLL over all masked tokens, ``-sum mask * log p / max(sum mask, 1)``, from hidden states.

    Equal to ``losses.token_nll(hidden @ head, labels, mask)``.

    Args:
      hidden: ``[B, T, D]``; head: ``[D, V]``; labels: ``[B, T]`` int; mask: ``[B, T]`` 0/1.
      chunk_size: see :func:`token_logprobs_from_hidden`.
    Returns:
      scalar float32; 0.0 when the mask is all zeros.
    """
    if mask is None:
        raise LossInputError("mask is required ([B, T] 0/1 over the answer tokens)")
    lp = token_logprobs_from_hidden(hidden, head, labels, mask=mask, chunk_size=chunk_size)
    count = jnp.sum(jnp.asarray(mask, lp.dtype))
    return -jnp.sum(lp) / jnp.maximum(count, 1.0)
