"""The decoder's layers: built stacked (one scanned block) or unrolled, and run in order.

With ``LlamaConfig.scan_layers`` (default on) the layers are one stacked ``Block`` whose
parameters carry a leading ``[L]`` axis (logical name ``layers``), run by one
``jax.lax.scan``: the compiled program holds one block whatever the depth, so compile
time and program size do not grow with it (as levanter's ``Stacked`` and MaxText's
``scan_layers``). ``scan_layers=False`` keeps ``L`` separate blocks in an unrolled loop.
Parameter paths: ``layers/attn/q`` is ``[L, D, N, H]`` scanned, ``layers/<i>/attn/q``
``[D, N, H]`` unrolled; both layouts compute the same function and a seed gives the
same weights in both. ``LlamaConfig.remat`` wraps each block in ``jax.checkpoint``.

Axes as in ``models.llama``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import kv_cache
from jaxunlearn.models.block import Block
from jaxunlearn.models.llama_config import REMAT_POLICIES, LlamaConfig


def stack_blocks(blocks: list[nnx.Module]) -> nnx.Module:
    """One module whose parameters are ``blocks``' (one per layer, same structure) stacked
    on a new leading ``[L]`` axis (decoder blocks; ``models.lora``'s adapters).

    The axis's logical sharding name is ``layers`` (never sharded, ``train/mesh.py``).
    """
    def stack(*variables):
        first = variables[0]
        stacked = first.replace(jnp.stack([v[...] for v in variables]))
        stacked.set_metadata(out_sharding=("layers", *first.get_metadata()["out_sharding"]))
        return stacked

    states = [nnx.state(b) for b in blocks]
    return nnx.merge(nnx.graphdef(blocks[0]),
                     jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def _identity(params):
    return params


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _frozen_base_as_bits(stacked: nnx.State):
    """On the CPU, with LoRA adapters: the stacked frozen base's 16-bit float weights as
    same-width unsigned integers for the scan, and the function that turns a layer's
    slice back (``(stacked, restore)``; elsewhere ``(stacked, identity)``).

    XLA's CPU compiler has no bf16 matrix product, so it computes a bf16 layer's products
    in float32; lacking bf16 slicing as well, it converts the scan's whole ``[L, ...]``
    operand to float32 before slicing and hoists that out of the loop, and a float32 copy
    of the whole base stays alive through the step (8B, LoRA rank 16, one device: a
    46.6 GiB peak, ``benchmarks/memory.py``). Sliced as integers, only the current
    layer's weights are converted (34.1 GiB; what remains is the one integer copy).
    GPU compilers slice bf16 natively, so other backends are left alone. The base of a
    model with adapters is never trained (``models.lora``), so it carries no gradient.
    """
    if jax.default_backend() != "cpu" or not any(
            isinstance(v, nnx.LoRAParam)
            for v in jax.tree.leaves(stacked, is_leaf=_is_variable)):
        return stacked, _identity
    dtypes = {}

    def to_bits(path, v):
        if isinstance(v, nnx.LoRAParam) or not jnp.issubdtype(v.dtype, jnp.floating) \
                or v.dtype.itemsize != 2:
            return v
        dtypes[path] = v.dtype
        return v.replace(jax.lax.bitcast_convert_type(jax.lax.stop_gradient(v[...]), jnp.uint16))

    def from_bits(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, v: v.replace(jax.lax.bitcast_convert_type(v[...], dtypes[path]))
            if path in dtypes else v, params, is_leaf=_is_variable)

    bits = jax.tree_util.tree_map_with_path(to_bits, stacked, is_leaf=_is_variable)
    return bits, from_bits


def init_layers(config: LlamaConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    """``config.num_layers`` new blocks: one stacked block (``scan_layers``) or an
    ``nnx.List`` of them."""
    # Initialised one after another from the same stream in both layouts, so a seed
    # gives the same weights scanned or unrolled.
    blocks = [Block(config, rngs=rngs) for _ in range(config.num_layers)]
    return stack_blocks(blocks) if config.scan_layers else nnx.List(blocks)


def run_layers(layers: nnx.Module, config: LlamaConfig, x, positions, key_mask, inv_freq,
               cache: kv_cache.KVCache | None, hidden_layer: int | None, order
               ) -> tuple[jax.Array, kv_cache.KVCache | None, jax.Array | None]:
    """The decoder blocks (``init_layers``' layout) on ``x``:
    ``(x, new cache or None, hidden or None)``.

    ``x [B, T, D]`` (compacted ``[G, C, D]`` with ``order``), ``positions``, ``key_mask``
    and ``inv_freq`` as ``Block.__call__`` takes them.
    One ``jax.lax.scan`` over the stacked block (``scan_layers``), or a Python loop.
    The residual stream after block ``hidden_layer`` is picked inside the loop
    (a select per block), so no ``[L, B, T, D]`` stack of every block's output is formed.
    With a cache each layer reads its ``[B, S, K, H]`` slice and the new tokens' keys and
    values are written into the ``[L, ...]`` cache once, after the loop.
    """
    c = config
    if hidden_layer is not None and not 0 <= hidden_layer < c.num_layers:
        raise ValueError(f"hidden_layer must be in [0, {c.num_layers}), got {hidden_layer}")
    index = None if cache is None else cache.index
    policy = REMAT_POLICIES[c.remat] if cache is None else None

    if c.scan_layers:
        graphdef, stacked = nnx.split(layers)
        stacked, restore = _frozen_base_as_bits(stacked)
    else:
        restore = _identity

    def apply(graphdef, params, x, kv):
        # Inside the remat boundary, so the backward pass re-slices the integer weights.
        return nnx.merge(graphdef, restore(params))(x, positions, key_mask, inv_freq, kv,
                                                    index, order)

    if policy is not None:
        # prevent_cse guards unrolled copies against CSE; a scan body needs no guard.
        apply = jax.checkpoint(apply, policy=policy, static_argnums=(0,),
                               prevent_cse=not c.scan_layers)

    def layer(carry, graphdef, params, i, kv):
        x, hidden = carry
        x, (k, v) = apply(graphdef, params, x, kv)
        if hidden is not None:
            hidden = jnp.where(i == hidden_layer, x, hidden)
        return (x, hidden), (None if cache is None else (k, v))

    # The cache is read layer by layer (scan inputs) and only the new tokens' keys and
    # values leave the loop ([L, B, T, K, H] outputs), written into the cache once
    # afterwards: a cache carried through the layer loop and updated per layer is
    # copied whole at every layer on XLA's CPU backend (a decoding step then costs L
    # copies of the cache: 1.8 s a token at SmolLM2-135M, batch 16).
    carry = (x, None if hidden_layer is None else jnp.zeros_like(x))
    if c.scan_layers:
        xs = (stacked, jnp.arange(c.num_layers),
              None if cache is None else (cache.keys, cache.values))
        carry, new_kv = jax.lax.scan(lambda cr, xs: layer(cr, graphdef, *xs), carry, xs)
    else:
        outs = []
        for i, block in enumerate(layers):
            kv = None if cache is None else (cache.keys[i], cache.values[i])
            carry, out = layer(carry, *nnx.split(block), i, kv)
            outs.append(out)
        new_kv = None if cache is None else tuple(jnp.stack(a) for a in zip(*outs))
    x, hidden = carry
    # With a cache x is [B, T, D] (decoding never compacts): T new slots are filled.
    new_cache = None if cache is None else kv_cache.append(cache, *new_kv)
    return x, new_cache, hidden
