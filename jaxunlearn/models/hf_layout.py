"""The one table between our parameter tree and Hugging Face tensor names.

Each entry of ``_name_table`` / ``_layer_rules`` gives an HF name, its path in the NNX
state and both conversions (HF layout <-> ours), so loading and saving cannot drift.
Scanned layers (``LlamaConfig.scan_layers``) are stacked on load
(``model.layers.{i}.<name>`` -> row ``i`` of one ``[L, ...]`` array) and unstacked on
save; the tensors are the same for both layouts.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn.errors import CheckpointError
from jaxunlearn.models import lora as lora_lib
from jaxunlearn.models.llama import Llama, LlamaConfig

__all__ = ["hf_names", "model_from_hf_tensors", "hf_tensors_from_model"]


def _layer_rules(config: LlamaConfig) -> list[tuple[str, tuple, Callable, Callable]]:
    """(hf suffix, our sub-path, hf->ours, ours->hf) for one decoder layer."""
    N, K, H, D = (config.num_heads, config.num_kv_heads, config.resolved_head_dim,
                  config.hidden_size)
    rules = [
        ("self_attn.q_proj.weight", ("attn", "q"), lambda w: w.T.reshape(D, N, H),
         lambda p: p.reshape(D, N * H).T),
        ("self_attn.k_proj.weight", ("attn", "k"), lambda w: w.T.reshape(D, K, H),
         lambda p: p.reshape(D, K * H).T),
        ("self_attn.v_proj.weight", ("attn", "v"), lambda w: w.T.reshape(D, K, H),
         lambda p: p.reshape(D, K * H).T),
        ("self_attn.o_proj.weight", ("attn", "o"), lambda w: w.T.reshape(N, H, D),
         lambda p: p.reshape(N * H, D).T),
        ("mlp.gate_proj.weight", ("mlp", "gate"), lambda w: w.T, lambda p: p.T),
        ("mlp.up_proj.weight", ("mlp", "up"), lambda w: w.T, lambda p: p.T),
        ("mlp.down_proj.weight", ("mlp", "down"), lambda w: w.T, lambda p: p.T),
        ("input_layernorm.weight", ("input_norm", "scale"), lambda w: w, lambda p: p),
        ("post_attention_layernorm.weight", ("post_attn_norm", "scale"), lambda w: w, lambda p: p),
    ]
    if config.attention_bias:
        rules += [
            ("self_attn.q_proj.bias", ("attn", "q_bias"), lambda w: w.reshape(N, H),
             lambda p: p.reshape(N * H)),
            ("self_attn.k_proj.bias", ("attn", "k_bias"), lambda w: w.reshape(K, H),
             lambda p: p.reshape(K * H)),
            ("self_attn.v_proj.bias", ("attn", "v_bias"), lambda w: w.reshape(K, H),
             lambda p: p.reshape(K * H)),
        ]
    return rules


def _name_table(config: LlamaConfig) -> list[tuple[str, tuple, Callable, Callable]]:
    """The HF tensors outside the decoder layers with our parameter path and the two
    conversions (the layers: ``_layer_rules``)."""
    ident = lambda a: a  # noqa: E731
    table = [("model.embed_tokens.weight", ("embed",), ident, ident),
             ("model.norm.weight", ("final_norm", "scale"), ident, ident)]
    if not config.tie_word_embeddings:
        table.append(("lm_head.weight", ("lm_head",), lambda w: w.T, lambda p: p.T))
    return table


def hf_names(config: LlamaConfig) -> list[str]:
    """Every HF tensor name a checkpoint of ``config`` holds, in a fixed order."""
    names = [t[0] for t in _name_table(config)]
    for i in range(config.num_layers):
        names += [f"model.layers.{i}.{suffix}" for suffix, *_ in _layer_rules(config)]
    return names


def _set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get_path(tree: Mapping, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


def model_from_hf_tensors(config: LlamaConfig, get_tensor: Callable[[str], Any],
                          names: set[str], *, source: str,
                          shardings: Any = None) -> Llama:
    """Builds a ``Llama`` from HF-named tensors without random initialisation.

    With ``config.scan_layers`` the layers' tensors are stacked into ``[L, ...]`` arrays
    (one host array per parameter, filled layer by layer).

    Args:
      get_tensor: returns the HF tensor (array-like, HF layout) for a name.
      names: the tensor names available (checked up front against the config).
      source: file or directory named in error messages.
      shardings: optional pytree of ``NamedSharding`` matching ``nnx.state(model)``;
        each tensor is placed straight onto its devices.
    """
    missing = sorted(set(hf_names(config)) - names)
    if missing:
        raise CheckpointError(f"{source}: checkpoint lacks {len(missing)} tensor(s) the config "
                              f"needs, first {missing[0]!r}")
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pure: dict = {}
    shapes = nnx.to_pure_dict(state)
    flat_shardings = nnx.to_pure_dict(shardings) if shardings is not None else None
    dtype = np.dtype(config.weight_dtype)

    def read(hf_name, to_ours, want_shape) -> np.ndarray:
        value = np.asarray(to_ours(np.asarray(get_tensor(hf_name))))
        if tuple(value.shape) != tuple(want_shape):
            raise CheckpointError(f"{source}: tensor {hf_name!r} has shape {tuple(value.shape)}, "
                                  f"the config needs {tuple(want_shape)}")
        return value

    def place(path, value: np.ndarray) -> None:
        arr = jnp.asarray(value, dtype=config.weight_dtype)
        if flat_shardings is not None:
            arr = jax.device_put(arr, _get_path(flat_shardings, path))
        _set_path(pure, path, arr)

    for hf_name, path, to_ours, _ in _name_table(config):
        place(path, read(hf_name, to_ours, _get_path(shapes, path).shape))
    for suffix, sub, to_ours, _ in _layer_rules(config):
        if config.scan_layers:
            path = ("layers",) + sub
            want = _get_path(shapes, path).shape
            stacked = np.empty(want, dtype)
            for i in range(config.num_layers):
                stacked[i] = read(f"model.layers.{i}.{suffix}", to_ours, want[1:])
            place(path, stacked)
        else:
            for i in range(config.num_layers):
                path = ("layers", i) + sub
                place(path, read(f"model.layers.{i}.{suffix}", to_ours,
                                 _get_path(shapes, path).shape))
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def hf_tensors_from_model(model: Llama) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (HF layout) of a model; scanned layers are unstacked."""
    if lora_lib.has_adapters(model):
        # Their weights have no HF name: saving would drop them silently.
        raise ValueError("the model has LoRA adapters: merge them first "
                         "(models.lora.merge_adapters) or save them with save_adapters")
    config = model.config
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    def host(path) -> np.ndarray:
        return np.asarray(jax.device_get(_get_path(pure, path)))

    out = {}
    for hf_name, path, _, to_hf in _name_table(config):
        out[hf_name] = np.ascontiguousarray(to_hf(host(path)))
    rules = _layer_rules(config)
    stacked = {sub: host(("layers",) + sub) for _, sub, _, _ in rules} if config.scan_layers else {}
    for i in range(config.num_layers):
        for suffix, sub, _, to_hf in rules:
            layer = stacked[sub][i] if config.scan_layers else host(("layers", i) + sub)
            out[f"model.layers.{i}.{suffix}"] = np.ascontiguousarray(to_hf(layer))
    return out
