"""Jitted batched decoding with a KV cache (greedy or sampled), prompts padded on the left."""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import interrupts
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.models.llama import KVCache, Llama


class Generation(NamedTuple):
    """``tokens [B, max_new_tokens]`` (``pad_id`` after EOS) and ``lengths [B]`` (EOS excluded)."""

    tokens: np.ndarray
    lengths: np.ndarray


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _decode(graphdef, state, input_ids, attention_mask, key, temperature, eos_id, pad_id,
            *, max_new_tokens: int):
    model = nnx.merge(graphdef, state)
    B, P = input_ids.shape
    cache = KVCache.init(model.config, B, P + max_new_tokens)
    mask = jnp.concatenate([attention_mask, jnp.zeros((B, max_new_tokens), jnp.int32)], axis=1)
    out = model.forward(input_ids, mask, cache=cache)

    def pick(logits, key):
        logits = logits.astype(jnp.float32)
        sampled = jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))
        return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, tokens, done, mask, key = carry
        key, sub = jax.random.split(key)
        nxt = jnp.where(done, pad_id, pick(logits, sub))
        tokens = tokens.at[:, step].set(nxt)
        done = done | (nxt == eos_id)
        mask = mask.at[:, P + step].set(1)
        out = model.forward(nxt[:, None], mask, cache=cache)
        return step + 1, out.cache, out.logits[:, 0], tokens, done, mask, key

    tokens = jnp.full((B, max_new_tokens), pad_id, jnp.int32)
    carry = (jnp.int32(0), out.cache, out.logits[:, -1], tokens, jnp.zeros((B,), bool), mask, key)
    _, _, _, tokens, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens


def generate(model: Llama, input_ids, attention_mask, *, max_new_tokens: int, eos_id: int,
             pad_id: int, temperature: float = 0.0, key: jax.Array | None = None) -> Generation:
    """Decodes up to ``max_new_tokens`` after left-padded prompts ``input_ids [B, P]``.

    Greedy when ``temperature == 0``; otherwise samples with ``key``. Stops early once
    every row has produced ``eos_id``.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    graphdef, state = nnx.split(model)
    key = jax.random.key(0) if key is None else key
    tokens = np.asarray(_decode(graphdef, state, jnp.asarray(input_ids, jnp.int32),
                                jnp.asarray(attention_mask, jnp.int32), key,
                                jnp.float32(temperature), jnp.int32(eos_id), jnp.int32(pad_id),
                                max_new_tokens=max_new_tokens))
    is_eos = tokens == eos_id
    lengths = np.where(is_eos.any(axis=1), is_eos.argmax(axis=1), max_new_tokens)
    return Generation(tokens=tokens, lengths=lengths)


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


def generate_texts(model: Llama, tokenizer, prompts_ids: Sequence[Sequence[int]], *,
                   max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy continuations of already-tokenised prompts, decoded to text (EOS excluded).

    The last batch is padded with copies of the first prompt so every call has the
    same shape (one compilation), and the extra rows are dropped.
    """
    eos = tokenizer.eos_token_id
    pad = batch_lib.pad_id(tokenizer)
    texts: list[str] = []
    for start in range(0, len(prompts_ids), batch_size):
        interrupts.check("between generation batches")  # Ctrl-C stops here, never in XLA
        chunk = list(prompts_ids[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        ids, mask = left_pad(chunk, pad)
        gen = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_id=eos, pad_id=pad)
        for row in range(real):
            texts.append(tokenizer.decode(gen.tokens[row, :gen.lengths[row]].tolist(),
                                          skip_special_tokens=True))
    return texts
