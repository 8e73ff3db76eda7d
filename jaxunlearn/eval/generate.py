"""Jitted batched decoding with a KV cache (greedy or sampled), prompts padded on the left.

Speed: a decoding program is compiled per ``(batch, prompt width, cache length)``, so
both widths come from bucket ladders (:data:`PROMPT_BUCKETS`, :data:`NEW_TOKEN_BUCKETS`)
and the number of steps actually run is a traced value: every call whose prompts fit a
bucket and whose budgets fit a cache length reuses one executable, whatever its exact
``max_new_tokens``, for every model of the same architecture (the ``graphdef`` is the
static argument). Each row carries its own budget; the loop stops when every row has
produced EOS or used its budget, so a batch costs its longest answer, not the cap.

Shapes: B rows, P prompt width, N cache slots for new tokens, V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import interrupts
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.batch import bucket_length
from jaxunlearn.errors import DataError
from jaxunlearn.models.kv_cache import KVCache
from jaxunlearn.models.llama import Llama

__all__ = ["Generation", "PROMPT_BUCKETS", "NEW_TOKEN_BUCKETS", "generate", "left_pad",
           "generate_ids", "generate_texts"]

# Prompt widths: steps of about x1.5 (a QA prompt under a chat template is 20-80 tokens).
PROMPT_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072,
                  4096)
# New-token slots in the cache: doubling, since only attention's width depends on them
# (the loop runs a row's budget, never the slot count).
NEW_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Generation(NamedTuple):
    """``tokens [B, max_new_tokens]`` (``pad_id`` after EOS or the row's budget) and
    ``lengths [B]`` (tokens before EOS, at most the row's budget)."""

    tokens: np.ndarray
    lengths: np.ndarray


@functools.partial(jax.jit, static_argnames=("graphdef", "slots"))
def _decode(graphdef, state, input_ids, attention_mask, budget, key, temperature, eos_id, pad_id,
            *, slots: int):
    """``tokens [B, slots]``: row ``b`` decodes at most ``budget[b] <= slots`` tokens."""
    model = nnx.merge(graphdef, state)
    B, P = input_ids.shape
    cache = KVCache.init(model.config, B, P + slots)
    mask = jnp.concatenate([attention_mask, jnp.zeros((B, slots), jnp.int32)], axis=1)
    out = model.forward(input_ids, mask, cache=cache, last_only=True)

    def pick(logits, key):
        logits = logits.astype(jnp.float32)
        # A branch, not a select: greedy decoding draws no [B, V] noise at every step.
        return jax.lax.cond(
            temperature > 0,
            lambda: jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6)),
            lambda: jnp.argmax(logits, axis=-1)).astype(jnp.int32)

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < slots) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, tokens, done, mask, key = carry
        key, sub = jax.random.split(key)
        nxt = jnp.where(done, pad_id, pick(logits, sub))
        tokens = tokens.at[:, step].set(nxt)
        done = done | (nxt == eos_id) | (step + 1 >= budget)
        mask = mask.at[:, P + step].set(1)
        out = model.forward(nxt[:, None], mask, cache=cache)
        return step + 1, out.cache, out.logits[:, 0], tokens, done, mask, key

    tokens = jnp.full((B, slots), pad_id, jnp.int32)
    carry = (jnp.int32(0), out.cache, out.logits[:, -1], tokens, budget <= 0, mask, key)
    _, _, _, tokens, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens


def generate(model: Llama, input_ids, attention_mask, *, max_new_tokens: int | Sequence[int],
             eos_id: int, pad_id: int, temperature: float = 0.0, key: jax.Array | None = None
             ) -> Generation:
    """Decodes after left-padded prompts ``input_ids [B, P]``.

    ``max_new_tokens``: one budget for every row, or ``[B]`` budgets (0 = none); the
    result has ``max(max_new_tokens)`` columns. Greedy when ``temperature == 0``;
    otherwise samples with ``key``. The cache holds ``bucket(max budget)`` new slots
    (:data:`NEW_TOKEN_BUCKETS`); decoding stops once every row has produced ``eos_id``
    or spent its budget.
    """
    budget = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (np.shape(input_ids)[0],))
    if budget.size == 0 or budget.min() < 0 or budget.max() <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    return _generate(model, input_ids, attention_mask, budget, int(budget.max()), eos_id=eos_id,
                     pad_id=pad_id, temperature=temperature, key=key)


def _generate(model, input_ids, attention_mask, budget: np.ndarray, longest: int, *, eos_id,
              pad_id, temperature=0.0, key=None) -> Generation:
    """:func:`generate` with ``bucket(longest) >= max(budget)`` cache slots and ``longest``
    result columns."""
    graphdef, state = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    tokens = np.asarray(_decode(graphdef, state, jnp.asarray(input_ids, jnp.int32),
                                jnp.asarray(attention_mask, jnp.int32),
                                jnp.asarray(budget, jnp.int32), key, jnp.float32(temperature),
                                jnp.int32(eos_id), jnp.int32(pad_id),
                                slots=bucket_length(longest, NEW_TOKEN_BUCKETS)))[:, :longest]
    is_eos = tokens == eos_id
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), longest)
    return Generation(tokens=tokens, lengths=np.minimum(lengths, budget))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, multiple: int = 16
             ) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token lists to a common length rounded up to ``multiple`` (few jit shapes).

    Returns ``input_ids [B, P]`` and ``attention_mask [B, P]``.
    """
    longest = max(len(s) for s in sequences)
    P = -(-longest // multiple) * multiple
    ids = np.full((len(sequences), P), pad_id, np.int32)
    mask = np.zeros((len(sequences), P), np.int32)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, P - len(s):] = s
            mask[i, P - len(s):] = 1
    return ids, mask


def generate_ids(model: Llama, prompts: Sequence[Sequence[int]], *,
                 max_new_tokens: int | Sequence[int], eos_id: int, pad_id: int,
                 batch_size: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids, EOS excluded) of N tokenised prompts, in input order.

    ``max_new_tokens``: one budget or N budgets. Prompts are sorted by length and decoded
    ``batch_size`` at a time, each batch left-padded to the bucket of its longest prompt
    (:data:`PROMPT_BUCKETS`); the last batch is filled with one-token-budget copies, so
    a whole call compiles one program per prompt bucket, shared with every model of the
    same architecture and every later call of the same buckets.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not prompts:
        raise DataError("prompts: nothing to generate from")
    if any(len(p) == 0 for p in prompts):
        raise DataError("prompts: every prompt needs at least one token")
    budgets = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (len(prompts),))
    if budgets.min() < 1:
        raise DataError(f"max_new_tokens: expected positive budgets, got {budgets.min()}")
    slots = int(budgets.max())
    order = np.argsort([len(p) for p in prompts], kind="stable")
    out: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(prompts), batch_size):
        interrupts.check("between generation batches")  # Ctrl-C stops here, never in XLA
        idx = order[start:start + batch_size]
        fill = batch_size - len(idx)
        chunk = [list(prompts[i]) for i in idx] + [list(prompts[idx[0]])] * fill
        budget = np.concatenate([budgets[idx], np.ones(fill, np.int64)])
        width = bucket_length(max(len(p) for p in chunk), PROMPT_BUCKETS)
        ids, mask = left_pad(chunk, pad_id, multiple=width)
        # One slot count for the whole call: one program per prompt bucket.
        gen = _generate(model, ids, mask, budget, slots, eos_id=eos_id, pad_id=pad_id)
        for row, i in enumerate(idx):
            out[i] = gen.tokens[row, :gen.lengths[row]].tolist()
    return out


def generate_texts(model: Llama, tokenizer, prompts_ids: Sequence[Sequence[int]], *,
                   max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy continuations of already-tokenised prompts (:func:`generate_ids`), decoded
    to text (EOS excluded), in input order."""
    ids = generate_ids(model, prompts_ids, max_new_tokens=max_new_tokens,
                       eos_id=tokenizer.eos_token_id, pad_id=batch_lib.pad_id(tokenizer),
                       batch_size=batch_size)
    return [tokenizer.decode(g, skip_special_tokens=True) for g in ids]
