"""The KV cache of incremental decoding: its layout, the positions and attention mask
of tokens decoded against it, and writing their keys and values into it.

Axes as in ``models.llama``: L layers, B batch, T new tokens, S cache slots, K kv heads,
H head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxunlearn.models.llama_config import LlamaConfig


class KVCache(NamedTuple):
    """Keys and values of every layer for incremental decoding.

    keys/values: ``[L, B, S, K, H]`` (both layer layouts); ``index``: int32 scalar, the
    slot where the next token is written (shared by the batch: prompts are left padded).
    """

    keys: jax.Array
    values: jax.Array
    index: jax.Array

    @classmethod
    def init(cls, config: LlamaConfig, batch: int, length: int) -> "KVCache":
        shape = (config.num_layers, batch, length, config.num_kv_heads, config.resolved_head_dim)
        zeros = jnp.zeros(shape, config.compute_dtype)
        return cls(keys=zeros, values=zeros, index=jnp.zeros((), jnp.int32))


def positions_and_mask(cache: KVCache, attention_mask, positions, length: int
                       ) -> tuple[jax.Array, jax.Array]:
    """``(positions [B, T], key_mask [B, T, S] bool)`` of ``T = length`` new tokens
    written at ``cache.index``.

    ``attention_mask [B, S]`` covers every cache slot (1 = a real token written now or
    earlier); a new token attends to the real tokens of the slots up to its own.
    ``positions=None`` counts the real tokens before each new one (left padding works).
    """
    if attention_mask is None:
        raise ValueError("forward: attention_mask [B, S] is required with a cache")
    S = attention_mask.shape[1]
    slot = cache.index + jnp.arange(length)
    if positions is None:
        counts = jnp.cumsum(attention_mask, axis=-1) - 1
        positions = jnp.maximum(jnp.take(counts, slot, axis=1), 0)
    key_mask = (jnp.arange(S)[None, :] <= slot[:, None])[None] & (attention_mask[:, None, :] > 0)
    return positions, key_mask


def append(cache: KVCache, keys: jax.Array, values: jax.Array) -> KVCache:
    """``cache`` with the new tokens' ``keys, values [L, B, T, K, H]`` written at
    ``cache.index`` and the index moved past them."""
    start = (0, 0, cache.index, 0, 0)
    new_keys, new_values = (jax.lax.dynamic_update_slice(old, new.astype(old.dtype), start)
                            for old, new in ((cache.keys, keys), (cache.values, values)))
    return KVCache(new_keys, new_values, cache.index + keys.shape[2])
