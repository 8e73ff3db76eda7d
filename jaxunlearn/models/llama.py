"""Llama-family decoder in Flax NNX: Llama 2/3, SmolLM2, Qwen2 (qkv bias), Mistral.

Axis legend used in einsums and docstrings (here and in ``block``, ``kv_cache``,
``layer_stack``):
  B batch, T query positions, S key positions, D model width, N query heads,
  K kv heads, G query heads per kv head (N = K * G), H head dim, F ffn width, V vocab,
  L layers.

The math follows Hugging Face ``transformers``' ``LlamaForCausalLM`` exactly (RoPE in
the "rotate half" layout, RMSNorm computed in float32, SwiGLU MLP), so logits agree
with the PyTorch model to float32 precision; ``tests/test_llama.py`` proves it.

This module is the model itself: embedding, the layers, final norm and LM head, and the
masks and positions of a forward pass. Its parts live beside it: ``llama_config``
(``LlamaConfig``, re-exported here), ``block`` (one decoder block), ``layer_stack``
(the layers, scanned and stacked by default) and ``kv_cache`` (decoding's cache).
Parameter paths: ``embed``, ``layers/...`` (``layer_stack``), ``final_norm/scale``,
``lm_head`` (untied embeddings only).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import compact, kv_cache, layer_stack
from jaxunlearn.models.block import RMSNorm, param, rope_frequencies
from jaxunlearn.models.kv_cache import KVCache
from jaxunlearn.models.llama_config import LlamaConfig

__all__ = ["Llama", "LlamaConfig", "LlamaOutput"]


class LlamaOutput(NamedTuple):
    """``logits [B, T, V]``; ``cache`` when decoding; ``hidden [B, T, D]`` when asked."""

    logits: jax.Array
    cache: KVCache | None = None
    hidden: jax.Array | None = None


class Llama(nnx.Module):
    """Decoder-only Llama-family language model."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        D, V, dt = config.hidden_size, config.vocab_size, config.weight_dtype
        self.embed = param(rngs, (V, D), ("vocab", "embed"), dt, 0.02)
        self.layers = layer_stack.init_layers(config, rngs=rngs)
        self.final_norm = RMSNorm(D, config.rms_norm_eps, dtype=dt, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, (D, V), ("embed", "vocab"), dt, 0.02)


    def __call__(self, input_ids, attention_mask=None, positions=None) -> jax.Array:
        """Logits ``[B, T, V]`` for ``input_ids [B, T]``.

        Args:
          input_ids: int ``[B, T]``.
          attention_mask: ``[B, T]``, 1 = token, 0 = padding (left or right); None = all 1.
          positions: int ``[B, T]``; None counts real tokens (so left padding works).
        """
        return self.forward(input_ids, attention_mask, positions).logits

    def hidden_states(self, input_ids, attention_mask=None, positions=None) -> jax.Array:
        """Final-normed hidden states ``[B, T, D]``, the LM head's input.

        ``hidden_states(...) @ output_head()`` equals ``__call__(...)``; with
        ``jaxunlearn.ops`` the label log-probs are taken from them without ever forming
        the ``[B, T, V]`` logits.
        """
        return self.trunk(input_ids, attention_mask, positions)[0]

    def trunk(self, input_ids, attention_mask=None, positions=None, *,
              hidden_layer: int | None = None,
              compaction: compact.Compaction | None = None) -> tuple[jax.Array, jax.Array | None]:
        """``(final-normed hidden states [B, T, D], residual stream after block hidden_layer)``.

        Everything of :meth:`forward` but the LM head, for objectives that take the label
        log-probs with ``jaxunlearn.ops`` instead of forming the ``[B, T, V]`` logits.
        With ``compaction`` the token-wise work runs on the real tokens only
        (``models.compact``): equal outputs at real tokens, unspecified ones at padding;
        NaN everywhere if a group holds more real tokens than ``compaction.tokens``.
        """
        if compaction is None:
            x, _, hidden = self._trunk(input_ids, attention_mask, positions, None, hidden_layer)
            return x, hidden
        B, T = input_ids.shape
        mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask
        order = compact.token_order(mask, compaction.groups, compaction.tokens)
        x, _, hidden = self._trunk(input_ids, mask, positions, None, hidden_layer, order)
        poison = jnp.where(compact.overflow(mask, compaction.groups, compaction.tokens),
                           jnp.nan, 0.0)
        x = compact.scatter(x, order, B, T) + poison.astype(x.dtype)
        if hidden is not None:
            hidden = compact.scatter(hidden, order, B, T) + poison.astype(hidden.dtype)
        return x, hidden

    def output_head(self) -> jax.Array:
        """The LM head ``[D, V]`` in the compute dtype (``embed.T`` when tied)."""
        head = self.embed[...].T if self.config.tie_word_embeddings else self.lm_head[...]
        return head.astype(self.config.compute_dtype)

    def forward(self, input_ids, attention_mask=None, positions=None, *,
                cache: KVCache | None = None, hidden_layer: int | None = None,
                last_only: bool = False) -> LlamaOutput:
        """Full forward pass; see ``__call__``.

        With ``cache`` the ``T`` new tokens are written at ``cache.index`` and
        ``attention_mask`` covers all ``S`` cache slots ``[B, S]`` (1 = a real token
        written now or earlier). ``hidden_layer=i`` also returns the residual stream
        after block ``i`` (``[B, T, D]``, used by RMU; ``0 <= i < L``). ``last_only``
        returns the logits of the last position only (``[B, 1, V]``: a decoder's prefill
        reads nothing else, and the LM head is a large part of a small model's work).
        """
        x, new_cache, hidden = self._trunk(input_ids, attention_mask, positions, cache, hidden_layer)
        if last_only:
            x = x[:, -1:]
        logits = jnp.einsum("BTD,DV->BTV", x, self.output_head())
        return LlamaOutput(logits=logits, cache=new_cache, hidden=hidden)

    def _trunk(self, input_ids, attention_mask, positions, cache, hidden_layer, order=None):
        """Embedding, blocks and final norm: ``(x [B, T, D], new cache, hidden or None)``.

        With ``order`` (``[G, C]``) ``x`` and ``hidden`` are the compacted ``[G, C, D]``.
        """
        c = self.config
        B, T = input_ids.shape
        dt = c.compute_dtype
        if cache is None:
            mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else attention_mask
            if positions is None:
                positions = jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
            causal = jnp.tril(jnp.ones((T, T), bool))
            key_mask = causal[None] & (mask[:, None, :] > 0)
        else:
            positions, key_mask = kv_cache.positions_and_mask(cache, attention_mask, positions, T)
        inv_freq = rope_frequencies(c)
        if order is not None:
            input_ids, positions = compact.gather(input_ids, order), compact.gather(positions, order)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dt)
        x, new_cache, hidden = layer_stack.run_layers(self.layers, c, x, positions, key_mask,
                                                      inv_freq, cache, hidden_layer, order)
        x = self.final_norm(x)
        return x, new_cache, hidden

