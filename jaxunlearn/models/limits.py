"""Checks on a model's declared sizes, from its metadata, before anything is allocated.

A ``config.json`` (or GGUF header) is a promise about tensors not yet read. Building the
parameter table of ``"num_hidden_layers": 1000000000`` alone took gigabytes before any
check ran. :func:`check_hf_config` validates the HF ``config.json`` dict that both
loaders produce: every size an integer in ``[1, 2^31 - 1]``, every float finite and
positive, and the parameter count (:func:`hf_param_count`) small enough for this
machine's memory in float32 (the loaders hold float32 copies while converting). The
message names the field and number that make the model too large, e.g.

    config.json: num_hidden_layers=1000000000 would need ~2.1e+05 GB of parameters
    (float32), more than this machine's memory (25 GB)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from jaxunlearn import resources

__all__ = ["SIZE_FIELDS", "MAX_DIM", "hf_param_count", "check_hf_config"]

# HF field -> required. Optional ones may be absent or null (defaults apply).
SIZE_FIELDS = {"vocab_size": True, "hidden_size": True, "intermediate_size": True,
               "num_hidden_layers": True, "num_attention_heads": True,
               "num_key_value_heads": False, "head_dim": False,
               "max_position_embeddings": False}
POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")
MAX_DIM = 2**31 - 1  # XLA shapes and our index arithmetic are int32-safe below this


def _size(hf: Mapping, key: str, default: int | None = None) -> int:
    v = hf.get(key)
    return default if v is None else int(v)


def hf_param_count(hf: Mapping[str, Any]) -> int:
    """Parameters of a Llama-family ``config.json``: embeddings (and an untied head),
    per layer ``D·(N + 2K)·H + N·H·D + 3·D·F + 2·D`` (+ q/k/v biases), and the final norm."""
    d, f, v = hf["hidden_size"], hf["intermediate_size"], hf["vocab_size"]
    layers, n = hf["num_hidden_layers"], hf["num_attention_heads"]
    k = _size(hf, "num_key_value_heads", n) or n
    h = _size(hf, "head_dim", d // n) or d // n
    tied = bool(hf.get("tie_word_embeddings", hf.get("model_type", "llama") != "llama"))
    bias = bool(hf.get("attention_bias", hf.get("model_type") == "qwen2"))
    per_layer = d * (n + 2 * k) * h + n * h * d + 3 * d * f + 2 * d + (bias * (n + 2 * k) * h)
    return v * d * (1 if tied else 2) + layers * per_layer + d


def _largest_factor(hf: Mapping[str, Any]) -> str:
    """The size field whose reduction to 1 shrinks the parameter count the most."""
    total = hf_param_count(hf)
    best, best_gain = "num_hidden_layers", -1
    for key in SIZE_FIELDS:
        if hf.get(key) is None or key == "max_position_embeddings":
            continue
        gain = total - hf_param_count({**hf, key: 1})
        if gain > best_gain:
            best, best_gain = key, gain
    return best


def check_hf_config(hf: Mapping[str, Any], source: str, *, memory: int | None = None,
                    error: type[Exception] = ValueError) -> None:
    """Refuses a model config whose sizes are malformed or cannot fit in memory.

    Args:
      hf: the ``config.json`` dict (from the file, or built from GGUF metadata).
      source: the file named in messages.
      memory: bytes to compare with (default: :func:`resources.physical_memory`).
      error: the class raised for a malformed field (each loader passes its own).
    Raises:
      error: a size or float field of the wrong type or out of range.
      resources.ResourceError: the float32 parameters exceed ``memory``.
    """
    for key, required in SIZE_FIELDS.items():
        v = hf.get(key)
        if v is None:
            if required:
                raise error(f"{source}: missing field {key!r}")
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise error(f"{source}: field {key!r} must be an integer, got {v!r:.40}")
        if not 1 <= v <= MAX_DIM:
            raise error(f"{source}: {key}={v} is out of range (1 to {MAX_DIM})")
    for key in POSITIVE_FLOATS:
        v = hf.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v <= 0:
            raise error(f"{source}: {key}={v!r} must be a finite number > 0")
    scaling = hf.get("rope_scaling")
    if isinstance(scaling, Mapping):
        for key, v in scaling.items():
            if isinstance(v, float) and not math.isfinite(v):
                raise error(f"{source}: rope_scaling.{key}={v!r} must be finite")
    params = hf_param_count(hf)
    key = _largest_factor(hf)
    resources.check_fits(params * 4, resources.physical_memory() if memory is None else memory,
                         subject=f"{source}: {key}={hf[key]}",
                         estimate=f"parameters ({params:.3g} in float32)",
                         where="this machine's memory")
