"""Typed evaluation results: one frozen :class:`ModelResult` per evaluated model.

Each metric group (``eval.groups``) fills one field; :meth:`ModelResult.to_json` writes
the ``models.<name>`` entry of ``eval.json`` in its pinned flat layout (DESIGN.md:
``forget_prob``, ``forget_quality``, ``mia_min_k_auc``, ``canary_forget_ma``, ``kfr``,
..., with ``canaries``, ``distributions``, ``samples``, ``info``, ``attacks`` beside
them) and :meth:`ModelResult.from_json` reads such an entry back, partial ones
included (absent numbers are None), so the report reads fields, never keys.

Numbers are floats or None (undefined, e.g. forget quality without a retain model).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from jaxunlearn.data.schema import CANARY_SPLITS
from jaxunlearn.errors import UserError
from jaxunlearn.eval.muse_results import MuseResult
from jaxunlearn.eval.options import QA_SPLITS

__all__ = ["MIA_ATTACKS", "SplitScores", "Distribution", "Sample", "TofuResult", "MIAResult",
           "CanaryScores", "CanaryResult", "ExtractionResult", "KnowledgeResult", "BeforeAfter",
           "AttackResult", "ForgetScores", "ModelResult"]

Number = float | None
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


def _number(d: Mapping, key: str, where: str) -> Number:
    value = d.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserError(f"{where}: field '{key}': expected a number or null, got {value!r:.40}")
    return float(value)


def _present(items) -> dict:
    """The ``(key, value)`` pairs whose value is not None (keys absent when undefined)."""
    return {k: v for k, v in items if v is not None}


def _mapping(d: Mapping, key: str, where: str) -> Mapping:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where}: field '{key}': expected an object")
    return value


# ----------------------------------------------------------------------------- TOFU
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
        out.update(_present([("extraction_strength", self.extraction_strength)]))
        return out

    def details_json(self) -> dict:
        dist = {}
        for split, d in self.distributions.items():
            dist[f"{split}_prob"] = list(d.prob)
            dist[f"{split}_truth_ratio"] = list(d.truth_ratio)
        return {"distributions": dist, "samples": [dataclasses.asdict(s) for s in self.samples]}

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> TofuResult:
        splits = {s: SplitScores(**{k: _number(d, f"{s}_{k}", where) for k in SplitScores.KINDS})
                  for s in QA_SPLITS if any(f"{s}_{k}" in d for k in SplitScores.KINDS)}
        raw = _mapping(d, "distributions", where)
        dist = {s: Distribution(prob=_floats(raw.get(f"{s}_prob")),
                                truth_ratio=_floats(raw.get(f"{s}_truth_ratio")))
                for s in QA_SPLITS if f"{s}_prob" in raw or f"{s}_truth_ratio" in raw}
        samples = tuple(Sample(question=str(s.get("question", "")),
                               answer=str(s.get("answer", "")),
                               generation=str(s.get("generation", "")))
                        for s in d.get("samples") or () if isinstance(s, Mapping))
        info = _mapping(d, "info", where)
        return cls(splits=splits, forget_quality=_number(d, "forget_quality", where),
                   model_utility=_number(d, "model_utility", where),
                   extraction_strength=_number(d, "extraction_strength", where),
                   model_utility_keys=tuple(info.get("model_utility_keys") or ()),
                   distributions=dist, samples=samples,
                   records={k: v for k, v in _mapping(info, "records", where).items()
                            if k != "canaries"})


def _floats(values) -> tuple[float, ...]:
    return tuple(math.nan if v is None else float(v) for v in values or ())


# ----------------------------------------------------------------------------- MIA
@dataclasses.dataclass(frozen=True, kw_only=True)
class MIAResult:
    """Membership inference, forget (members) vs holdout (non-members): AUC of each attack
    in ``MIA_ATTACKS`` and MUSE's PrivLeak against the retain model's AUC (None without
    a reference, or where the reference AUC is 1)."""

    auc: Mapping[str, Number]
    privleak: Mapping[str, Number]

    @property
    def muse_privleak(self) -> Number:
        """MUSE's PrivLeak, which uses Min-K% Prob."""
        return self.privleak.get("min_k")

    def to_json(self) -> dict:
        out = {}
        for a in MIA_ATTACKS:
            out[f"mia_{a}_auc"] = self.auc.get(a)
            out[f"privleak_{a}"] = self.privleak.get(a)
        out["privleak"] = self.muse_privleak
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> MIAResult | None:
        if not any(f"mia_{a}_auc" in d for a in MIA_ATTACKS) and "privleak" not in d:
            return None
        privleak = {a: _number(d, f"privleak_{a}", where) for a in MIA_ATTACKS}
        if "privleak" in d:  # a file written by hand may carry only the headline
            privleak["min_k"] = _number(d, "privleak", where)
        return cls(auc={a: _number(d, f"mia_{a}_auc", where) for a in MIA_ATTACKS},
                   privleak=privleak)


# ----------------------------------------------------------------------------- canaries
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
        return _present(head + [(m, getattr(self, m)) for m in self.METRICS])

    @classmethod
    def from_json(cls, d: Mapping, where: str, prefix: str = "") -> CanaryScores:
        return cls(**{m: _number(d, prefix + m, where) for m in (*cls.METRICS, "count")})


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
        return _present([("canary_exposure_estimator", self.exposure_estimator)])

    def to_json(self) -> dict:
        out = {}
        for split, s in self.splits.items():
            out.update({f"canary_{split}_{k}": v for k, v in s.to_json(with_count=False).items()})
        out.update(_present([("canary_forget_num_extracted", self.num_extracted),
                             ("canary_forget_extractable", self.extractable),
                             ("canary_forget_over_unlearned", self.over_unlearned),
                             ("canary_mia_loss_auc", self.mia_loss_auc)]))
        out["canaries"] = {split: {str(r): s.to_json(with_count=True) for r, s in rows.items()}
                           for split, rows in self.by_repetitions.items()}
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> CanaryResult | None:
        table = _mapping(d, "canaries", where)
        splits = {s: CanaryScores.from_json(d, where, f"canary_{s}_") for s in CANARY_SPLITS
                  if any(f"canary_{s}_{m}" in d for m in CanaryScores.METRICS)}
        if not table and not splits:
            return None
        rows = {split: {int(r): CanaryScores.from_json(row, f"{where}.canaries.{split}.{r}")
                        for r, row in _mapping(table, split, where).items()}
                for split in table}
        return cls(splits=splits, by_repetitions=rows,
                   num_extracted=_number(d, "canary_forget_num_extracted", where),
                   extractable=_number(d, "canary_forget_extractable", where),
                   over_unlearned=_number(d, "canary_forget_over_unlearned", where),
                   mia_loss_auc=_number(d, "canary_mia_loss_auc", where),
                   count=_mapping(_mapping(d, "info", where), "records", where).get("canaries"),
                   exposure_estimator=_mapping(d, "info", where).get(
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
                for split, table in _mapping(d, "canaries", where).items()}
        return cls(n=n, splits={s: _number(d, key, where) for s, k, key in found if k == n},
                   by_repetitions={s: r for s, r in rows.items() if r})


# ----------------------------------------------------------------------------- ReLearn
@dataclasses.dataclass(frozen=True, kw_only=True)
class KnowledgeResult:
    """ReLearn's metrics (Xu et al. 2025): knowledge forgetting / retention rates (None
    when the records have no ``facts``, with the reason in ``skipped``), the Linguistic
    Score and its parts on the forget answers, and which judges produced them."""

    kfr: Number = None
    krr: Number = None
    ls: Number = None
    ls_perplexity: Number = None
    ls_brunet: Number = None
    ls_honore: Number = None
    kfr_krr_judge: str | None = None
    ls_judge: str | None = None
    skipped: Mapping[str, str] = dataclasses.field(default_factory=dict)

    LS_KEYS: ClassVar[tuple[str, ...]] = ("ls", "ls_perplexity", "ls_brunet", "ls_honore")

    def to_json(self) -> dict:
        return {**_present([("kfr", self.kfr), ("krr", self.krr)]),
                **{k: getattr(self, k) for k in self.LS_KEYS}}

    def info_json(self) -> dict:
        return {**_present([("kfr_krr_judge", self.kfr_krr_judge)]),
                **{f"{k}_skipped": why for k, why in self.skipped.items()},
                **_present([("ls_judge", self.ls_judge)])}

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> KnowledgeResult | None:
        if not any(k in d for k in ("kfr", "krr", *cls.LS_KEYS)):
            return None
        info = _mapping(d, "info", where)
        return cls(**{k: _number(d, k, where) for k in ("kfr", "krr", *cls.LS_KEYS)},
                   kfr_krr_judge=info.get("kfr_krr_judge"), ls_judge=info.get("ls_judge"),
                   skipped={k: info[f"{k}_skipped"] for k in ("kfr", "krr")
                            if f"{k}_skipped" in info})


# ----------------------------------------------------------------------------- attacks
@dataclasses.dataclass(frozen=True, kw_only=True)
class BeforeAfter:
    """One forget metric before and after an attack."""

    before: Number
    after: Number


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackResult:
    """One recovery attack: each forget metric (``ForgetScores.KEYS``) before and after,
    and what the attack did (``info``: records, steps, losses; None for quantisation)."""

    metrics: Mapping[str, BeforeAfter]
    info: Mapping[str, Any] | None = None

    def to_json(self) -> dict:
        out: dict = {k: dataclasses.asdict(v) for k, v in self.metrics.items()}
        if self.info is not None:
            out["info"] = dict(self.info)
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> AttackResult:
        metrics = {k: BeforeAfter(before=_number(v, "before", f"{where}.{k}"),
                                  after=_number(v, "after", f"{where}.{k}"))
                   for k, v in d.items() if isinstance(v, Mapping) and "before" in v}
        info = d.get("info")
        return cls(metrics=metrics, info=dict(info) if isinstance(info, Mapping) else None)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ForgetScores:
    """The forget-side numbers an attack compares before and after."""

    KEYS: ClassVar[tuple[str, ...]] = ("forget_prob", "forget_rouge", "forget_truth_ratio",
                                       "canary_forget_ma", "canary_forget_secret_accuracy")
    prob: Number = None
    rouge: Number = None
    truth_ratio: Number = None
    canary_ma: Number = None
    canary_secret_accuracy: Number = None

    def to_json(self) -> dict:
        """``{key: value}`` for the defined ones of ``KEYS``."""
        values = (self.prob, self.rouge, self.truth_ratio, self.canary_ma,
                  self.canary_secret_accuracy)
        return _present(zip(self.KEYS, values))

    @classmethod
    def of(cls, result: ModelResult) -> ForgetScores:
        forget = result.tofu.splits.get("forget", SplitScores())
        canary = (result.canaries.splits.get("forget") if result.canaries else None) \
            or CanaryScores()
        return cls(prob=forget.prob, rouge=forget.rouge, truth_ratio=forget.truth_ratio,
                   canary_ma=canary.ma, canary_secret_accuracy=canary.secret_accuracy)


# ----------------------------------------------------------------------------- one model
@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelResult:
    """Everything measured on one model: one field per metric group (None when the group
    was not selected or had no data), the recovery attacks, the seconds the evaluation
    took, and ``unlearn``: how the model was made, when the command knows (method,
    schedule, loss curve)."""

    tofu: TofuResult
    mia: MIAResult | None = None
    canaries: CanaryResult | None = None
    extraction: ExtractionResult | None = None
    knowledge: KnowledgeResult | None = None
    muse: MuseResult | None = None
    attacks: Mapping[str, AttackResult] | None = None
    seconds: Number = None
    unlearn: Mapping[str, Any] | None = None

    def to_json(self) -> dict:
        """The ``models.<name>`` entry of eval.json."""
        out = self.tofu.to_json()
        for group in (self.mia, self.canaries, self.extraction, self.knowledge, self.muse):
            if group is not None:
                out.update(group.to_json())
        if self.extraction is not None and "canaries" in out:
            self.extraction.add_to_table(out["canaries"])
        out.update(self.tofu.details_json())
        records = dict(self.tofu.records)
        if self.canaries is not None and self.canaries.count is not None:
            records["canaries"] = self.canaries.count
        info: dict = {"model_utility_keys": list(self.tofu.model_utility_keys),
                      "records": records}
        if self.canaries is not None:
            info.update(self.canaries.info_json())
        if self.knowledge is not None:
            info.update(self.knowledge.info_json())
        info["seconds"] = self.seconds
        out["info"] = info
        if self.attacks is not None:
            out["attacks"] = {name: a.to_json() for name, a in self.attacks.items()}
        if self.unlearn is not None:
            out["unlearn"] = dict(self.unlearn)
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str = "model") -> ModelResult:
        """Reads a ``models.<name>`` entry (partial ones too); a mistyped number raises
        UserError naming ``where`` and the field."""
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: expected an object of metrics")
        attacks = _mapping(d, "attacks", where)
        return cls(tofu=TofuResult.from_json(d, where), mia=MIAResult.from_json(d, where),
                   canaries=CanaryResult.from_json(d, where),
                   extraction=ExtractionResult.from_json(d, where),
                   knowledge=KnowledgeResult.from_json(d, where),
                   muse=MuseResult.from_json(d, where),
                   attacks={name: AttackResult.from_json(a, f"{where}.attacks.{name}")
                            for name, a in attacks.items() if isinstance(a, Mapping)}
                   if "attacks" in d else None,
                   seconds=_number(_mapping(d, "info", where), "seconds", where),
                   unlearn=_mapping(d, "unlearn", where) or None)
