"""Typed MUSE results and open-unlearning's two files of them.

:class:`MuseResult` is the ``muse`` field of ``results.ModelResult``: its numbers go
into ``eval.json`` as ``muse_*`` keys; :meth:`MuseResult.eval_logs` is open-unlearning's
``MUSE_EVAL.json`` (every metric computed, pre-computes included, with ``agg_value`` and
``value_by_index`` per record) and :meth:`MuseResult.summary` its ``MUSE_SUMMARY.json``
(the five top-level metrics: ``forget_knowmem_ROUGE``, ``retain_knowmem_ROUGE``,
``forget_verbmem_ROUGE``, ``privleak``, ``extraction_strength``), so open-unlearning's
tooling reads our runs and a retain run's ``MUSE_EVAL.json`` is a valid
``retain_logs_path`` there.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import ClassVar

from jaxunlearn.errors import UserError

__all__ = ["TextScore", "MuseResult", "SUMMARY_KEYS"]

Number = float | None
# open-unlearning's configs/eval/muse.yaml, in its order.
SUMMARY_KEYS = ("forget_knowmem_ROUGE", "retain_knowmem_ROUGE", "forget_verbmem_ROUGE",
                "privleak", "extraction_strength")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextScore:
    """One generated answer or continuation against its reference (open-unlearning's
    ``rouge`` ``value_by_index`` entry)."""

    input: str
    ground_truth: str
    generation: str
    rouge1_recall: float
    rougeL_f1: float
    rougeL_recall: float


def _rouge_log(items: tuple[TextScore, ...], agg: float) -> dict:
    return {"agg_value": agg,
            "value_by_index": {str(i): dataclasses.asdict(s) for i, s in enumerate(items)}}


def _scores_log(values: tuple[float, ...]) -> dict:
    return {str(i): {"score": v} for i, v in enumerate(values)}


def _mean(values) -> float:
    return float(sum(values) / len(values))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MuseResult:
    """MUSE's metrics as open-unlearning computes them (``eval.groups.muse``).

    Attributes:
      verbmem, forget_knowmem, retain_knowmem: per-record ROUGE of the greedy
        continuations of ``verbmem/forget`` prompts and of the ``knowmem`` answers.
      min_k_forget, min_k_holdout: open-unlearning's Min-K% scores (``-mean`` of the
        lowest 40 % token log-probs; higher = less likely a member) of the
        ``privleak`` texts.
      mia_min_k_auc: its AUC (forget labelled 0, holdout 1; 1 = forget far more
        likely); ``mia_min_k_plus_plus_auc`` the same for Min-K%++ (reported beside).
      privleak_reference_auc: the retain model's Min-K% AUC, or open-unlearning's
        default 0.5 without one (``privleak_reference`` says which).
      privleak: ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100`` (None when
        ``AUC_ref`` is 1).
      extraction_strength: per ``verbmem/forget`` record, teacher-forced on the text.
    """

    AGGREGATES: ClassVar[tuple[str, ...]] = (
        "forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge", "privleak",
        "extraction_strength", "mia_min_k_auc", "mia_min_k_plus_plus_auc",
        "privleak_reference_auc")

    verbmem: tuple[TextScore, ...] = ()
    forget_knowmem: tuple[TextScore, ...] = ()
    retain_knowmem: tuple[TextScore, ...] = ()
    min_k_forget: tuple[float, ...] = ()
    min_k_holdout: tuple[float, ...] = ()
    es: tuple[float, ...] = ()
    forget_verbmem_rouge: Number = None
    forget_knowmem_rouge: Number = None
    retain_knowmem_rouge: Number = None
    mia_min_k_auc: Number = None
    mia_min_k_plus_plus_auc: Number = None
    privleak_reference_auc: Number = None
    privleak_reference: str = ""
    privleak: Number = None
    extraction_strength: Number = None

    def to_json(self) -> dict:
        """The ``muse_*`` keys of the model's ``eval.json`` entry."""
        out = {f"muse_{k}": getattr(self, k) for k in self.AGGREGATES}
        out["muse_privleak_reference"] = self.privleak_reference
        return out

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> MuseResult | None:
        if not any(f"muse_{k}" in d for k in cls.AGGREGATES):
            return None
        values = {}
        for k in cls.AGGREGATES:
            v = d.get(f"muse_{k}")
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
                raise UserError(f"{where}: field 'muse_{k}': expected a number or null, "
                                f"got {v!r:.40}")
            values[k] = None if v is None else float(v)
        return cls(**values, privleak_reference=str(d.get("muse_privleak_reference") or ""))

    def eval_logs(self) -> dict:
        """open-unlearning's ``MUSE_EVAL.json`` document (keys sorted as it writes them)."""
        logs = {
            "forget_knowmem_ROUGE": _rouge_log(self.forget_knowmem, self.forget_knowmem_rouge),
            "retain_knowmem_ROUGE": _rouge_log(self.retain_knowmem, self.retain_knowmem_rouge),
            "forget_verbmem_ROUGE": _rouge_log(self.verbmem, self.forget_verbmem_rouge),
            "mia_min_k": {
                "forget": {"agg_value": _mean(self.min_k_forget),
                           "value_by_index": _scores_log(self.min_k_forget)},
                "holdout": {"agg_value": _mean(self.min_k_holdout),
                            "value_by_index": _scores_log(self.min_k_holdout)},
                "auc": self.mia_min_k_auc, "agg_value": self.mia_min_k_auc},
            "privleak": {"agg_value": self.privleak},
            "extraction_strength": {"agg_value": self.extraction_strength,
                                    "value_by_index": _scores_log(self.es)},
        }
        return dict(sorted(logs.items()))

    def summary(self) -> dict:
        """open-unlearning's ``MUSE_SUMMARY.json``: top-level metrics, None dropped, sorted."""
        values = {"forget_knowmem_ROUGE": self.forget_knowmem_rouge,
                  "retain_knowmem_ROUGE": self.retain_knowmem_rouge,
                  "forget_verbmem_ROUGE": self.forget_verbmem_rouge,
                  "privleak": self.privleak, "extraction_strength": self.extraction_strength}
        return {k: values[k] for k in sorted(SUMMARY_KEYS) if values[k] is not None}
