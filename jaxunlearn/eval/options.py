"""What an evaluation computes and on how much data: :class:`SuiteConfig`."""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxunlearn.data.batch import DEFAULT_CHAT, ChatStyle
from jaxunlearn.data.schema import CANARY_SPLITS
from jaxunlearn.errors import UserError

__all__ = ["GROUPS", "QA_SPLITS", "CANARY_SPLITS", "SuiteConfig"]

# Metric groups a run may select (``eval.metrics``), in the order they are computed
# (``eval.groups`` holds one module per group); "muse" runs on a MUSE source only, in place
# of the others; elsewhere "tofu" is always computed since every
# eval.json entry needs forget_quality and model_utility.
GROUPS = ("tofu", "mia", "canaries", "extraction", "knowledge", "muse")
# The QA roles an evaluation reads: the forget and retain splits, holdout people, world
# facts and (TOFU) real authors.
QA_SPLITS = ("forget", "retain", "holdout", "world_facts", "real_authors")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    """What ``evaluate_model`` computes and on how much data.

    Attributes:
      forget, retain: split names in the benchmark (e.g. "forget10", "retain90").
      batch_size: rows per jitted call (scoring and decoding).
      max_new_tokens: greedy answer length cap (ROUGE, KFR/KRR); 200 as open-unlearning.
      max_records: cap per QA split (an evenly spaced, deterministic subset); None =
        every record, as open-unlearning (a KS p-value depends on the sample size).
      chat: the system prompt and date the chat template renders (``data.system_prompt``,
        ``data.date_string``).
      groups: metric groups from ``GROUPS``; "tofu" is always added.
      min_k: fraction of lowest tokens for Min-K% / Min-K%++ (0.4 as open-unlearning).
      el_n: n-gram size of extraction likelihood (10 as Jang et al.).
      el_splits: canary splits whose EL is computed (it needs a decoding per prefix).
      exposure_candidates: random same-format secrets each canary is ranked against
        (>= 3: the skew-normal fit of the extrapolated exposure needs them).
      exposure_splits: canary splits whose exposure is computed.
      extractable_ma, over_unlearned_ma: MA thresholds of the forget-canary counts.
      seed: seeds the exposure candidates.
    """

    forget: str = "forget10"
    retain: str = "retain90"
    batch_size: int = 32
    max_new_tokens: int = 200
    max_records: int | None = None
    groups: tuple[str, ...] = GROUPS
    min_k: float = 0.4
    el_n: int = 10
    el_splits: tuple[str, ...] = CANARY_SPLITS
    exposure_candidates: int = 31
    exposure_splits: tuple[str, ...] = CANARY_SPLITS
    extractable_ma: float = 0.60
    over_unlearned_ma: float = 0.15
    seed: int = 0
    chat: ChatStyle = DEFAULT_CHAT

    def __post_init__(self):
        def positive(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"SuiteConfig.{name} must be a positive integer, got {v!r}")

        for name in ("batch_size", "max_new_tokens", "el_n", "exposure_candidates"):
            positive(name)
        if self.max_records is not None:
            positive("max_records")
        if self.exposure_candidates < 3:
            raise UserError("SuiteConfig.exposure_candidates must be >= 3 (the skew-normal "
                            f"fit of exposure needs them), got {self.exposure_candidates}")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise UserError(f"eval.metrics: unknown metric group {unknown[0]!r} "
                            f"(choose from {', '.join(GROUPS)})")
        if "tofu" not in self.groups:
            object.__setattr__(self, "groups", ("tofu", *self.groups))
        for name in ("el_splits", "exposure_splits"):
            bad = [s for s in getattr(self, name) if s not in CANARY_SPLITS]
            if bad:
                raise UserError(f"SuiteConfig.{name}: unknown canary split {bad[0]!r}")
        if not 0.0 < self.min_k <= 1.0:
            raise UserError(f"SuiteConfig.min_k must be in (0, 1], got {self.min_k}")
        if not 0.0 <= self.over_unlearned_ma <= self.extractable_ma <= 1.0:
            raise UserError("SuiteConfig.over_unlearned_ma / extractable_ma must satisfy "
                            f"0 <= {self.over_unlearned_ma} <= {self.extractable_ma} <= 1")

    @classmethod
    def fast(cls, **overrides) -> SuiteConfig:
        """The demo's setting: 64 records per split, EL and exposure on forget canaries."""
        base = dict(max_records=64, el_splits=("forget",), exposure_candidates=15,
                    exposure_splits=("forget",))
        return cls(**{**base, **overrides})

    @classmethod
    def from_run_config(cls, cfg, **overrides) -> SuiteConfig:
        """From a ``RunConfig``: data.forget/retain, eval.batch_size/max_new_tokens/metrics,
        seed; ``eval.fast`` and ``eval.max_records`` when the config has them."""
        make = cls.fast if getattr(cfg.eval, "fast", False) else cls
        kwargs: dict[str, Any] = dict(
            forget=cfg.data.forget, retain=cfg.data.retain_split,
            batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
            seed=cfg.seed, chat=cfg.data.chat)
        if cfg.eval.metrics:
            kwargs["groups"] = tuple(cfg.eval.metrics)
        if hasattr(cfg.eval, "max_records"):
            kwargs["max_records"] = cfg.eval.max_records
        return make(**{**kwargs, **overrides})

    @classmethod
    def of(cls, cfg) -> SuiteConfig:
        """``cfg`` itself when it is a ``SuiteConfig``, else :meth:`from_run_config`."""
        return cfg if isinstance(cfg, SuiteConfig) else cls.from_run_config(cfg)
