"""Run configuration: typed frozen dataclasses, read from YAML with dotted overrides.

``jaxunlearn <command> --config run.yaml method=npo method.beta=0.2 train.epochs=3``:
the YAML is read into a nested dict, each ``key=value`` override is parsed as YAML and
set at its dotted path (``method=npo`` is short for ``method.name=npo``), and the dict
is turned into ``RunConfig``. Unknown keys, wrong types, duplicate YAML keys
(``strict_yaml``), integers outside int32, non-finite floats and batches whose token
arrays alone exceed this machine's memory fail before any work starts, naming the key
and the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from jaxunlearn import resources, strict_yaml
from jaxunlearn.data.batch import ChatStyle
from jaxunlearn.data.schema import retain_split_of
from jaxunlearn.errors import ConfigError, ValidationError
from jaxunlearn.eval.progress import PROGRESS_METRICS
from jaxunlearn.models.llama_config import REMAT_POLICIES
from jaxunlearn.models.lora import LoraConfig
from jaxunlearn.models.presets import PRESETS
from jaxunlearn.train.distributed import DistributedConfig
from jaxunlearn.train.mesh import MeshConfig
from jaxunlearn.train.step import OptimizerConfig
from jaxunlearn.train.tracking import TRACKERS
from jaxunlearn.validate import path_component


# Keys an experiment YAML (experiments/*.yaml, `jaxunlearn run`) adds to a run config; a
# command given such a file with --config reads its run config and leaves these to `run`.
EXPERIMENT_KEYS = ("description", "reproduces", "expected", "requires", "stages", "retain_logs",
                   "retain_model", "methods")

# Integers anywhere in a config: int32, what every array shape and jitted scalar takes.
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
# Host memory of one batch, at the least: rows x tokens x 4 arrays (ids, labels, mask,
# attention mask) of 4 bytes; a row holds at least 8 tokens (data.max_len >= 8).
MIN_TOKENS_PER_ROW, HOST_BYTES_PER_TOKEN = 8, 16


def _yaml(text: str, where: str = "config"):
    """``strict_yaml.load`` with its refusals as a ``ConfigError``; a syntax error stays a
    ``yaml.YAMLError`` (an override value that is not YAML is taken as a string)."""
    try:
        return strict_yaml.load(text, where)
    except strict_yaml.YAMLInputError as e:
        raise ConfigError(str(e)) from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Which model: a preset trained from scratch, or a path (HF dir, ``.gguf``, our checkpoint)."""

    preset: str | None = "small"
    path: str | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    scan_layers: bool = True  # one scanned, stacked block (LlamaConfig.scan_layers)
    # LlamaConfig.remat: none | full | dots_saveable | dots_with_no_batch_dims_saveable;
    # the former booleans still read: true is full, false none.
    remat: str | bool = "none"
    # unlearn: train LoRA adapters only (models.lora.LoraConfig: rank, alpha, targets,
    # save = merged | adapters); null: every weight
    lora: LoraConfig | None = None

    def __post_init__(self):
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"model.remat must be one of {', '.join(REMAT_POLICIES)}, "
                              f"got {self.remat!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the benchmark lives and which splits play forget and retain."""

    benchmark: str = "runs/benchmark"
    forget: str = "forget10"
    retain: str | None = None  # None: the retain split matching ``forget`` (forget10 -> retain90)
    # Size of the generated synthetic benchmark (passed to SyntheticConfig).
    people: int = 20
    qa_per_person: int = 10
    num_world_facts: int = 50
    canaries_per_repetition: int = 1
    generate_seed: int = 0
    max_len: int = 256
    truncate: bool = False
    tokenizer: str | None = None  # None: the benchmark's own tokenizer (or the model's)
    # The chat template's system prompt and date (data.batch.ChatStyle); None:
    # open-unlearning's defaults for the template ("You are a helpful assistant." and
    # "10 Apr 2025" for Llama-3.x Instruct, none otherwise); "": none.
    system_prompt: str | None = None
    date_string: str | None = None

    def __post_init__(self):
        if self.max_len < 8:
            raise ConfigError(f"data.max_len must be >= 8, got {self.max_len}")
        if self.people < 10:
            raise ConfigError(f"data.people must be >= 10, got {self.people}")
        for name in ("qa_per_person", "num_world_facts", "canaries_per_repetition"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.generate_seed < 0:
            raise ConfigError(f"data.generate_seed must be >= 0, got {self.generate_seed}")
        for field in ("forget", "retain"):
            # Split names become file names (<benchmark>/<split>.json): one plain component.
            if getattr(self, field) is not None:
                try:
                    path_component(getattr(self, field), f"data.{field}")
                except ValidationError as e:
                    raise ConfigError(str(e)) from None

    @property
    def chat(self) -> ChatStyle:
        """How prompts are rendered, in training, unlearning and evaluation alike."""
        return ChatStyle(system_prompt=self.system_prompt, date_string=self.date_string)

    @property
    def retain_split(self) -> str:
        if self.retain:
            return self.retain
        retain = retain_split_of(self.forget)
        if retain is None:
            raise ConfigError(f"data.retain must be given for forget split {self.forget!r}")
        return retain


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation loop settings (used by ``train`` and ``unlearn``)."""

    epochs: int = 5
    steps: int | None = None  # overrides epochs when given
    batch_size: int = 8
    grad_accum: int = 1
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    log_every: int = 10  # metrics to <run>/metrics.jsonl (and the tracker) every k updates
    checkpoint_every: int = 0  # 0: only at the end (and on interruption)
    # unlearn: the small fixed evaluation (eval.progress) every k updates, into the history
    eval_every: int = 0
    # unlearn: save the model of the best progress evaluation in this metric (e.g.
    # forget_quality, retain_prob; eval.progress.PROGRESS_METRICS), not the last one
    keep_best: str | None = None
    tracker: str = "none"  # none | tensorboard | wandb (besides metrics.jsonl)
    # unlearn: run the model on real tokens only, the LM head on loss tokens only
    # (models.compact); same values, less arithmetic. False: the padded computation.
    padding_free: bool = True

    def __post_init__(self):
        if self.epochs < 0:
            raise ConfigError(f"train.epochs must be >= 0, got {self.epochs}")
        if self.steps is not None and self.steps < 0:
            raise ConfigError(f"train.steps must be >= 0, got {self.steps}")
        if self.batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise ConfigError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        for name in ("log_every", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0 (0: off), got "
                                  f"{getattr(self, name)}")
        if self.tracker not in TRACKERS:
            raise ConfigError(f"train.tracker must be one of {', '.join(TRACKERS)}, got "
                              f"{self.tracker!r}")
        if self.keep_best is not None:
            if self.keep_best not in PROGRESS_METRICS:
                raise ConfigError(f"train.keep_best must be one of "
                                  f"{', '.join(PROGRESS_METRICS)}, got {self.keep_best!r}")
            if self.eval_every < 1:
                raise ConfigError("train.keep_best needs train.eval_every >= 1 (the "
                                  "evaluations it chooses among)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Evaluation settings."""

    batch_size: int = 32
    max_new_tokens: int = 200  # open-unlearning's generation default
    attacks: bool = True
    metrics: tuple[str, ...] = ()  # empty: all
    max_records: int | None = None  # per split, None: all (as open-unlearning)
    fast: bool = False  # the suite's reduced settings (demo, smoke tests)
    # The retain (gold) model forget quality is measured against during unlearning
    # (train.eval_every); None: the one `jaxunlearn train --which retain` made, if any.
    retain_model: str | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"eval.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_records is not None and self.max_records < 1:
            raise ConfigError(f"eval.max_records must be >= 1 or null, got {self.max_records}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one command needs. ``method`` stays a plain dict here; the method
    registry (``jaxunlearn.methods``) turns it into that method's typed config."""

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    method: dict = dataclasses.field(default_factory=lambda: {"name": "npo"})
    output_dir: str = "runs/default"
    seed: int = 0
    # A multi-process job to join: true (JAX detects the cluster), a mapping of
    # DistributedConfig keys, or false/None (one process). Read back as the config or None.
    distributed: DistributedConfig | bool | None = None

    def __post_init__(self):
        if isinstance(self.distributed, bool):
            object.__setattr__(self, "distributed",
                               DistributedConfig() if self.distributed else None)
        if not 0 <= self.seed <= INT_MAX:
            raise ConfigError(f"seed must be an integer from 0 to {INT_MAX}, got {self.seed}")
        self._check_batch_memory()

    def _check_batch_memory(self) -> None:
        """One batch's token arrays must fit in host memory, refused before any work.

        A lower bound (``MIN_TOKENS_PER_ROW`` tokens a row, ``HOST_BYTES_PER_TOKEN``):
        the model's activations come on top (``train.budget`` checks them once the model
        is known).
        """
        t, e = self.train, self.eval
        train_tokens = t.batch_size * t.grad_accum * MIN_TOKENS_PER_ROW
        eval_tokens = e.batch_size * (MIN_TOKENS_PER_ROW + e.max_new_tokens)
        if train_tokens >= eval_tokens:
            subject = f"train.batch_size={t.batch_size}" + (
                f" x train.grad_accum={t.grad_accum}" if t.grad_accum > 1 else "")
        else:
            subject = f"eval.batch_size={e.batch_size} x eval.max_new_tokens={e.max_new_tokens}"
        resources.check_fits(
            max(train_tokens, eval_tokens) * HOST_BYTES_PER_TOKEN, resources.physical_memory(),
            subject=subject, where="this machine's memory",
            estimate=f"memory for one batch's token arrays alone (at least "
                     f"{MIN_TOKENS_PER_ROW} tokens a row, {HOST_BYTES_PER_TOKEN} bytes a token)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """Short stable hash of the named sections (all when none): keys a cache."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks/converts a YAML value to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if not INT_MIN <= value <= INT_MAX:
            raise ConfigError(f"{where}: {value} is out of range ({INT_MIN} to {INT_MAX})")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Builds dataclass ``cls`` from ``data``; unknown keys and bad types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(fields))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None


def apply_override(tree: dict, dotted: str, value: Any) -> None:
    """Sets ``tree[a][b][c] = value`` for ``a.b.c``; ``method=x`` means ``method.name=x``."""
    keys = dotted.split(".")
    if keys == ["method"] and not isinstance(value, dict):
        keys = ["method", "name"]
    if keys == ["model"] and isinstance(value, str):
        value = {"preset": value} if value in PRESETS else {"preset": None, "path": value}
        tree.pop("model", None)
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted}: {k!r} is not a section")
        node = nxt
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                *, base: dict | None = None) -> RunConfig:
    """Reads ``path`` (YAML, optional), applies ``key=value`` overrides, validates."""
    try:
        if base:
            strict_yaml.check_expansion(base, "config")
        loaded = strict_yaml.read_file(path) if path is not None else None
    except strict_yaml.YAMLInputError as e:
        raise ConfigError(str(e)) from None
    tree: dict = json.loads(json.dumps(base)) if base else {}
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        loaded = loaded or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        _merge(tree, {k: v for k, v in loaded.items() if k not in EXPERIMENT_KEYS})
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        try:
            value = _yaml(raw, f"override {key.strip()}") if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        apply_override(tree, key.strip(), value)
    # Experiments may put run-level shortcuts at top level: steps=2 -> train.steps=2.
    if "steps" in tree:
        tree.setdefault("train", {})["steps"] = tree.pop("steps")
    if "forget" in tree:
        tree.setdefault("data", {})["forget"] = tree.pop("forget")
    if isinstance(tree.get("model"), str):
        name = tree["model"]
        tree["model"] = {"preset": name} if name in PRESETS else {"preset": None, "path": name}
    if isinstance(tree.get("method"), str):
        tree["method"] = {"name": tree["method"]}
    return from_dict(RunConfig, tree, where)


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v
