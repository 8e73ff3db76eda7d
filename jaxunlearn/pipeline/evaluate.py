"""``jaxunlearn eval --model [NAME=]PATH ... [--retain-model PATH]``: score saved models."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxunlearn.errors import UserError
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.models import load_pretrained, load_tokenizer
from jaxunlearn.pipeline.evaluation import Evaluation
from jaxunlearn.train.mesh import from_config

__all__ = ["parse_model_args", "main_eval"]


def parse_model_args(model_args: Sequence[str]) -> list[tuple[str, Path]]:
    """``["NAME=PATH" | "PATH", ...]`` -> ``[(name, path)]``; the name defaults to the
    path's last component (without ``.gguf``). Paths must exist, names be unique."""
    out: list[tuple[str, Path]] = []
    for arg in model_args:
        name, sep, rest = str(arg).partition("=")
        if sep and name and "/" not in name and os.sep not in name:
            path = Path(rest)
        else:
            name, path = "", Path(arg)
        if not str(path) or str(path) == ".":
            raise UserError(f"--model {arg!r}: expected [NAME=]PATH")
        name = name or (path.stem if path.suffix == ".gguf" else path.name)
        if not name.strip() or any(c.isspace() for c in name):
            raise UserError(f"--model {arg!r}: model name {name!r} must be a non-empty word")
        if not path.exists():
            raise UserError(f"--model {arg!r}: {path} does not exist")
        if name in (n for n, _ in out):
            raise UserError(f"--model {arg!r}: model name {name!r} is used twice")
        out.append((name, path))
    return out


def _tokenizer_source(cfg, model_path: Path) -> Path:
    source = Path(cfg.data.tokenizer) if cfg.data.tokenizer else model_path
    ok = source.suffix == ".gguf" and source.is_file() or (
        source.is_dir() and ((source / "tokenizer.json").is_file()
                             or (source / "tokenizer_config.json").is_file()))
    if not ok:
        where = "data.tokenizer" if cfg.data.tokenizer else f"model {model_path}"
        raise UserError(f"{where}: no tokenizer at {source} (expected tokenizer.json or a "
                        ".gguf file; set data.tokenizer=PATH)")
    return source


def _number(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _headline(result) -> str:
    """The one line printed per model: MUSE's four numbers, else TOFU's FQ and MU."""
    if result.muse is not None:
        m = result.muse
        return (f"forget_verbmem_ROUGE={_number(m.forget_verbmem_rouge, '.3f')} "
                f"forget_knowmem_ROUGE={_number(m.forget_knowmem_rouge, '.3f')} "
                f"retain_knowmem_ROUGE={_number(m.retain_knowmem_rouge, '.3f')} "
                f"privleak={_number(m.privleak, '.2f')}")
    return (f"forget_quality={_number(result.tofu.forget_quality, '.3g')} "
            f"model_utility={_number(result.tofu.model_utility, '.3f')}")


def main_eval(cfg, model_args: Sequence[str], retain_model_path) -> int:
    """Checks every path, tokenizer and the benchmark before loading any model; then
    evaluates the retain model and each ``--model`` in order, one in memory at a time,
    by the rules of :class:`~jaxunlearn.pipeline.evaluation.Evaluation`, and writes
    ``<output_dir>/eval.json`` and the report beside it."""
    options = SuiteConfig.from_run_config(cfg)
    models = parse_model_args(model_args)
    if not models and retain_model_path is None:
        raise UserError("eval: give at least one --model [NAME=]PATH")
    if retain_model_path is not None:
        retain_path = Path(retain_model_path)
        if not retain_path.exists():
            raise UserError(f"--retain-model: {retain_path} does not exist")
        if "retain" in (n for n, _ in models):
            raise UserError("--model: the name 'retain' is reserved for --retain-model")
        models = [("retain", retain_path)] + models
    sources = {name: _tokenizer_source(cfg, path) for name, path in models}
    evaluation = Evaluation(cfg, cfg.data.benchmark, options)
    if evaluation.is_muse:
        if retain_model_path is None:
            print("jaxunlearn eval: no --retain-model, so privleak is relative to AUC 0.5 "
                  "(open-unlearning's default)", file=sys.stderr)
        if cfg.eval.attacks:
            print("jaxunlearn eval: eval.attacks: not run on MUSE (the attacks relearn "
                  "QA splits)", file=sys.stderr)
    elif retain_model_path is None:
        print("jaxunlearn eval: no --retain-model, so forget_quality and privleak are null",
              file=sys.stderr)
    for name, path in models:
        model, _ = load_pretrained(path)
        tokenizer = load_tokenizer(sources[name])
        if name == "retain":
            result = evaluation.add_retain(model, tokenizer)
        else:
            result = evaluation.add(name, model, tokenizer)
        print(f"{name}: {_headline(result)} ({evaluation.seconds[name]:.1f} s)")
        del model
    out_dir = Path(cfg.output_dir)
    report_path = evaluation.write(out_dir, mesh=from_config(cfg.mesh))
    print(f"wrote {out_dir / 'eval.json'} and {report_path}")
    return 0
