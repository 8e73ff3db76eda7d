"""LoRA adapters on the Llama projections (Hu et al. 2021), with Flax NNX's ``nnx.LoRA``.

A target projection ``W [in, out]`` (``q, k, v, o, gate, up, down``; the attention weights
``[D, N, H]`` / ``[N, H, D]`` read as their flattened ``[in, out]`` matrices) becomes

    y = x W + (alpha / r) * (x A) B,     A [in, r], B [r, out]

``A`` is drawn by ``nnx.LoRA``'s initialiser (He uniform), ``B`` starts at zero, so a model
with fresh adapters computes exactly the base model. The adapters are ``nnx.LoRAParam``
variables in ``Attention.lora`` / ``MLP.lora`` (``models/block.py``): with scanned layers
they carry the leading ``[L]`` axis like every block parameter, and logical sharding
names (``A``: the input axis's name and ``lora_rank``; ``B``: ``lora_rank`` and the
output's), so FSDP and tensor parallelism split them as the weight they adapt
(``train/mesh.py``). Training only the adapters: ``nnx.split(model, nnx.LoRAParam,
nnx.Param)`` gives ``(graphdef, adapters, base)`` (``LoRAParam`` subclasses ``Param``,
so the first filter must be the adapters'); ``train.step`` differentiates the adapters
only, the base is a frozen input (it may be bf16: ``model.param_dtype``).

Saving either merges ``W + (alpha / r) A B`` into the base (:func:`merge_adapters`) or
writes the adapters alone in PEFT's layout (:func:`peft_tensors`, :func:`peft_config`;
the files are written by ``models.io.save_adapters``): ``lora_A.weight = A^T [r, in]``,
``lora_B.weight = B^T [out, r]`` of ``base_model.model.model.layers.{i}.<module>``, whose
HF weight ``[out, in]`` is ``W^T``, so PEFT's ``W^T + (alpha / r) lora_B lora_A`` is the
transpose of ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn.errors import CheckpointError, ConfigError
from jaxunlearn.models.layer_stack import stack_blocks
from jaxunlearn.models.llama import Llama, LlamaConfig

__all__ = ["TARGETS", "SAVE_MODES", "LoraConfig", "ScaledLoRA", "add_adapters",
           "merge_adapters", "has_adapters", "adapter_count", "adapter_params", "peft_tensors", "peft_config",
           "config_from_peft", "adapters_from_peft"]

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
SAVE_MODES = ("merged", "adapters")
# target -> (sub-module, PEFT module name)
_MODULES = {"q": ("attn", "self_attn.q_proj"), "k": ("attn", "self_attn.k_proj"),
            "v": ("attn", "self_attn.v_proj"), "o": ("attn", "self_attn.o_proj"),
            "gate": ("mlp", "mlp.gate_proj"), "up": ("mlp", "mlp.up_proj"),
            "down": ("mlp", "mlp.down_proj")}
_PEFT_PREFIX = "base_model.model.model.layers"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """``model.lora``: train rank-``rank`` adapters on ``targets`` instead of every weight.

    ``alpha / rank`` scales the update (PEFT's ``lora_alpha``). ``save``: ``merged`` writes
    the base with the update merged in (a plain model), ``adapters`` the adapters alone
    (PEFT's ``adapter_model.safetensors`` + ``adapter_config.json``).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    save: str = "merged"

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(f"model.lora.rank must be an integer >= 1, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) \
                or not np.isfinite(self.alpha) or self.alpha <= 0:
            raise ConfigError(f"model.lora.alpha must be a finite number > 0, got {self.alpha!r}")
        targets = tuple(self.targets)
        object.__setattr__(self, "targets", targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown:
            raise ConfigError(f"model.lora.targets: unknown projection {unknown[0]!r} "
                              f"(choose from {', '.join(TARGETS)})")
        if not targets or len(set(targets)) != len(targets):
            raise ConfigError(f"model.lora.targets must list distinct projections from "
                              f"{', '.join(TARGETS)}, got {list(targets)}")
        if self.save not in SAVE_MODES:
            raise ConfigError(f"model.lora.save must be merged or adapters, got {self.save!r}")

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


class ScaledLoRA(nnx.LoRA):
    """``nnx.LoRA`` times ``scale``: ``x [M, in] -> scale * (x A) B [M, out]``, in ``dtype``."""

    def __init__(self, in_features: int, rank: int, out_features: int, *, scale: float,
                 in_axis: str, out_axis: str, dtype, rngs: nnx.Rngs):
        meta = dict(eager_sharding=False)
        super().__init__(in_features, rank, out_features, dtype=dtype, param_dtype=jnp.float32,
                         rngs=rngs, a_metadata=dict(meta, out_sharding=(in_axis, "lora_rank")),
                         b_metadata=dict(meta, out_sharding=("lora_rank", out_axis)))
        self.scale = scale

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x) * jnp.asarray(self.scale, x.dtype)


def _shape(config: LlamaConfig, target: str) -> tuple[int, str, int, str]:
    """``(in, in logical axis, out, out logical axis)`` of ``target``'s ``[in, out]`` matrix."""
    D, F, H = config.hidden_size, config.intermediate_size, config.resolved_head_dim
    N, K = config.num_heads, config.num_kv_heads
    return {"q": (D, "embed", N * H, "heads"), "k": (D, "embed", K * H, "kv_heads"),
            "v": (D, "embed", K * H, "kv_heads"), "o": (N * H, "heads", D, "embed"),
            "gate": (D, "embed", F, "mlp"), "up": (D, "embed", F, "mlp"),
            "down": (F, "mlp", D, "embed")}[target]


def adapter_params(config: LlamaConfig, lora: LoraConfig) -> int:
    """Adapter parameters of ``lora`` on a ``config`` model, from the shapes:
    ``L · sum over targets of r (in + out)``."""
    per_layer = sum(lora.rank * (d_in + d_out)
                    for d_in, _, d_out, _ in (_shape(config, t) for t in lora.targets))
    return config.num_layers * per_layer


def _blocks(model: Llama) -> list:
    return [model.layers] if model.config.scan_layers else list(model.layers)


def _copy(model: Llama) -> Llama:
    """A new module graph with new variables over the same (immutable) arrays: no weight
    is copied, and setting a variable of the copy leaves ``model``'s alone."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))


def add_adapters(model: Llama, lora: LoraConfig, *, seed: int = 0) -> Llama:
    """A copy of ``model`` (sharing its weights) with fresh adapters on ``lora.targets``.

    ``model`` is not modified. The copy computes exactly what ``model`` does (``B = 0``).
    """
    if has_adapters(model):
        raise ValueError("add_adapters: the model already has adapters")
    config = model.config
    out = _copy(model)
    rngs = nnx.Rngs(params=jax.random.fold_in(jax.random.key(seed), 0x4C6F5241))

    def make(target):
        d_in, ax_in, d_out, ax_out = _shape(config, target)
        return ScaledLoRA(d_in, lora.rank, d_out, scale=lora.scale, in_axis=ax_in,
                          out_axis=ax_out, dtype=config.compute_dtype, rngs=rngs)

    for block in _blocks(out):
        for target in lora.targets:
            sub = getattr(block, _MODULES[target][0])
            per_layer = [make(target) for _ in range(config.num_layers if config.scan_layers
                                                     else 1)]
            sub.lora[target] = stack_blocks(per_layer) if config.scan_layers else per_layer[0]
    return out


def has_adapters(model: Llama) -> bool:
    return bool(jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def adapter_count(model: Llama) -> int:
    """Number of adapter parameters (``sum over targets and layers of r (in + out)``)."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))


def _delta(adapter: ScaledLoRA, shape: tuple[int, ...]) -> jax.Array:
    """``scale * A B`` (``[..., in, out]``, float32) reshaped to the weight's ``shape``."""
    a = adapter.lora_a[...].astype(jnp.float32)
    b = adapter.lora_b[...].astype(jnp.float32)
    return (adapter.scale * jnp.einsum("...ir,...ro->...io", a, b)).reshape(shape)


def merge_adapters(model: Llama) -> Llama:
    """A plain ``Llama`` (no adapters) whose weights are ``W + (alpha / r) A B``: the same
    function as ``model``'s, up to the rounding of the weights' dtype. ``model`` is kept."""
    out = _copy(model)
    for block in _blocks(out):
        for target, (sub_name, _) in _MODULES.items():
            sub = getattr(block, sub_name)
            if target not in sub.lora:
                continue
            weight = getattr(sub, target)
            merged = weight[...].astype(jnp.float32) + _delta(sub.lora[target], weight.shape)
            weight[...] = merged.astype(weight.dtype)
            del sub.lora[target]
    return out


def _targets_of(model: Llama) -> list[str]:
    block = _blocks(model)[0]
    return [t for t, (sub, _) in _MODULES.items() if t in getattr(block, sub).lora]


def _adapters(model: Llama, target: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A [in, r], B [r, out])`` of ``target`` in layer ``layer``, on the host."""
    scanned = model.config.scan_layers
    block = model.layers if scanned else model.layers[layer]
    adapter = getattr(block, _MODULES[target][0]).lora[target]
    a, b = (np.asarray(jax.device_get(v[...])) for v in (adapter.lora_a, adapter.lora_b))
    return (a[layer], b[layer]) if scanned else (a, b)


def peft_tensors(model: Llama) -> dict[str, np.ndarray]:
    """PEFT's tensors of ``model``'s adapters: ``...layers.{i}.<module>.lora_A.weight``
    ``[r, in]`` and ``lora_B.weight`` ``[out, r]`` (float32)."""
    out = {}
    for i in range(model.config.num_layers):
        for target in _targets_of(model):
            a, b = _adapters(model, target, i)
            name = f"{_PEFT_PREFIX}.{i}.{_MODULES[target][1]}"
            out[f"{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
            out[f"{name}.lora_B.weight"] = np.ascontiguousarray(b.T)
    return out


def peft_config(lora: LoraConfig, base_model: str) -> dict[str, Any]:
    """PEFT's ``adapter_config.json`` for ``lora`` on ``base_model`` (a path or hub id)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": 0.0, "bias": "none",
            "target_modules": sorted(_MODULES[t][1].split(".")[-1] for t in lora.targets),
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
            "inference_mode": True, "init_lora_weights": True, "modules_to_save": None,
            "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {}}


def config_from_peft(peft: Mapping[str, Any], source: str) -> LoraConfig:
    """The ``LoraConfig`` of a PEFT ``adapter_config.json``; what we cannot apply is refused."""
    if peft.get("peft_type") != "LORA":
        raise CheckpointError(f"{source}: peft_type {peft.get('peft_type')!r} is not LORA")
    for key in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if peft.get(key):
            raise CheckpointError(f"{source}: {key}=true is not supported")
    for key in ("layers_to_transform", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if peft.get(key):
            raise CheckpointError(f"{source}: {key} is not supported (one rank and alpha for "
                                  "every adapted layer)")
    by_name = {_MODULES[t][1].split(".")[-1]: t for t in TARGETS}
    modules = peft.get("target_modules")
    if isinstance(modules, str) or not isinstance(modules, list) or \
            any(m not in by_name for m in modules):
        raise CheckpointError(f"{source}: target_modules must list modules among "
                              f"{', '.join(by_name)}, got {modules!r}")
    try:
        return LoraConfig(rank=peft.get("r"), alpha=peft.get("lora_alpha"),
                          targets=tuple(t for t in TARGETS if _MODULES[t][1].split(".")[-1]
                                        in modules))
    except ConfigError as e:
        raise CheckpointError(f"{source}: {str(e).replace('model.lora.', '')}") from None


def adapters_from_peft(model: Llama, lora: LoraConfig, get_tensor, names: set[str], *,
                       source: str) -> Llama:
    """A copy of ``model`` with ``lora``'s adapters read from PEFT tensors (``get_tensor(name)``)."""
    config = model.config
    out = add_adapters(model, lora)
    for target in lora.targets:
        d_in, _, d_out, _ = _shape(config, target)
        parts: dict[str, list] = {"lora_a": [], "lora_b": []}
        for i in range(config.num_layers):
            name = f"{_PEFT_PREFIX}.{i}.{_MODULES[target][1]}"
            for field, suffix, want in (("lora_a", "lora_A", (lora.rank, d_in)),
                                        ("lora_b", "lora_B", (d_out, lora.rank))):
                key = f"{name}.{suffix}.weight"
                if key not in names:
                    raise CheckpointError(f"{source}: adapters lack tensor {key!r}")
                value = np.asarray(get_tensor(key), np.float32)
                if value.shape != want:
                    raise CheckpointError(f"{source}: tensor {key!r} has shape {value.shape}, "
                                          f"the model and r={lora.rank} need {want}")
                parts[field].append(value.T)
        for block_index, block in enumerate(_blocks(out)):
            adapter = getattr(block, _MODULES[target][0]).lora[target]
            for field, values in parts.items():
                value = np.stack(values) if config.scan_layers else values[block_index]
                getattr(adapter, field)[...] = jnp.asarray(value)
    return out
