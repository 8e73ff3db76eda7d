"""Weights in and out: Hugging Face safetensors directories and GGUF files.

The tensor names and layouts are ``models.hf_layout``'s one table (scanned layers
stacked on load, unstacked on save: the files are the same for both layouts); names
that are not local paths (bundled files, hub ids) resolve through ``models.hub``.
Only safetensors and GGUF are read: never pickle, never ``trust_remote_code``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
from pathlib import Path
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np

from jaxunlearn import resources, storage
from jaxunlearn.errors import CheckpointError, ValidationError
from jaxunlearn.models import gguf, gguf_tokenizer, limits
from jaxunlearn.models import lora as lora_lib
from jaxunlearn.models.hf_layout import hf_tensors_from_model, model_from_hf_tensors
from jaxunlearn.models.hub import resolve_model_path
from jaxunlearn.models.llama import Llama, LlamaConfig
from jaxunlearn.validate import path_component


# safetensors dtype -> bytes per element; weights must be floating point.
_SAFETENSORS_FLOATS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_SAFETENSORS_OTHER = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
                      "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
_MAX_HEADER = 100_000_000  # bytes; the format's own limit


def _check_safetensors_file(f: Path) -> None:
    """Reads the header of safetensors file ``f`` and checks it against the file size.

    Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}}``, then the data. Every
    tensor must be floating point (a header saying ``I32`` for float data loads as
    garbage), and ``end - begin`` must equal ``prod(shape) * itemsize`` inside the data.
    """
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{f}: not a readable safetensors file ({size} bytes, "
                                  "shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"{f}: not a readable safetensors file (header of {n} bytes "
                                  f"in a {size}-byte file)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{f}: not a readable safetensors file (header: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{f}: not a readable safetensors file (header is not an object)")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise CheckpointError(f"{f}: tensor {name!r}: header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype in _SAFETENSORS_OTHER:
            raise CheckpointError(f"{f}: tensor {name!r} has dtype {dtype}; model weights must "
                                  f"be floating point ({', '.join(_SAFETENSORS_FLOATS)})")
        if dtype not in _SAFETENSORS_FLOATS:
            raise CheckpointError(f"{f}: tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise CheckpointError(f"{f}: tensor {name!r}: shape {shape!r} is not a list of "
                                  "sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data):
            raise CheckpointError(f"{f}: not a readable safetensors file (tensor {name!r}: "
                                  f"data_offsets {offsets!r} lie outside the {data}-byte data "
                                  "section; truncated or corrupted)")
        want = math.prod(shape) * _SAFETENSORS_FLOATS[dtype]
        if offsets[1] - offsets[0] != want:
            raise CheckpointError(f"{f}: tensor {name!r} is {dtype}{shape} ({want} bytes) but "
                                  f"its data holds {offsets[1] - offsets[0]} bytes")


def _read_safetensors_dir(path: Path) -> tuple[Callable[[str], Any], set[str], list]:
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from None
        if not isinstance(weight_map, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise CheckpointError(f"{index}: field 'weight_map' must map tensor names to "
                                  "shard file names")
        for shard in set(weight_map.values()):
            # A shard name is read from the file: "../x" would open a file outside the model.
            try:
                path_component(shard, f"{index}: weight_map shard")
            except ValidationError as e:
                raise CheckpointError(str(e)) from None
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no *.safetensors files (only safetensors and GGUF are "
                                  "loaded; pickled .bin checkpoints are refused)")
        weight_map = None
    handles = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise CheckpointError(f"{f}: shard listed in the index is missing")
        _check_safetensors_file(f)
        try:
            handles[name] = safe_open(str(f), framework="flax")
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    if weight_map is None:
        weight_map = {k: name for name, h in handles.items() for k in h.keys()}
    return (lambda k: handles[weight_map[k]].get_tensor(k)), set(weight_map), list(handles.values())


def _config_from_hf(hf: dict, overrides: dict, source: Path) -> LlamaConfig:
    """``LlamaConfig.from_hf`` with its complaints (bad sizes, types, unsupported kinds)
    turned into a ``CheckpointError`` naming the file: they describe the user's file."""
    try:
        return LlamaConfig.from_hf(hf, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        msg = str(e).removeprefix("config.json: ") if not isinstance(e, KeyError) \
            else f"missing field {e}"
        raise CheckpointError(f"{source}: {msg}") from None


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None,
                    param_dtype: str | None = None, scan_layers: bool | None = None,
                    remat: str | None = None, shardings: Any = None
                    ) -> tuple[Llama, LlamaConfig]:
    """Loads ``(model, config)`` from an HF directory (config.json + safetensors) or a ``.gguf``.

    ``path`` may also name a bundled model (``smollm2-135m``). ``dtype``/``param_dtype``
    override the compute and storage dtypes, ``scan_layers``/``remat`` the layer layout
    and rematerialisation (``LlamaConfig``; None keeps its defaults).
    """
    path = resolve_model_path(path)
    overrides = {k: v for k, v in (("dtype", dtype), ("param_dtype", param_dtype),
                                   ("scan_layers", scan_layers), ("remat", remat))
                 if v is not None}
    if not path.exists():
        raise CheckpointError(f"{path}: model path does not exist")
    if (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").exists():
        return _load_adapter_dir(path, overrides, shardings)
    if path.suffix == ".gguf":
        ckpt = gguf.read_gguf(path)
        config = _config_from_hf(ckpt.config, overrides, path)
        tensors = dict(ckpt.tensors)
        if config.tie_word_embeddings:
            tensors.pop("lm_head.weight", None)
        model = model_from_hf_tensors(config, tensors.__getitem__, set(tensors),
                                      source=str(path), shardings=shardings)
        return model, config
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json (expected a Hugging Face model directory "
                              "or a .gguf file)")
    try:
        hf = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: malformed JSON ({e})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    # absurd or non-finite metadata is refused before any tensor is read or allocated
    limits.check_hf_config(hf, str(cfg_file), error=CheckpointError)
    config = _config_from_hf(hf, overrides, cfg_file)
    get, names, _ = _read_safetensors_dir(path)
    model = model_from_hf_tensors(config, get, names, source=str(path), shardings=shardings)
    return model, config


def save_pretrained(model: Llama, config: LlamaConfig, path: str | os.PathLike, *,
                    tokenizer=None, extra_json: Mapping[str, Any] | None = None,
                    field: str = "output") -> Path:
    """Writes an HF directory (config.json + model.safetensors) that
    ``transformers.AutoModelForCausalLM.from_pretrained`` loads as the same model.

    Everything (the tokenizer and ``extra_json``, ``{file name: object}`` such as
    ``unlearn.json``, included) is written into a staging directory that is renamed
    into place last (``storage.commit_dir``), so a killed or interrupted save leaves the
    old directory or the complete new one. ``path`` must be absent, empty, or a
    directory saved here before: a foreign directory, a file or a link is refused
    (naming ``field``) before any work. Refuses non-finite weights, and a file system
    without room for the weights.
    """
    from safetensors.numpy import save_file

    final = _checked_target(path, field, extra_json)
    tensors = _finite(final, hf_tensors_from_model(model))
    nbytes = sum(t.size for t in tensors.values()) * (
        2 if config.param_dtype == "bfloat16" else 4)
    resources.check_fits(nbytes + (1 << 20), resources.free_disk(final.parent),
                         subject=f"{field}: writing {final}", estimate="disk for the weights",
                         where="the free space of its file system")

    def write(tmp: Path) -> None:
        out = tensors
        if config.param_dtype == "bfloat16":
            # safetensors.numpy knows ml_dtypes' bfloat16 as BF16.
            out = {k: v.astype(jnp.bfloat16) for k, v in tensors.items()}
        save_file(out, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        # NaN in config.json would be invalid JSON (and a different model as null).
        (tmp / "config.json").write_text(storage.json_text(
            config.to_hf(), indent=2, sort_keys=True, nonfinite="error"), encoding="utf-8")

    return _commit_model_dir(final, write, tokenizer=tokenizer, extra_json=extra_json,
                             field=field)


def _checked_target(path: str | os.PathLike, field: str,
                    extra_json: Mapping[str, Any] | None) -> Path:
    """The directory a save may write (``storage.check_dir_target``), checked with the
    names of its ``extra_json`` files before any work."""
    final = storage.check_dir_target(Path(path), field)
    for name in extra_json or {}:
        path_component(name, "extra_json")
    return final


def _finite(final: Path, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for name, t in tensors.items():
        if not np.all(np.isfinite(t.astype(np.float32))):
            raise CheckpointError(f"{final}: refusing to save non-finite weights ({name})")
    return tensors


def _commit_model_dir(final: Path, write: Callable[[Path], None], *, tokenizer,
                      extra_json: Mapping[str, Any] | None, field: str) -> Path:
    """``write(staging dir)``, then the tokenizer and ``extra_json`` files beside it, then
    the staging directory renamed into place (``storage.commit_dir``); removed on any
    failure, so ``final`` is the old directory or the complete new one."""
    tmp = storage.staging_dir(final)
    try:
        write(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(storage.json_text(obj, indent=2, sort_keys=True),
                                    encoding="utf-8")
        storage.commit_dir(tmp, final, field=field)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# tokenizer_config.json's ``tokenizer_class`` of a tokenizer that is its tokenizer.json
# and nothing more (no model-specific subclass logic): transformers 5 writes the first.
_PLAIN_FAST_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _tokenizer_class(path: Path) -> str | None:
    """``tokenizer_class`` from ``path``'s tokenizer_config.json when it has a
    tokenizer.json beside it, else None (unreadable files are left to transformers)."""
    if not (path / "tokenizer.json").is_file():
        return None
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config.get("tokenizer_class") if isinstance(config, dict) else None


def load_tokenizer(path: str | os.PathLike):
    """``transformers.PreTrainedTokenizerFast`` from an HF directory, a ``.gguf`` file or a
    bundled model name."""
    path = resolve_model_path(path)
    if path.suffix == ".gguf":
        return gguf_tokenizer.tokenizer_from_gguf(path)
    from transformers import PreTrainedTokenizerFast

    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise CheckpointError(f"{path}: no tokenizer.json / tokenizer_config.json")
    # A plain fast tokenizer (what save_pretrained writes) loads directly: AutoTokenizer
    # (even importing it) pulls in transformers' model-config registry: 4.7 s of CPU per
    # process against 0.4 s (measured, transformers 5.23), for the same tokenizer.
    if _tokenizer_class(path) in _PLAIN_FAST_TOKENIZERS:
        cls = PreTrainedTokenizerFast
    else:
        from transformers import AutoTokenizer as cls
    try:
        return cls.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # transformers raises many types for a bad config/tokenizer file
        first = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()
        raise CheckpointError(f"{path}: cannot load the tokenizer ({first})") from None


# PEFT's file names for a LoRA adapter directory.
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


def save_adapters(model: Llama, lora: lora_lib.LoraConfig, path: str | os.PathLike, *,
                  base_model: str, tokenizer=None, extra_json: Mapping[str, Any] | None = None,
                  field: str = "output") -> Path:
    """Writes ``model``'s LoRA adapters alone as a PEFT directory: ``adapter_config.json``
    (``r``, ``lora_alpha``, ``target_modules``, ``base_model_name_or_path = base_model``)
    and ``adapter_model.safetensors`` (``models.lora.peft_tensors``, float32), with the
    tokenizer and ``extra_json``; staged and committed like :func:`save_pretrained`.
    ``load_pretrained`` on the directory loads ``base_model`` with the adapters merged.
    """
    from safetensors.numpy import save_file

    final = _checked_target(path, field, extra_json)
    tensors = lora_lib.peft_tensors(model)
    if not tensors:
        raise ValueError("save_adapters: the model has no LoRA adapters")
    _finite(final, tensors)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(storage.json_text(
            lora_lib.peft_config(lora, base_model), indent=2, sort_keys=True), encoding="utf-8")

    return _commit_model_dir(final, write, tokenizer=tokenizer, extra_json=extra_json,
                             field=field)


def load_adapters(model: Llama, path: str | os.PathLike) -> tuple[Llama, lora_lib.LoraConfig]:
    """``(copy of model with the PEFT adapters of directory path, their LoraConfig)``."""
    path = Path(path)
    cfg_file = path / ADAPTER_CONFIG
    try:
        peft = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file}: unreadable ({e})") from None
    if not isinstance(peft, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object")
    lora = lora_lib.config_from_peft(peft, str(cfg_file))
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{path}: no {ADAPTER_WEIGHTS}")
    _check_safetensors_file(weights)
    from safetensors import safe_open

    try:
        handle = safe_open(str(weights), framework="flax")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    return lora_lib.adapters_from_peft(model, lora, handle.get_tensor, set(handle.keys()),
                                       source=str(weights)), lora


def _load_adapter_dir(path: Path, overrides: dict, shardings) -> tuple[Llama, LlamaConfig]:
    """A PEFT adapter directory as a plain model: its base with the adapters merged in."""
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: unreadable ({e})") from None
    if not isinstance(base, str) or not base:
        raise CheckpointError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path")
    base_path = resolve_model_path(base)
    if (base_path / ADAPTER_CONFIG).is_file() and not (base_path / "config.json").exists():
        raise CheckpointError(f"{path}: base model {base} is itself an adapter directory")
    model, config = load_pretrained(base_path, shardings=shardings, **overrides)
    model, _ = load_adapters(model, path)
    return lora_lib.merge_adapters(model), config
