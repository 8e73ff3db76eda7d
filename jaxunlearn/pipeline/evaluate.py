"""``jaxunlearn eval --model [NAME=]PATH ... [--logs NAME=PATH ...] [--retain-model PATH |
--retain-logs PATH]``: score saved models, or read published per-question TOFU logs."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jaxunlearn.errors import UserError
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.tofu_logs import TofuLogs, logs_result, read_tofu_logs
from jaxunlearn.models import load_pretrained, load_tokenizer
from jaxunlearn.models.hub import is_hub_id, resolve_model_path
from jaxunlearn.pipeline.evaluation import Evaluation
from jaxunlearn.pipeline.provision import require_benchmark
from jaxunlearn.train.mesh import from_config

__all__ = ["parse_model_args", "main_eval"]


def parse_model_args(model_args: Sequence[str], flag: str = "--model") -> list[tuple[str, Path]]:
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
            raise UserError(f"{flag} {arg!r}: expected [NAME=]PATH")
        name = name or (path.stem if path.suffix == ".gguf" else path.name)
        if not name.strip() or any(c.isspace() for c in name):
            raise UserError(f"{flag} {arg!r}: model name {name!r} must be a non-empty word")
        if not path.exists() and not (flag == "--model" and is_hub_id(path)):
            raise UserError(f"{flag} {arg!r}: {path} does not exist")
        if name in (n for n, _ in out):
            raise UserError(f"{flag} {arg!r}: model name {name!r} is used twice")
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


def _print(name: str, result, seconds: float) -> None:
    print(f"{name}: {_headline(result)} ({seconds:.1f} s)")


def main_eval(cfg, model_args: Sequence[str], retain_model_path, *,
              log_args: Sequence[str] = (), retain_logs_path=None) -> int:
    """Checks every path, log file, tokenizer and the benchmark before loading any model;
    then evaluates the retain model and each ``--model`` in order, one in memory at a time,
    by the rules of :class:`~jaxunlearn.pipeline.evaluation.Evaluation`, and writes
    ``<output_dir>/eval.json`` and the report beside it.

    ``--logs NAME=PATH`` adds a model known by its per-question logs (open-unlearning's
    ``TOFU_EVAL.json`` or TOFU's ``eval_log_aggregated.json``, ``eval.tofu_logs``);
    ``--retain-logs PATH`` is the retain reference in place of ``--retain-model``. With
    logs only, no benchmark is read and no model loaded."""
    options = SuiteConfig.from_run_config(cfg)
    models = parse_model_args(model_args)
    if models or retain_model_path is not None:  # logs alone read no benchmark
        require_benchmark(cfg)
    logged = parse_model_args(log_args, "--logs")
    if not models and not logged and retain_model_path is None and retain_logs_path is None:
        raise UserError("eval: give at least one --model [NAME=]PATH or --logs NAME=PATH")
    if retain_model_path is not None and retain_logs_path is not None:
        raise UserError("eval: give --retain-model or --retain-logs, not both")
    if "retain" in (n for n, _ in models + logged):
        raise UserError("--model/--logs: the name 'retain' is reserved for the retain reference")
    names = [n for n, _ in models + logged]
    if len(set(names)) != len(names):
        raise UserError(f"--model/--logs: a model name is used twice ({', '.join(names)})")
    reference: TofuLogs | None = None
    if retain_logs_path is not None:
        if not Path(retain_logs_path).exists():
            raise UserError(f"--retain-logs: {retain_logs_path} does not exist")
        reference = read_tofu_logs(retain_logs_path)
    read = [(name, read_tofu_logs(path)) for name, path in logged]  # every file, before work
    if retain_model_path is not None:
        retain_path = Path(retain_model_path)
        if not retain_path.exists():
            raise UserError(f"--retain-model: {retain_path} does not exist")
        models = [("retain", retain_path)] + models
    evaluation = Evaluation(cfg, cfg.data.benchmark if models else None, options)
    if evaluation.is_muse:
        if retain_model_path is None:
            print("jaxunlearn eval: no --retain-model, so privleak is relative to AUC 0.5 "
                  "(open-unlearning's default)", file=sys.stderr)
        if cfg.eval.attacks:
            print("jaxunlearn eval: eval.attacks: not run on MUSE (the attacks relearn "
                  "QA splits)", file=sys.stderr)
    elif retain_model_path is None and reference is None:
        print("jaxunlearn eval: no --retain-model or --retain-logs, so forget_quality and "
              "privleak are null", file=sys.stderr)
    models = [(name, resolve_model_path(path)) for name, path in models]  # hub ids: snapshots
    sources = {name: _tokenizer_source(cfg, path) for name, path in models}
    if reference is not None:
        _print("retain", evaluation.add_logged("retain", logs_result(reference, reference),
                                               reference=True), 0.0)
    for name, path in models:
        model, _ = load_pretrained(path)
        tokenizer = load_tokenizer(sources[name])
        if name == "retain":
            result = evaluation.add_retain(model, tokenizer)
        else:
            result = evaluation.add(name, model, tokenizer)
        _print(name, result, evaluation.seconds[name])
        del model
    for name, logs in read:
        _print(name, evaluation.add_logged(name, logs_result(logs, reference)), 0.0)
    out_dir = Path(cfg.output_dir)
    report_path = evaluation.write(out_dir, mesh=from_config(cfg.mesh))
    print(f"wrote {out_dir / 'eval.json'} and {report_path}")
    return 0
