"""``LlamaConfig``: the architecture of a Llama-family decoder, its checks, and its
Hugging Face ``config.json`` form (llama, mistral, qwen2; Llama-3 RoPE scaling).

Also the tables of choices it validates: storage/compute dtypes, remat policies
(``REMAT_POLICIES``) and attention implementations (``ATTENTION_IMPLS``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

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
    ``scan_layers`` runs the layers as one scanned, stacked block (``models.layer_stack``).
    ``remat`` recomputes each block in the backward pass, keeping what its policy allows
    (``REMAT_POLICIES``): ``none`` keeps every activation; ``full`` only each block's
    input, the least memory; ``dots_saveable`` also every matmul output;
    ``dots_with_no_batch_dims_saveable`` the weight matmuls' outputs but not attention's
    scores, so only attention and elementwise ops are recomputed.
    ``attention_impl="cudnn"`` uses ``jax.nn.dot_product_attention``'s cuDNN flash kernel
    (GPU, bf16/fp16 only) for full sequences; ``"xla"`` is the portable einsum implementation.
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
