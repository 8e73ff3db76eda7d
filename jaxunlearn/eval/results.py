"""Typed evaluation results: one frozen :class:`ModelResult` per evaluated model.

Each metric group (``eval.groups``) fills one field; :meth:`ModelResult.to_json` writes
the ``models.<name>`` entry of ``eval.json`` in its pinned flat layout (DESIGN.md:
``forget_prob``, ``forget_quality``, ``mia_min_k_auc``, ``canary_forget_ma``, ``kfr``,
..., with ``canaries``, ``distributions``, ``samples``, ``info``, ``attacks`` beside
them) and :meth:`ModelResult.from_json` reads such an entry back, partial ones
included (absent numbers are None), so the report reads fields, never keys.

Numbers are floats or None (undefined, e.g. forget quality without a retain model).
Here: the MIA, ReLearn and attack records and the model's; the TOFU and canary records
live in ``eval.tofu_results`` and ``eval.canary_results`` (re-exported here), the field
readers in ``eval.result_fields``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from jaxunlearn.errors import UserError
from jaxunlearn.eval.canary_results import CanaryResult, CanaryScores, ExtractionResult
from jaxunlearn.eval.muse_results import MuseResult
from jaxunlearn.eval.result_fields import Number, number_field, object_field, present
from jaxunlearn.eval.tofu_results import Distribution, Sample, SplitScores, TofuResult

__all__ = ["MIA_ATTACKS", "SplitScores", "Distribution", "Sample", "TofuResult", "MIAResult",
           "CanaryScores", "CanaryResult", "ExtractionResult", "KnowledgeResult", "BeforeAfter",
           "AttackResult", "ForgetScores", "ModelResult"]

MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus")


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
        privleak = {a: number_field(d, f"privleak_{a}", where) for a in MIA_ATTACKS}
        if "privleak" in d:  # a file written by hand may carry only the headline
            privleak["min_k"] = number_field(d, "privleak", where)
        return cls(auc={a: number_field(d, f"mia_{a}_auc", where) for a in MIA_ATTACKS},
                   privleak=privleak)


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
        return {**present([("kfr", self.kfr), ("krr", self.krr)]),
                **{k: getattr(self, k) for k in self.LS_KEYS}}

    def info_json(self) -> dict:
        return {**present([("kfr_krr_judge", self.kfr_krr_judge)]),
                **{f"{k}_skipped": why for k, why in self.skipped.items()},
                **present([("ls_judge", self.ls_judge)])}

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> KnowledgeResult | None:
        if not any(k in d for k in ("kfr", "krr", *cls.LS_KEYS)):
            return None
        info = object_field(d, "info", where)
        return cls(**{k: number_field(d, k, where) for k in ("kfr", "krr", *cls.LS_KEYS)},
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
        metrics = {k: BeforeAfter(before=number_field(v, "before", f"{where}.{k}"),
                                  after=number_field(v, "after", f"{where}.{k}"))
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
        return present(zip(self.KEYS, values))

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
        attacks = object_field(d, "attacks", where)
        return cls(tofu=TofuResult.from_json(d, where), mia=MIAResult.from_json(d, where),
                   canaries=CanaryResult.from_json(d, where),
                   extraction=ExtractionResult.from_json(d, where),
                   knowledge=KnowledgeResult.from_json(d, where),
                   muse=MuseResult.from_json(d, where),
                   attacks={name: AttackResult.from_json(a, f"{where}.attacks.{name}")
                            for name, a in attacks.items() if isinstance(a, Mapping)}
                   if "attacks" in d else None,
                   seconds=number_field(object_field(d, "info", where), "seconds", where),
                   unlearn=object_field(d, "unlearn", where) or None)
