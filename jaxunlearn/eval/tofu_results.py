"""Typed TOFU results (Maini et al. 2024): per-split means, forget quality, model utility,
per-record distributions and samples; the TOFU part of a ``results.ModelResult``, written
into and read from eval.json's flat ``models.<name>`` entry (``forget_prob``,
``forget_quality``, ..., ``distributions``, ``samples``, ``info``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

from jaxunlearn.eval.options import QA_SPLITS
from jaxunlearn.eval.result_fields import Number, number_field, object_field, present

__all__ = ["SplitScores", "Distribution", "Sample", "TofuResult"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitScores:
    """One QA split's means: answer probability, ROUGE-L recall, aggregated truth ratio."""

    KINDS: ClassVar[tuple[str, ...]] = ("prob", "rouge", "truth_ratio")
    prob: Number = None
    rouge: Number = None
    truth_ratio: Number = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Distribution:
    """One QA split's per-record answer probabilities and truth ratios ``[N]``."""

    prob: tuple[float, ...] = ()
    truth_ratio: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample:
    """A forget question, its answer and the model's greedy answer."""

    question: str
    answer: str
    generation: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class TofuResult:
    """TOFU's numbers (Maini et al. 2024): per-split means, forget quality (KS p-value
    against the retain model; None without one), model utility and the parts it used,
    per-record distributions, three forget samples, and the records scored per split."""

    splits: Mapping[str, SplitScores]
    forget_quality: Number = None
    model_utility: Number = None
    model_utility_keys: tuple[str, ...] = ()
    distributions: Mapping[str, Distribution] = dataclasses.field(default_factory=dict)
    samples: tuple[Sample, ...] = ()
    records: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # open-unlearning's extraction strength of the forget answers (Carlini et al. 2021's
    # ES as open-unlearning computes it); None when not measured.
    extraction_strength: Number = None
    # Per QA role, the per-question numbers and texts open-unlearning's TOFU_EVAL.json
    # holds (``eval.tofu_logs.tofu_eval_document``); not part of eval.json.
    per_record: Mapping[str, Mapping[str, Any]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False)

    def to_json(self) -> dict:
        out = {f"{split}_{kind}": getattr(s, kind)
               for split, s in self.splits.items() for kind in SplitScores.KINDS}
        out.update(forget_quality=self.forget_quality, model_utility=self.model_utility)
        out.update(present([("extraction_strength", self.extraction_strength)]))
        return out

    def details_json(self) -> dict:
        dist = {}
        for split, d in self.distributions.items():
            dist[f"{split}_prob"] = list(d.prob)
            dist[f"{split}_truth_ratio"] = list(d.truth_ratio)
        return {"distributions": dist, "samples": [dataclasses.asdict(s) for s in self.samples]}

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> TofuResult:
        splits = {s: SplitScores(**{k: number_field(d, f"{s}_{k}", where) for k in SplitScores.KINDS})
                  for s in QA_SPLITS if any(f"{s}_{k}" in d for k in SplitScores.KINDS)}
        raw = object_field(d, "distributions", where)
        dist = {s: Distribution(prob=_floats(raw.get(f"{s}_prob")),
                                truth_ratio=_floats(raw.get(f"{s}_truth_ratio")))
                for s in QA_SPLITS if f"{s}_prob" in raw or f"{s}_truth_ratio" in raw}
        samples = tuple(Sample(question=str(s.get("question", "")),
                               answer=str(s.get("answer", "")),
                               generation=str(s.get("generation", "")))
                        for s in d.get("samples") or () if isinstance(s, Mapping))
        info = object_field(d, "info", where)
        return cls(splits=splits, forget_quality=number_field(d, "forget_quality", where),
                   model_utility=number_field(d, "model_utility", where),
                   extraction_strength=number_field(d, "extraction_strength", where),
                   model_utility_keys=tuple(info.get("model_utility_keys") or ()),
                   distributions=dist, samples=samples,
                   records={k: v for k, v in object_field(info, "records", where).items()
                            if k != "canaries"})


def _floats(values) -> tuple[float, ...]:
    return tuple(math.nan if v is None else float(v) for v in values or ())
