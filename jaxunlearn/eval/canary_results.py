"""Typed canary results (Carlini et al. 2019; Jang et al. 2023): memorisation means per
canary split and per repetition count, and extraction likelihood EL_n; the canary parts
of a ``results.ModelResult``, written into and read from eval.json (``canary_*`` keys and
the ``canaries`` table).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import ClassVar

from jaxunlearn.data.schema import CANARY_SPLITS
from jaxunlearn.eval.result_fields import Number, number_field, object_field, present

__all__ = ["CanaryScores", "CanaryResult", "ExtractionResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CanaryScores:
    """Means over a set of canaries: memorisation accuracy, secret accuracy, exact
    extraction, extraction strength, exposure (bits; skew-normal extrapolation),
    exposure_rank (bits; sampled-rank estimate), exposure_censored (share of canaries
    beating every candidate: the rank estimate's ceiling); ``count`` canaries."""

    METRICS: ClassVar[tuple[str, ...]] = ("ma", "secret_accuracy", "extracted", "es",
                                          "exposure", "exposure_rank", "exposure_censored")
    ma: Number = None
    secret_accuracy: Number = None
    extracted: Number = None
    es: Number = None
    exposure: Number = None
    exposure_rank: Number = None
    exposure_censored: Number = None
    count: Number = None

    def to_json(self, *, with_count: bool) -> dict:
        head = [("count", self.count)] if with_count else []
        return present(head + [(m, getattr(self, m)) for m in self.METRICS])

    @classmethod
    def from_json(cls, d: Mapping, where: str, prefix: str = "") -> CanaryScores:
        return cls(**{m: number_field(d, prefix + m, where) for m in (*cls.METRICS, "count")})


@dataclasses.dataclass(frozen=True, kw_only=True)
class CanaryResult:
    """Canary memorisation (Carlini et al. 2019; Jang et al. 2023): means per canary split
    and per (split, repetition count); counts over the forget canaries; the LOSS attack's
    AUC of forget vs heldout canaries; ``count`` canaries scored; ``exposure_estimator``:
    what ``exposure`` holds (``"skewnorm"``; None when no exposure was computed)."""

    splits: Mapping[str, CanaryScores]
    by_repetitions: Mapping[str, Mapping[int, CanaryScores]]
    num_extracted: Number = None
    extractable: Number = None
    over_unlearned: Number = None
    mia_loss_auc: Number = None
    count: int | None = None
    exposure_estimator: str | None = None

    def info_json(self) -> dict:
        return present([("canary_exposure_estimator", self.exposure_estimator)])

    def to_json(self) -> dict:
        out = {}
        for split, s in self.splits.items():
            out.update({f"canary_{split}_{k}": v for k, v in s.to_json(with_count=False).items()})
        out.update(present([("canary_forget_num_extracted", self.num_extracted),
                             ("canary_forget_extractable", self.extractable),
                             ("canary_forget_over_unlearned", self.over_unlearned),
                             ("canary_mia_loss_auc", self.mia_loss_auc)]))
        out["canaries"] = {split: {str(r): s.to_json(with_count=True) for r, s in rows.items()}
                           for split, rows in self.by_repetitions.items()}
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> CanaryResult | None:
        table = object_field(d, "canaries", where)
        splits = {s: CanaryScores.from_json(d, where, f"canary_{s}_") for s in CANARY_SPLITS
                  if any(f"canary_{s}_{m}" in d for m in CanaryScores.METRICS)}
        if not table and not splits:
            return None
        rows = {split: {int(r): CanaryScores.from_json(row, f"{where}.canaries.{split}.{r}")
                        for r, row in object_field(table, split, where).items()}
                for split in table}
        return cls(splits=splits, by_repetitions=rows,
                   num_extracted=number_field(d, "canary_forget_num_extracted", where),
                   extractable=number_field(d, "canary_forget_extractable", where),
                   over_unlearned=number_field(d, "canary_forget_over_unlearned", where),
                   mia_loss_auc=number_field(d, "canary_mia_loss_auc", where),
                   count=object_field(object_field(d, "info", where), "records", where).get("canaries"),
                   exposure_estimator=object_field(d, "info", where).get(
                       "canary_exposure_estimator"))


_EL_KEY = re.compile(r"canary_(\w+?)_el(\d+)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExtractionResult:
    """Extraction likelihood EL_n (Jang et al. 2023) of the canaries, mean per split and
    per (split, repetition count). Written beside the canary numbers (``canary_{split}_
    el{n}`` and ``el{n}`` in the canary table's rows)."""

    n: int
    splits: Mapping[str, float]
    by_repetitions: Mapping[str, Mapping[int, float]]

    def to_json(self) -> dict:
        return {f"canary_{split}_el{self.n}": v for split, v in self.splits.items()}

    def add_to_table(self, table: dict) -> None:
        """Adds ``el{n}`` to the rows of a :meth:`CanaryResult.to_json` canary table."""
        for split, rows in self.by_repetitions.items():
            for reps, value in rows.items():
                table.setdefault(split, {}).setdefault(str(reps), {})[f"el{self.n}"] = value

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> ExtractionResult | None:
        found = [(m.group(1), int(m.group(2)), key) for key in d
                 if (m := _EL_KEY.match(key)) and m.group(1) in CANARY_SPLITS]
        if not found:
            return None
        n = found[0][1]
        rows = {split: {int(r): float(row[f"el{n}"]) for r, row in table.items()
                        if isinstance(row, Mapping) and row.get(f"el{n}") is not None}
                for split, table in object_field(d, "canaries", where).items()}
        return cls(n=n, splits={s: number_field(d, key, where) for s, k, key in found if k == n},
                   by_repetitions={s: r for s, r in rows.items() if r})
