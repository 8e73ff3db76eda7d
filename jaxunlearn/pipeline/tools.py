"""The commands that neither train nor evaluate: write the synthetic benchmark, answer a
prompt greedily, convert a model to a safetensors directory."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from jaxunlearn import methods, storage
from jaxunlearn.config import DataConfig
from jaxunlearn.data import synthetic
from jaxunlearn.data.batch import encode_prompt
from jaxunlearn.eval.generate import generate_texts
from jaxunlearn.models import load_pretrained, load_tokenizer, save_pretrained

__all__ = ["generate_data", "generate_answer", "convert", "method_lines", "config_yaml"]


def generate_data(out: Path, *, people: int | None, qa_per_person: int | None, seed: int,
                  overwrite: bool) -> Path:
    """``jaxunlearn generate-data``: the benchmark with ``DataConfig``'s sizes (so that
    ``train`` accepts it) unless ``people`` / ``qa_per_person`` say otherwise."""
    data = DataConfig()
    cfg = synthetic.SyntheticConfig(
        num_people=people if people is not None else data.people,
        qa_per_person=qa_per_person if qa_per_person is not None else data.qa_per_person,
        num_world_facts=data.num_world_facts,
        canaries_per_repetition=data.canaries_per_repetition, seed=seed)
    path = synthetic.write_benchmark(synthetic.generate(cfg), out, overwrite=overwrite)
    print(f"wrote benchmark ({cfg.num_people} people, seed {cfg.seed}) to {path}")
    return path


def generate_answer(model_source: str, prompt: str, *, max_new_tokens: int) -> str:
    """``jaxunlearn generate``: the greedy answer of a model (preset, HF dir or .gguf)."""
    model, _ = load_pretrained(model_source)
    tokenizer = load_tokenizer(model_source)
    ids = encode_prompt(tokenizer, prompt).tolist()
    (text,) = generate_texts(model, tokenizer, [ids], max_new_tokens=max_new_tokens,
                             batch_size=1)
    print(f"Q: {prompt}\nA: {text}")
    return text


def convert(source: Path, out: Path) -> Path:
    """``jaxunlearn convert``: a GGUF file or HF directory to a safetensors directory.

    ``out`` must be absent, empty, or a directory this tool wrote (``storage``): it is
    refused before anything is loaded, and replaced only once the new one is complete.
    """
    storage.check_dir_target(out, "--out")  # before loading anything
    model, config = load_pretrained(source)
    tokenizer = load_tokenizer(source)
    path = save_pretrained(model, config, out, tokenizer=tokenizer, field="--out")
    print(f"wrote {path}")
    return path


def method_lines() -> list[str]:
    """``jaxunlearn methods``: one line per registered method, from the registry:
    ``name (kind): hyper-parameter=default ... | reference``."""
    lines = []
    for name in methods.method_names():
        method = methods.get_method(name)
        params = " ".join(f"{f.name}={getattr(method, f.name)}"
                          for f in dataclasses.fields(method))
        lines.append(f"{name} ({method.kind}): {params or '-'} | {method.reference}")
    return lines


def config_yaml(cfg) -> str:
    """``--print-config``: the resolved run configuration as YAML (loadable by ``--config``)."""
    plain = json.loads(json.dumps(cfg.to_dict()))  # tuples -> lists, as YAML reads them back
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=False)
