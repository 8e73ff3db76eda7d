"""Llama-family decoder in Flax NNX: Llama 2/3, SmolLM2, Qwen2 (qkv bias), Mistral.

Axis legend used in einsums and docstrings:
  B batch, T query positions, S key positions, D model width, N query heads,
  K kv heads, G query heads per kv head (N = K * G), H head dim, F ffn width, V vocab.

The math follows Hugging Face ``transformers``' ``LlamaForCausalLM`` exactly (RoPE in
the "rotate half" layout, RMSNorm computed in float32, SwiGLU MLP), so logits agree
with the PyTorch model to float32 precision; ``tests/test_llama.py`` proves it.

Layers (``LlamaConfig.scan_layers``, default on) are one stacked ``Block`` whose
parameters carry a leading ``[L]`` axis (logical name ``layers``), run by one
``jax.lax.scan``: the compiled program holds one block whatever the depth, so compile
time and program size do not grow with it (as levanter's ``Stacked`` and MaxText's
``scan_layers``). ``scan_layers=False`` keeps ``L`` separate blocks in an unrolled loop.
Parameter paths: ``layers/attn/q`` is ``[L, D, N, H]`` scanned, ``layers/<i>/attn/q``
``[D, N, H]`` unrolled; both layouts compute the same function and a seed gives the
same weights in both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import compact

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# ``LlamaConfig.remat``: what each block keeps from its forward pass for the backward
# pass (a jax.checkpoint policy); everything else is recomputed. None: no remat.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # the block's input only
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # and every matmul output
    # and the weight matmuls' outputs, not attention's batched products
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLS = ("xla", "cudnn")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """Llama-3 style frequency-dependent RoPE scaling (``rope_type: llama3``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype of the weights.
    ``scan_layers`` runs the layers as one scanned, stacked block (see the module
    docstring). ``remat`` recomputes each block in the backward pass, keeping what its
    policy allows (``REMAT_POLICIES``): ``none`` keeps every activation; ``full`` only
    each block's input, the least memory; ``dots_saveable`` also every matmul output;
    ``dots_with_no_batch_dims_saveable`` the weight matmuls' outputs but not attention's
    scores, so only attention and elementwise ops are recomputed. ``attention_impl="cudnn"`` uses
    ``jax.nn.dot_product_attention``'s cuDNN flash kernel (GPU, bf16/fp16 only) for full
    sequences; ``"xla"`` is the portable einsum implementation.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True
    remat: str = "none"
    attention_impl: str = "xla"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LlamaConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"LlamaConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_heads ({self.num_heads}) unless head_dim is given")
        if self.resolved_head_dim % 2:
            raise ValueError(f"LlamaConfig.head_dim must be even for RoPE, got {self.resolved_head_dim}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"LlamaConfig.{name} must be one of {sorted(_DTYPES)}, "
                                 f"got {getattr(self, name)!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"LlamaConfig.remat must be one of {', '.join(REMAT_POLICIES)}, "
                             f"got {self.remat!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"LlamaConfig.attention_impl must be one of {ATTENTION_IMPLS}, "
                             f"got {self.attention_impl!r}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def compute_dtype(self):
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return _DTYPES[self.param_dtype]

    def replace(self, **changes) -> "LlamaConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Number of parameters, counted from the shapes (embeddings included)."""
        D, F, H = self.hidden_size, self.intermediate_size, self.resolved_head_dim
        N, K, V = self.num_heads, self.num_kv_heads, self.vocab_size
        attn = D * N * H * 2 + D * K * H * 2 + (N * H + 2 * K * H if self.attention_bias else 0)
        per_layer = attn + 3 * D * F + 2 * D
        return V * D * (1 if self.tie_word_embeddings else 2) + self.num_layers * per_layer + D

    @classmethod
    def from_hf(cls, hf: dict[str, Any], **overrides) -> "LlamaConfig":
        """Reads a Hugging Face ``config.json`` dict (llama, mistral, qwen2, smollm2)."""
        model_type = hf.get("model_type", "llama")
        if model_type not in ("llama", "mistral", "qwen2"):
            raise ValueError(f"config.json: model_type {model_type!r} is not supported "
                             "(llama, mistral, qwen2)")
        scaling = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
        rope_type = scaling.get("rope_type", scaling.get("type")) if scaling else None
        rope_scaling = None
        if rope_type == "llama3":
            rope_scaling = RopeScaling(
                factor=float(scaling["factor"]),
                low_freq_factor=float(scaling["low_freq_factor"]),
                high_freq_factor=float(scaling["high_freq_factor"]),
                original_max_position_embeddings=int(scaling["original_max_position_embeddings"]))
        elif rope_type not in (None, "default"):
            raise ValueError(f"config.json: rope_scaling type {rope_type!r} is not supported "
                             "(default, llama3)")
        rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        eos = hf.get("eos_token_id")
        if isinstance(eos, list):
            eos = eos[0]
        kwargs = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            # Canonical form: None when it is the default, so a saved and reloaded model
            # has the same (hashable) config and reuses compiled code.
            head_dim=(None if hf.get("head_dim") in (None, hf["hidden_size"] // hf["num_attention_heads"])
                      else hf["head_dim"]),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", model_type != "llama")),
            attention_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id"),
        )
        if hf.get("mlp_bias"):
            raise ValueError("config.json: mlp_bias=true is not supported")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> dict[str, Any]:
        """The ``config.json`` dict that ``transformers`` loads as the same model."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM"}[self.model_type]
        hf: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.resolved_head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": self.param_dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.model_type == "llama":
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = False
        if self.model_type == "mistral":
            hf["sliding_window"] = None
        if self.rope_scaling is not None:
            hf["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
        return hf


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


class LlamaOutput(NamedTuple):
    """``logits [B, T, V]``; ``cache`` when decoding; ``hidden [B, T, D]`` when asked."""

    logits: jax.Array
    cache: KVCache | None = None
    hidden: jax.Array | None = None


def _param(rngs: nnx.Rngs, shape, axes, dtype, std: float | None = None, zeros=False, ones=False):
    """A parameter with logical sharding names (mapped to mesh axes in ``train/mesh.py``)."""
    if ones:
        value = jnp.ones(shape, dtype)
    elif zeros:
        value = jnp.zeros(shape, dtype)
    else:
        value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def rope_frequencies(config: LlamaConfig) -> jax.Array:
    """Inverse RoPE frequencies ``[H/2]``, with Llama-3 scaling when configured."""
    H = config.resolved_head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
    s = config.rope_scaling
    if s is None:
        return inv_freq
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    scaled = jnp.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(is_medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates ``x [B, T, N, H]`` by ``positions [B, T]`` ("rotate half" layout, as HF)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, H/2]
    cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
    sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, dtype, rngs: nnx.Rngs):
        self.scale = _param(rngs, (dim,), ("embed",), dtype, ones=True)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # Variance in float32 even for bf16 activations (as HF), then back to x's dtype.
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def _tokens(x: jax.Array) -> jax.Array:
    """``[..., D] -> [M, D]``: token-wise products as plain 2-D matmuls.

    With two leading axes (``BTD,DF->BTF``) the weight gradient contracts over both, and
    XLA's CPU backend then writes the ``[B*T, F]`` cotangent out transposed before the
    matmul (a strided copy per projection); the 2-D form needs none (measured 1.7x faster
    for an MLP projection's forward + backward at ``B*T = 1520``, ``F = 1536``).
    """
    return x.reshape(-1, x.shape[-1])


def _attention(q: jax.Array, k: jax.Array, v: jax.Array, key_mask: jax.Array, *,
               causal_blocks: int = 1) -> jax.Array:
    """Grouped-query softmax attention ``softmax(q k^T / sqrt(H)) v``.

    q ``[B, T, N, H]``, k/v ``[B, S, K, H]``, key_mask ``[B, T, S]`` bool -> ``[B, T, N, H]``.
    Scores and softmax in float32.

    ``causal_blocks=n`` (requires ``S == T``, ``n`` dividing ``T``, and a key_mask that is
    causal, i.e. False wherever ``s > t``) splits the queries into ``n`` blocks; block ``i``
    scores only the keys ``< (i + 1) T / n``, the others being masked anyway. That skips
    ``(n - 1) / 2n`` of the scores, softmax and both products (25 % for ``n = 2``),
    with the same values.
    """
    B, T, N, H = q.shape
    S, K = k.shape[1], k.shape[2]
    G = N // K
    # Head-major layout: the G query heads sharing a kv head are stacked along the rows
    # (Q = G*T), so each (b, kv head) pair is one [Q, H] x [H, S] matmul instead of G
    # small ones; about 2x faster forward and 1.5x forward+backward on the CPU at T=256.
    qh = q.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, S, H]
    if causal_blocks > 1 and (S != T or T % causal_blocks):
        raise ValueError(f"causal_blocks={causal_blocks} needs S == T divisible by it, "
                         f"got T={T}, S={S}")
    step = T // causal_blocks
    outs = []
    for i in range(causal_blocks):
        rows, keys = slice(i * step, (i + 1) * step), (i + 1) * step if causal_blocks > 1 else S
        qb = qh[:, :, :, rows].reshape(B, K, G * step, H)
        # float32 scores straight from the matmul (bf16 inputs accumulate in f32); the
        # scale fuses into the softmax's elementwise pass.
        scores = jnp.einsum("BKQH,BKSH->BKQS", qb, kh[:, :, :keys],
                            preferred_element_type=jnp.float32) / math.sqrt(H)
        mask = jnp.broadcast_to(key_mask[:, None, None, rows, :keys],
                                (B, 1, G, step, keys)).reshape(B, 1, G * step, keys)
        # A large finite negative (not -inf) keeps fully padded query rows finite.
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("BKQS,BKSH->BKQH", probs, vh[:, :, :keys])
                    .reshape(B, K, G, step, H))
    out = outs[0] if causal_blocks == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


def _causal_blocks(length: int) -> int:
    """Query blocks for causal attention over ``length`` positions: up to 4, of 64 or more."""
    n = 1
    while n < 4 and length % (2 * n) == 0 and length // (2 * n) >= 64:
        n *= 2
    return n


class Attention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        D, N, K, H = (config.hidden_size, config.num_heads, config.num_kv_heads,
                      config.resolved_head_dim)
        dt, std = config.weight_dtype, 0.02
        self.config = config
        self.q = _param(rngs, (D, N, H), ("embed", "heads", "head_dim"), dt, std)
        self.k = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), dt, std)
        self.v = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), dt, std)
        self.o = _param(rngs, (N, H, D), ("heads", "head_dim", "embed"), dt, std)
        if config.attention_bias:
            self.q_bias = _param(rngs, (N, H), ("heads", "head_dim"), dt, zeros=True)
            self.k_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), dt, zeros=True)
            self.v_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), dt, zeros=True)
        # LoRA adapters by projection name (``models.lora``): [M, in] -> [M, out] updates.
        self.lora = nnx.Dict()

    def __call__(self, x, positions, key_mask, inv_freq, cache_kv=None, cache_index=None,
                 order=None):
        """x ``[B, T, D]``; key_mask ``[B, T, S]`` bool; returns ``([B, T, D], (k, v))``.

        ``k, v [B, T, K, H]`` are the new tokens' keys and values. With ``cache_kv`` (this
        layer's ``[B, S, K, H]`` cache) they are written at ``cache_index`` before attending.

        With ``order`` (``[G, C]``, ``models.compact``) x and positions are the compacted
        ``[G, C, ...]`` tokens: the projections run on them, attention on the ``[B, T]``
        layout ``key_mask`` describes.
        """
        c = self.config
        dt = c.compute_dtype
        lead, flat = x.shape[:-1], _tokens(x)

        def project(name):  # [M, D] x [D, heads, H] -> [..., heads, H]
            w = getattr(self, name)
            y = jnp.einsum("MD,DNH->MNH", flat, w[...].astype(dt))
            if name in self.lora:
                y = y + self.lora[name](flat).reshape(y.shape)
            return y.reshape(*lead, *w.shape[1:])

        q, k, v = project("q"), project("k"), project("v")
        if c.attention_bias:
            q = q + self.q_bias[...].astype(dt)
            k = k + self.k_bias[...].astype(dt)
            v = v + self.v_bias[...].astype(dt)
        q = apply_rope(q, positions, inv_freq)
        k = apply_rope(k, positions, inv_freq)
        if order is not None:
            B, T = key_mask.shape[:2]
            q, k, v = (compact.scatter(a, order, B, T) for a in (q, k, v))
        new_kv = (k, v)
        if cache_kv is not None:
            k, v = (jax.lax.dynamic_update_slice_in_dim(old, new.astype(old.dtype), cache_index,
                                                        axis=1)
                    for old, new in zip(cache_kv, new_kv))
        if c.attention_impl == "cudnn" and cache_kv is None:
            # key_mask holds the causal part too; is_causal lets the kernel skip those tiles.
            out = jax.nn.dot_product_attention(q, k, v, mask=key_mask[:, None], is_causal=True,
                                               implementation="cudnn")
        else:
            out = _attention(q, k, v, key_mask, causal_blocks=(
                1 if cache_kv is not None else _causal_blocks(key_mask.shape[1])))
        if order is not None:
            out = compact.gather(out, order)
        out = out.reshape(-1, *out.shape[-2:])
        heads = out
        out = jnp.einsum("MNH,NHD->MD", heads, self.o[...].astype(dt))
        if "o" in self.lora:
            out = out + self.lora["o"](heads.reshape(heads.shape[0], -1))
        return out.reshape(*lead, out.shape[-1]), new_kv


class MLP(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        D, F, dt = config.hidden_size, config.intermediate_size, config.weight_dtype
        self.dtype = config.compute_dtype
        self.gate = _param(rngs, (D, F), ("embed", "mlp"), dt, 0.02)
        self.up = _param(rngs, (D, F), ("embed", "mlp"), dt, 0.02)
        self.down = _param(rngs, (F, D), ("mlp", "embed"), dt, 0.02)
        # LoRA adapters by projection name (``models.lora``): [M, in] -> [M, out] updates.
        self.lora = nnx.Dict()

    def _project(self, name: str, x: jax.Array) -> jax.Array:
        y = x @ getattr(self, name)[...].astype(self.dtype)
        return y + self.lora[name](x) if name in self.lora else y

    def __call__(self, x: jax.Array) -> jax.Array:
        flat = _tokens(x)
        hidden = jax.nn.silu(self._project("gate", flat)) * self._project("up", flat)
        return self._project("down", hidden).reshape(x.shape)


class Block(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        dt = config.weight_dtype
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dt, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, dtype=dt, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x, positions, key_mask, inv_freq, cache_kv=None, cache_index=None,
                 order=None):
        h, kv = self.attn(self.input_norm(x), positions, key_mask, inv_freq, cache_kv, cache_index,
                          order)
        x = x + h
        return x + self.mlp(self.post_attn_norm(x)), kv


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


class Llama(nnx.Module):
    """Decoder-only Llama-family language model."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        D, V, dt = config.hidden_size, config.vocab_size, config.weight_dtype
        self.embed = _param(rngs, (V, D), ("vocab", "embed"), dt, 0.02)
        # Initialised one after another from the same stream in both layouts, so a seed
        # gives the same weights scanned or unrolled.
        blocks = [Block(config, rngs=rngs) for _ in range(config.num_layers)]
        self.layers = stack_blocks(blocks) if config.scan_layers else nnx.List(blocks)
        self.final_norm = RMSNorm(D, config.rms_norm_eps, dtype=dt, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _param(rngs, (D, V), ("embed", "vocab"), dt, 0.02)

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
            if attention_mask is None:
                raise ValueError("forward: attention_mask [B, S] is required with a cache")
            S = attention_mask.shape[1]
            slot = cache.index + jnp.arange(T)
            if positions is None:
                counts = jnp.cumsum(attention_mask, axis=-1) - 1
                positions = jnp.maximum(jnp.take(counts, slot, axis=1), 0)
            key_mask = (jnp.arange(S)[None, :] <= slot[:, None])[None] & (attention_mask[:, None, :] > 0)
        inv_freq = rope_frequencies(c)
        if order is not None:
            input_ids, positions = compact.gather(input_ids, order), compact.gather(positions, order)
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(dt)
        x, new_cache, hidden = self._blocks(x, positions, key_mask, inv_freq, cache,
                                            hidden_layer, order)
        x = self.final_norm(x)
        return x, new_cache, hidden

    def _blocks(self, x, positions, key_mask, inv_freq, cache, hidden_layer, order):
        """The decoder blocks on ``x``: ``(x, new cache or None, hidden or None)``.

        One ``jax.lax.scan`` over the stacked block (``scan_layers``), or a Python loop.
        The residual stream after block ``hidden_layer`` is picked inside the loop
        (a select per block), so no ``[L, B, T, D]`` stack of every block's output is formed.
        With a cache each layer reads its ``[B, S, K, H]`` slice and the new tokens' keys and
        values are written into the ``[L, ...]`` cache once, after the loop.
        """
        c = self.config
        if hidden_layer is not None and not 0 <= hidden_layer < c.num_layers:
            raise ValueError(f"hidden_layer must be in [0, {c.num_layers}), got {hidden_layer}")
        index = None if cache is None else cache.index
        policy = REMAT_POLICIES[c.remat] if cache is None else None

        def apply(graphdef, params, x, kv):
            return nnx.merge(graphdef, params)(x, positions, key_mask, inv_freq, kv, index, order)

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
            graphdef, stacked = nnx.split(self.layers)
            xs = (stacked, jnp.arange(c.num_layers),
                  None if cache is None else (cache.keys, cache.values))
            carry, new_kv = jax.lax.scan(lambda cr, xs: layer(cr, graphdef, *xs), carry, xs)
        else:
            outs = []
            for i, block in enumerate(self.layers):
                kv = None if cache is None else (cache.keys[i], cache.values[i])
                carry, out = layer(carry, *nnx.split(block), i, kv)
                outs.append(out)
            new_kv = None if cache is None else tuple(jnp.stack(a) for a in zip(*outs))
        x, hidden = carry
        new_cache = None
        if cache is not None:
            # With a cache x is [B, T, D] (decoding never compacts): T new slots are filled.
            start = (0, 0, index, 0, 0)
            keys, values = (jax.lax.dynamic_update_slice(old, new.astype(old.dtype), start)
                            for old, new in zip((cache.keys, cache.values), new_kv))
            new_cache = KVCache(keys, values, cache.index + x.shape[1])
        return x, new_cache, hidden
