"""Logit parity of jaxunlearn.models.Llama with transformers' PyTorch models."""

import numpy as np
import pytest
import torch
import transformers

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.models import Llama, LlamaConfig, KVCache, load_pretrained, save_pretrained

torch.manual_seed(0)

FAMILIES = {
    "llama2-untied-mha": dict(model_type="llama", num_attention_heads=4, num_key_value_heads=4,
                              tie_word_embeddings=False),
    "llama3-gqa-rope-scaling": dict(model_type="llama", num_attention_heads=4,
                                    num_key_value_heads=2, tie_word_embeddings=True,
                                    rope_theta=500000.0,
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 16}),
    "smollm2-tied-gqa": dict(model_type="llama", num_attention_heads=6, num_key_value_heads=2,
                             tie_word_embeddings=True, rope_theta=100000.0, hidden_size=48),
    "qwen2-qkv-bias": dict(model_type="qwen2", num_attention_heads=4, num_key_value_heads=2,
                           tie_word_embeddings=False),
    "mistral-gqa": dict(model_type="mistral", num_attention_heads=4, num_key_value_heads=1,
                        tie_word_embeddings=False, sliding_window=None),
}


def _hf_model(kind, tmp_path):
    kw = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
              max_position_embeddings=128, rms_norm_eps=1e-6)
    kw.update(FAMILIES[kind])
    cfg = transformers.AutoConfig.for_model(**kw)
    model = transformers.AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():  # random everything, norms and biases included
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    return model


def _batch(vocab, rng):
    ids = rng.integers(0, vocab, size=(3, 11))
    mask = np.ones_like(ids)
    mask[1, :4] = 0  # left padding
    mask[2, 8:] = 0  # right padding
    return ids, mask


def _hf_logits(model, ids, mask):
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(pos))
    return out.logits.numpy()


@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_logits_match_transformers(kind, tmp_path):
    hf = _hf_model(kind, tmp_path)
    model, config = load_pretrained(tmp_path / "hf")
    assert config.model_type == FAMILIES[kind]["model_type"]
    ids, mask = _batch(config.vocab_size, np.random.default_rng(0))
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = _hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    assert np.isfinite(ours).all()


@pytest.mark.parametrize("kind", ["llama3-gqa-rope-scaling", "qwen2-qkv-bias"])
def test_save_roundtrip_through_transformers(kind, tmp_path):
    _hf_model(kind, tmp_path)
    model, config = load_pretrained(tmp_path / "hf")
    # Perturb so the saved weights are ours, not a copy of the input files.
    state = nnx.state(model, nnx.Param)
    state = jax.tree.map(lambda x: x + 0.01, state)
    nnx.update(model, state)
    save_pretrained(model, config, tmp_path / "ours")
    reloaded_hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").float().eval()
    ids, mask = _batch(config.vocab_size, np.random.default_rng(1))
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = _hf_logits(reloaded_hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    assert not list(tmp_path.glob(".ours.tmp-*")), "temporary save directory left behind"


def test_positions_default_counts_real_tokens():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=1,
                         num_heads=4, num_kv_heads=2)
    model = Llama(config, rngs=nnx.Rngs(0))
    ids = jnp.array([[5, 6, 7, 8]])
    padded = jnp.array([[0, 0, 5, 6, 7, 8]])
    mask = jnp.array([[0, 0, 1, 1, 1, 1]])
    np.testing.assert_allclose(model(padded, mask)[:, 2:], model(ids), atol=1e-5)


def test_kv_cache_decoding_equals_full_recomputation():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2)
    model = Llama(config, rngs=nnx.Rngs(1))
    ids = jnp.array([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 9, 10, 11]])
    mask = jnp.array([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    full = model(ids, mask)
    # Prefill 5 tokens, then feed the rest one at a time.
    cache = KVCache.init(config, batch=2, length=8)
    out = model.forward(ids[:, :5], mask, cache=cache)
    steps = [out.logits]
    cache = out.cache
    for t in range(5, 8):
        out = model.forward(ids[:, t:t + 1], mask, cache=cache)
        cache = out.cache
        steps.append(out.logits)
    inc = jnp.concatenate(steps, axis=1)
    real = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full)[real], atol=1e-5)


def test_bfloat16_compute_close_to_float32():
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2)
    model = Llama(config, rngs=nnx.Rngs(2))
    bf = nnx.merge(*nnx.split(Llama(config.replace(dtype="bfloat16"), rngs=nnx.Rngs(2))))
    ids = jnp.arange(12).reshape(2, 6)
    a, b = model(ids), bf(ids)
    assert b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(b, np.float32), np.asarray(a), atol=5e-2)


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="num_kv_heads"):
        LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                    num_heads=3, num_kv_heads=2)
    with pytest.raises(ValueError, match="dtype"):
        LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                    num_heads=2, num_kv_heads=2, dtype="float8")


@pytest.mark.parametrize("blocks", [2, 4])
def test_causal_query_blocks_equal_one_block_in_value_and_gradient(blocks):
    """``_attention(causal_blocks=n)`` skips only key tiles a causal mask hides."""
    from jaxunlearn.models.llama import _attention, _causal_blocks

    assert [_causal_blocks(t) for t in (64, 128, 256, 512, 2048, 96)] == [1, 2, 4, 4, 4, 1]
    rng = np.random.default_rng(blocks)
    B, T, N, K, H = 2, 128, 4, 2, 8
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, H)), jnp.float32) for n in (N, K, K))
    lengths = np.array([100, 128])
    mask = jnp.asarray(np.tril(np.ones((T, T), bool))[None]
                       & (np.arange(T)[None, None, :] < lengths[:, None, None]))
    w = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)

    def loss(q, k, v, n):
        return jnp.sum(w * _attention(q, k, v, mask, causal_blocks=n))

    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    (v1, g1), (vn, gn) = grad(q, k, v, 1), grad(q, k, v, blocks)
    np.testing.assert_allclose(float(vn), float(v1), rtol=1e-5)
    for a, b in zip(g1, gn):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    with pytest.raises(ValueError, match="causal_blocks=3"):
        _attention(q, k, v, mask, causal_blocks=3)
