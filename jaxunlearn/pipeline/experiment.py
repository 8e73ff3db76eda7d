"""``jaxunlearn run experiments/<name>.yaml [key=value ...]``: one YAML, one experiment.

An experiment YAML is a run config (see ``jaxunlearn.config``) plus a few keys of its own:

  description: one line
  reproduces:  what published table/figure it reproduces (free text)
  expected:    the published numbers, e.g. {forget_quality: 0.02, model_utility: 0.46}
  requires:    keys the user must set on the command line (e.g. [model.path]); ``a|b``
               means either
  stages:      ordered subset of [train_target, train_retain, unlearn, eval]
  retain_logs: the retain model's per-question logs (open-unlearning's TOFU_EVAL.json or
               TOFU's eval_log_aggregated.json): forget quality's reference
  retain_model: a retain model to evaluate as that reference instead
  methods:     several unlearning methods instead of ``method``: a list of method
               mappings (``{name: npo, beta: 0.1, train: {epochs: 2}}``), each unlearned
               from the same target with the run's ``train`` updated by its own ``train``
               (the ``train_*`` stages use the run's ``train`` alone); command-line
               ``key=value`` overrides apply to every method

``train_*`` stages fine-tune from ``model`` on the (synthetic) benchmark and feed the
result to the next stage; ``unlearn`` unlearns ``data.forget`` with ``method``; ``eval``
scores the unlearned model (and the target/retain models when they are known) and prints
our figures beside ``expected``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Sequence

from jaxunlearn import methods as methods_lib
from jaxunlearn.config import EXPERIMENT_KEYS, RunConfig, _merge, _yaml, load_config
from jaxunlearn.errors import ConfigError, UserError
from jaxunlearn.pipeline.evaluate import main_eval
from jaxunlearn.pipeline.training import train_model
from jaxunlearn.pipeline.unlearning import run_unlearning

__all__ = ["STAGES", "read_experiment", "method_configs", "run_experiment"]

STAGES = ("train_target", "train_retain", "unlearn", "eval")
_META = EXPERIMENT_KEYS
_REFERENCES = ("retain_logs", "retain_model")  # meta keys also given as key=value


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
    rest = []
    for o in overrides:  # retain_logs=PATH / retain_model=PATH: the experiment's, not the config's
        key, sep, value = o.partition("=")
        if sep and key.strip() in _REFERENCES:
            meta[key.strip()] = value
        else:
            rest.append(o)
    given = {o.split("=", 1)[0].strip() for o in rest if "=" in o}
    given |= {k for k in _REFERENCES if meta.get(k)}
    for key in meta.get("requires", []):
        if not any(k in given for k in str(key).split("|")):
            raise ConfigError(f"{path}: this experiment needs {key.replace('|', '=... or ')}=... "
                              f"on the command line ({meta.get('description', '')})")
    if meta.get("retain_logs") and meta.get("retain_model"):
        raise ConfigError(f"{path}: give retain_logs or retain_model, not both")
    for key in _REFERENCES:
        if meta.get(key) and not Path(str(meta[key])).exists():
            raise ConfigError(f"{path}: {key}: {meta[key]} does not exist")
    if "methods" in meta:
        if "method" in raw:
            raise ConfigError(f"{path}: give method or methods, not both")
        meta["method_configs"] = method_configs(path, raw, meta["methods"], rest)
    cfg = load_config(None, rest, base=raw)
    return cfg, meta


def method_configs(path: Path, raw: dict, entries, overrides: Sequence[str]
                   ) -> list[RunConfig]:
    """One validated ``RunConfig`` per entry of an experiment's ``methods`` list: the
    experiment's config with ``method`` = the entry and ``train`` updated by the entry's
    ``train``, then the command-line ``overrides``."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: methods must be a non-empty list of method mappings")
    configs, names = [], []
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ConfigError(f"{path}: methods[{i}] must be a mapping with a name, "
                              f"got {entry!r}")
        method = {k: v for k, v in entry.items() if k != "train"}
        train = entry.get("train", {})
        if not isinstance(train, dict):
            raise ConfigError(f"{path}: methods[{i}].train must be a mapping, got {train!r}")
        base = copy.deepcopy(raw)
        base["method"] = method
        _merge(base.setdefault("train", {}), copy.deepcopy(train))
        try:
            cfg = load_config(None, overrides, base=base)
            methods_lib.get_method(cfg.method)  # unknown method or hyper-parameter: now
        except UserError as e:
            raise ConfigError(f"{path}: methods[{i}] ({method['name']}): {e}") from None
        names.append(cfg.method["name"])
        configs.append(cfg)
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: methods: a method is listed twice ({', '.join(names)}); "
                          "each writes <output_dir>/<name>")
    return configs


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
        base = load_config(None, [o for o in overrides if o.partition("=")[0] not in _REFERENCES],
                           base=_strip_meta(path))
        retain_path = train_model(base, which="retain")
        models["retain"] = str(retain_path)
    elif meta.get("retain_model"):
        retain_path = Path(meta["retain_model"])
        models["retain"] = str(retain_path)
    unlearned = []
    if "unlearn" in stages:
        for one in meta.get("method_configs") or [cfg]:
            if one is not cfg:  # the trained target, as for the run's own config
                one = dataclasses.replace(one, model=cfg.model)
            out = run_unlearning(one)
            unlearned.append(one.method.get("name", "unlearned"))
            models[unlearned[-1]] = str(out)
    if "eval" in stages:
        named = [f"{name}={p}" for name, p in models.items() if name != "retain"]
        code = main_eval(cfg, named, retain_path, retain_logs_path=meta.get("retain_logs"))
        if code:
            return code
    summary = {"experiment": str(path), "stages": stages, "models": models,
               "expected": meta.get("expected")}
    if "eval" in stages:
        names = unlearned or ["target"]
        eval_json = Path(cfg.output_dir) / "eval.json"
        for name in names:
            ours = measured(eval_json, name, meta.get("expected") or {})
            print(beside_expected(name, ours, meta.get("expected") or {}))
            summary.setdefault("measured_by_model", {})[name] = ours
        summary["measured"] = summary["measured_by_model"][names[0]]
        if len(names) == 1:
            del summary["measured_by_model"]
    print(json.dumps(summary, indent=2))
    return 0


def measured(eval_json: Path, name: str, expected: dict) -> dict:
    """Our figures for the keys of ``expected`` (and forget quality / model utility), from
    the ``models.<name>`` entry of ``eval.json``."""
    entry = json.loads(eval_json.read_text(encoding="utf-8"))["models"].get(name, {})
    keys = list(dict.fromkeys(["forget_quality", "model_utility", *expected]))
    return {k: entry.get(k) for k in keys}


def beside_expected(name: str, ours: dict, expected: dict) -> str:
    """A small table: each metric, our figure and the published one."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.3g}" if isinstance(v, (int, float)) else str(v)

    lines = [f"{name}: metric / ours / expected:"]
    lines += [f"  {k:<22} {fmt(v):>10} {fmt(expected.get(k)):>10}" for k, v in ours.items()]
    return "\n".join(lines)


def _strip_meta(path: Path) -> dict:
    raw = _yaml(Path(path).read_text()) or {}
    return {k: v for k, v in raw.items() if k not in _META}
