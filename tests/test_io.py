"""models.io: loading and saving checkpoints safely. Only safetensors (and GGUF) are read:
a directory with only a booby-trapped ``pytorch_model.bin`` is refused and the pickle
never runs; a tokenizer asking for its own Python code does not get it; an index file
cannot point a shard outside the model directory."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from flax import nnx

from jaxunlearn.data.tokenizer import train_tokenizer
from jaxunlearn.errors import CheckpointError
from jaxunlearn.models import Llama, load_pretrained, load_tokenizer, save_pretrained
from jaxunlearn.models.hub import is_hub_id, resolve_model_path
from jaxunlearn.models.presets import tiny


class _Trap:
    """Unpickling this creates ``path``: proof that something unpickled the file."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def tiny_hf_dir(tmp_path) -> Path:
    config = tiny(vocab_size=64)
    return save_pretrained(Llama(config, rngs=nnx.Rngs(0)), config, tmp_path / "model")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Makes every pickle entry point (and torch.load) fail loudly if anything calls it."""
    import torch

    def boom(*args, **kwargs):
        raise AssertionError("something tried to unpickle")

    for mod, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"),
                      (torch, "load")):
        monkeypatch.setattr(mod, name, boom)


def test_directory_with_only_pytorch_model_bin_is_refused(tmp_path, tiny_hf_dir, no_unpickling):
    marker = tmp_path / "unpickled"
    (tiny_hf_dir / "model.safetensors").unlink()
    (tiny_hf_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors.*pickled \.bin checkpoints "
                                              r"are refused"):
        load_pretrained(tiny_hf_dir)
    assert not marker.exists()


def test_trap_really_fires_when_unpickled(tmp_path):
    """The check above is meaningful: unpickling the trap does create the marker."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()


def test_tokenizer_asking_for_remote_code_does_not_run_it(tmp_path, tiny_hf_dir):
    """A tokenizer_config/config.json whose ``auto_map`` points at a Python file in the
    directory: ``load_tokenizer`` either ignores it or refuses, but never imports it."""
    marker = tmp_path / "remote_code_ran"
    train_tokenizer(["alpha beta gamma"] * 8, vocab_size=300).save_pretrained(str(tiny_hf_dir))
    (tiny_hf_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "from transformers import LlamaConfig\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n")
    for name, extra in (("tokenizer_config.json", {"tokenizer_class": "EvilTokenizer",
                                                   "auto_map": {"AutoTokenizer":
                                                                [None, "evil.EvilTokenizer"]}}),
                        ("config.json", {"model_type": "evil",
                                         "auto_map": {"AutoConfig": "evil.EvilConfig"}})):
        path = tiny_hf_dir / name
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    try:
        load_tokenizer(tiny_hf_dir)
    except CheckpointError as e:
        assert str(tiny_hf_dir) in str(e)
    assert not marker.exists(), "the directory's Python code was imported"



def test_plain_fast_tokenizer_loads_as_autotokenizer_would(tiny_hf_dir, monkeypatch):
    """A saved fast tokenizer (tokenizer.json, ``tokenizer_class`` TokenizersBackend) loads
    without AutoTokenizer (whose registry imports cost seconds) and encodes exactly as
    AutoTokenizer's does; a model-specific class still goes through AutoTokenizer."""
    from transformers import AutoTokenizer

    tok = train_tokenizer(["alpha beta gamma delta"] * 8, vocab_size=300)
    tok.save_pretrained(str(tiny_hf_dir))
    auto = AutoTokenizer.from_pretrained(str(tiny_hf_dir))
    calls = []
    original = AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(
        lambda cls, *a, **k: calls.append(a) or original(cls, *a, **k)))
    ours = load_tokenizer(tiny_hf_dir)
    assert calls == []
    texts = ["alpha beta", "gamma  delta alpha", "unknown words here"]
    assert [ours(t)["input_ids"] for t in texts] == [auto(t)["input_ids"] for t in texts]
    chat = [{"role": "user", "content": "alpha?"}, {"role": "assistant", "content": "beta"}]
    assert ours.apply_chat_template(chat) == auto.apply_chat_template(chat)
    assert ours.special_tokens_map == auto.special_tokens_map
    config = tiny_hf_dir / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "tokenizer_class": "LlamaTokenizerFast"}))
    load_tokenizer(tiny_hf_dir)
    assert calls == [(str(tiny_hf_dir),)]


def test_safetensors_index_cannot_point_outside_the_model(tmp_path, tiny_hf_dir):
    outside = tmp_path / "outside.safetensors"
    (tiny_hf_dir / "model.safetensors").rename(outside)
    from safetensors import safe_open

    with safe_open(str(outside), framework="numpy") as f:
        keys = list(f.keys())
    (tiny_hf_dir / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: "../outside.safetensors" for k in keys}}))
    with pytest.raises(CheckpointError, match="weight_map shard.*plain name"):
        load_pretrained(tiny_hf_dir)


def test_hub_model_id_offline_fails_in_one_line(tmp_path, monkeypatch):
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported; an empty cache
    # holds nothing, so the id cannot be had: one line saying why, no traceback, no wait.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert is_hub_id("someone/some-model") and not is_hub_id(str(tmp_path))
    with pytest.raises(CheckpointError) as e:
        resolve_model_path("someone/some-model")
    assert "someone/some-model" in str(e.value) and "HF_HUB_OFFLINE=1" in str(e.value)
    assert len(str(e.value).splitlines()) == 1
