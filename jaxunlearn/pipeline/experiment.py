"""``jaxunlearn run experiments/<name>.yaml [key=value ...]``: one YAML, one experiment.

An experiment YAML is a run config (see ``jaxunlearn.config``) plus a few keys of its own:

  description: one line
  reproduces:  what published table/figure it reproduces (free text)
  expected:    the published numbers, e.g. {forget_quality: 0.02, model_utility: 0.46}
  requires:    dotted keys the user must set on the command line (e.g. [model.path])
  stages:      ordered subset of [train_target, train_retain, unlearn, eval]

``train_*`` stages fine-tune from ``model`` on the (synthetic) benchmark and feed the
result to the next stage; ``unlearn`` unlearns ``data.forget`` with ``method``; ``eval``
scores the unlearned model (and the target/retain models when they are known).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

from jaxunlearn.config import EXPERIMENT_KEYS, RunConfig, _yaml, load_config
from jaxunlearn.errors import ConfigError
from jaxunlearn.pipeline.evaluate import main_eval
from jaxunlearn.pipeline.training import train_model
from jaxunlearn.pipeline.unlearning import run_unlearning

__all__ = ["STAGES", "read_experiment", "run_experiment"]

STAGES = ("train_target", "train_retain", "unlearn", "eval")
_META = EXPERIMENT_KEYS


def read_experiment(path: Path, overrides: Sequence[str]) -> tuple[RunConfig, dict]:
    """Parses the experiment YAML into ``(RunConfig, meta)``; validates before any work."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file does not exist")
    try:
        raw = _yaml(path.read_text()) or {}
    except Exception as e:  # yaml.YAMLError
        raise ConfigError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    meta = {k: raw.pop(k) for k in _META if k in raw}
    stages = meta.get("stages", ["train_target", "unlearn", "eval"])
    if not isinstance(stages, list) or not stages or any(s not in STAGES for s in stages):
        raise ConfigError(f"{path}: stages must be a non-empty list drawn from {list(STAGES)}, "
                          f"got {stages!r}")
    meta["stages"] = stages
    given = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    for key in meta.get("requires", []):
        if key not in given:
            raise ConfigError(f"{path}: this experiment needs {key}=... on the command line "
                              f"({meta.get('description', '')})")
    cfg = load_config(None, overrides, base=raw)
    return cfg, meta


def run_experiment(path: Path, overrides: Sequence[str]) -> int:
    """Runs the experiment's stages in order; prints where each result went."""
    cfg, meta = read_experiment(path, overrides)
    stages = meta["stages"]
    models: dict[str, str] = {}
    retain_path = None
    if "train_target" in stages:
        target = train_model(cfg, which="target")
        models["target"] = str(target)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(target),
                                                                 preset=None))
    elif cfg.model.path:
        models["target"] = cfg.model.path
    if "train_retain" in stages:
        base = load_config(None, overrides, base=_strip_meta(path))
        retain_path = train_model(base, which="retain")
        models["retain"] = str(retain_path)
    if "unlearn" in stages:
        out = run_unlearning(cfg)
        models[cfg.method.get("name", "unlearned")] = str(out)
    if "eval" in stages:
        named = [f"{name}={p}" for name, p in models.items() if name != "retain"]
        code = main_eval(cfg, named, retain_path)
        if code:
            return code
    summary = {"experiment": str(path), "stages": stages, "models": models,
               "expected": meta.get("expected")}
    print(json.dumps(summary, indent=2))
    return 0


def _strip_meta(path: Path) -> dict:
    raw = _yaml(Path(path).read_text()) or {}
    return {k: v for k, v in raw.items() if k not in _META}
