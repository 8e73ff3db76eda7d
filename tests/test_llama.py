"""Logit parity of jaxunlearn.models.Llama with transformers' PyTorch models, in both
layer layouts (scanned and unrolled), and what the layouts must share."""

import json

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


LAYOUTS = pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])


@LAYOUTS
@pytest.mark.parametrize("kind", sorted(FAMILIES))
def test_logits_match_transformers(kind, scan, tmp_path):
    hf = _hf_model(kind, tmp_path)
    model, config = load_pretrained(tmp_path / "hf", scan_layers=scan)
    assert config.model_type == FAMILIES[kind]["model_type"] and config.scan_layers == scan
    ids, mask = _batch(config.vocab_size, np.random.default_rng(0))
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    ref = _hf_logits(hf, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)
    assert np.isfinite(ours).all()


@LAYOUTS
@pytest.mark.parametrize("kind", ["llama3-gqa-rope-scaling", "qwen2-qkv-bias"])
def test_save_roundtrip_through_transformers(kind, scan, tmp_path):
    _hf_model(kind, tmp_path)
    model, config = load_pretrained(tmp_path / "hf", scan_layers=scan)
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


@LAYOUTS
def test_kv_cache_decoding_equals_full_recomputation(scan):
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, scan_layers=scan)
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


@LAYOUTS
def test_a_decoding_step_writes_the_donated_cache_in_place(scan):
    """No copy of the whole ``[L, B, S, K, H]`` cache in a compiled decoding step: a cache
    updated per layer inside the layer loop was copied at every layer on the CPU (1.8 s a
    token at SmolLM2-135M, batch 16, against 0.3 s written once after the loop)."""
    import functools

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=4,
                         num_heads=4, num_kv_heads=2, scan_layers=scan)
    graphdef, state = nnx.split(Llama(config, rngs=nnx.Rngs(0)))

    @functools.partial(jax.jit, donate_argnums=(1,))
    def step(state, cache, ids, mask):
        return nnx.merge(graphdef, state).forward(ids, mask, cache=cache).cache

    hlo = step.lower(state, KVCache.init(config, 3, 40), jnp.zeros((3, 1), jnp.int32),
                     jnp.ones((3, 40), jnp.int32)).compile().as_text()
    copies = [line for line in hlo.splitlines() if "f32[4,3,40,2,8]" in line and " copy(" in line]
    assert copies == []


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
    with pytest.raises(ValueError, match="LlamaConfig.remat must be one of none, full"):
        LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                    num_heads=2, num_kv_heads=2, remat="sometimes")


@pytest.mark.parametrize("blocks", [2, 4])
def test_causal_query_blocks_equal_one_block_in_value_and_gradient(blocks):
    """``_attention(causal_blocks=n)`` skips only key tiles a causal mask hides."""
    from jaxunlearn.models.block import _attention, _causal_blocks

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


# ------------------------------------------------------------------ scanned and unrolled layers

SMALL = LlamaConfig(vocab_size=53, hidden_size=32, intermediate_size=48, num_layers=3,
                    num_heads=4, num_kv_heads=2)


def test_a_seed_gives_the_same_weights_in_both_layouts_stacked_on_a_layers_axis():
    scanned = nnx.to_pure_dict(nnx.state(Llama(SMALL, rngs=nnx.Rngs(4))))
    unrolled = nnx.to_pure_dict(nnx.state(Llama(SMALL.replace(scan_layers=False),
                                                rngs=nnx.Rngs(4))))
    L, D, N, H, F = 3, 32, 4, 8, 48
    layers = scanned["layers"]
    assert layers["attn"]["q"].shape == (L, D, N, H) and layers["attn"]["o"].shape == (L, N, H, D)
    assert layers["mlp"]["down"].shape == (L, F, D) and layers["input_norm"]["scale"].shape == (L, D)
    assert sorted(unrolled["layers"]) == [0, 1, 2]
    for i in range(L):
        jax.tree.map(lambda s, u: np.testing.assert_array_equal(np.asarray(s)[i], np.asarray(u)),
                     layers, unrolled["layers"][i])
    np.testing.assert_array_equal(scanned["embed"], unrolled["embed"])
    # The stacked axis carries the logical sharding name "layers" first.
    q = nnx.state(Llama(SMALL, rngs=nnx.Rngs(4)))["layers"]["attn"]["q"]
    assert q.get_metadata()["out_sharding"] == ("layers", "embed", "heads", "head_dim")


def _loss_and_grad(config, params_from, ids, mask, hidden_layer=None):
    """Value and gradient of a loss reading the logits and (optionally) a hidden layer."""
    model = Llama(config, rngs=nnx.Rngs(5))
    graphdef, params = nnx.split(model, nnx.Param)
    if params_from is not None:
        params = params_from

    def loss(p):
        out = nnx.merge(graphdef, p).forward(ids, mask, hidden_layer=hidden_layer)
        logp = jax.nn.log_softmax(out.logits, axis=-1)
        value = -jnp.sum(jnp.take_along_axis(logp, ids[..., None], -1)[..., 0] * mask)
        if hidden_layer is not None:
            value = value + jnp.sum(jnp.sin(out.hidden) * mask[..., None])
        return value

    return jax.jit(jax.value_and_grad(loss))(params), params


def _stack(unrolled_params):
    """The unrolled layout's parameters in the scanned layout (layer i -> row i)."""
    pure = nnx.to_pure_dict(unrolled_params)
    layers = [pure["layers"][i] for i in sorted(pure["layers"])]
    return {**pure, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


@pytest.mark.parametrize("remat", ["none", "full", "dots_saveable"])
def test_scanned_equals_unrolled_in_value_and_gradient_for_every_remat_policy(remat):
    rng = np.random.default_rng(6)
    ids = jnp.asarray(rng.integers(0, 53, (2, 9)), jnp.int32)
    mask = jnp.asarray([[1] * 9, [0, 0] + [1] * 7], jnp.float32)
    (v0, g0), _ = _loss_and_grad(SMALL.replace(scan_layers=False), None, ids, mask, hidden_layer=1)
    (v1, g1), _ = _loss_and_grad(SMALL.replace(remat=remat), None, ids, mask, hidden_layer=1)
    np.testing.assert_allclose(float(v1), float(v0), rtol=1e-6)
    scale = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(g0))
    for a, b in zip(jax.tree.leaves(_stack(g0)), jax.tree.leaves(nnx.to_pure_dict(g1))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * scale, rtol=0)


def test_hidden_layer_is_the_residual_stream_after_that_block():
    ids = jnp.arange(14).reshape(2, 7) % 53
    unrolled = Llama(SMALL.replace(scan_layers=False), rngs=nnx.Rngs(7))
    scanned = Llama(SMALL, rngs=nnx.Rngs(7))
    # Reference: the unrolled blocks run by hand up to block 1.
    x = jnp.take(unrolled.embed[...], ids, axis=0)
    positions = jnp.broadcast_to(jnp.arange(7), (2, 7))
    key_mask = jnp.broadcast_to(jnp.tril(jnp.ones((7, 7), bool)), (2, 7, 7))
    from jaxunlearn.models.block import rope_frequencies

    for block in list(unrolled.layers)[:2]:
        x, _ = block(x, positions, key_mask, rope_frequencies(SMALL))
    got = scanned.forward(ids, hidden_layer=1).hidden
    np.testing.assert_allclose(np.asarray(got), np.asarray(x), atol=1e-5)
    assert scanned.forward(ids).hidden is None
    with pytest.raises(ValueError, match=r"hidden_layer must be in \[0, 3\)"):
        scanned.forward(ids, hidden_layer=3)


def _program_size(num_layers, scan):
    """Matrix products in the lowered (StableHLO) gradient program at a depth."""
    config = SMALL.replace(num_layers=num_layers, scan_layers=scan)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))), nnx.Param)
    ids = jax.ShapeDtypeStruct((2, 8), jnp.int32)
    grad = jax.jit(jax.grad(lambda p, x: nnx.merge(graphdef, p)(x).sum()))
    return grad.lower(params, ids).as_text().count("stablehlo.dot_general")


def test_scanned_program_size_does_not_grow_with_depth():
    assert _program_size(16, True) == _program_size(2, True) > 0
    assert _program_size(16, False) > 4 * _program_size(2, False)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_load_then_save_reproduces_the_checkpoint_bit_for_bit_in_both_layouts(dtype, tmp_path):
    _hf_model("qwen2-qkv-bias", tmp_path)
    model, config = load_pretrained(tmp_path / "hf", param_dtype=dtype)
    save_pretrained(model, config, tmp_path / "a")
    first = (tmp_path / "a" / "model.safetensors").read_bytes()
    for scan in (True, False):
        again, again_config = load_pretrained(tmp_path / "a", scan_layers=scan, param_dtype=dtype)
        save_pretrained(again, again_config, tmp_path / f"b{scan}")
        assert (tmp_path / f"b{scan}" / "model.safetensors").read_bytes() == first
        assert json.loads((tmp_path / f"b{scan}" / "config.json").read_text()) == \
            json.loads((tmp_path / "a" / "config.json").read_text())
