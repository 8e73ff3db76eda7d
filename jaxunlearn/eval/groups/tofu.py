"""TOFU's metrics (Maini et al. 2024; definitions as open-unlearning's), per QA split.

* probability: mean ``P(a|q)^(1/|a|)`` (world facts and real authors: normalised over
  the answer and its perturbations, as TOFU);
* ROUGE-L recall of the greedy answer (``max_new_tokens``) against the answer;
* truth ratio ``R = P(perturbed) / P(paraphrased)`` per record, aggregated as
  ``mean(min(R, 1/R))`` on forget and holdout (1 = truth and falsehood equally
  likely) and ``mean(max(0, 1 - R))`` on retain and world facts (the share of
  preference for the truth);
* forget quality: KS p-value of the forget truth ratios against the retain model's;
* extraction strength of the forget answers (open-unlearning's ``extraction_strength``:
  teacher-forced, the final eos left out, its ``1/n`` loop bound kept);
* model utility: harmonic mean of ``metrics.TOFU_MODEL_UTILITY_KEYS`` ({retain, real
  authors, world facts} x {prob, rouge, truth ratio}) that exist: TOFU's nine when the
  data has real authors, our benchmark's six otherwise.

:func:`tofu_result` reduces per-record arrays, whether a model was just measured or they
were read from published logs (``eval.tofu_logs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.schema import HOLDOUT, OPTION_SPLITS
from jaxunlearn.eval import memorization_metrics, metrics
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.measure import Measurement
from jaxunlearn.eval.tofu_results import Distribution, Sample, SplitScores, TofuResult

__all__ = ["scores_of", "split_scores", "forget_quality_against", "tofu_result",
           "answer_extraction_strength", "compute", "GROUP"]


def _mean(x) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64)))


def scores_of(qa: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, SplitScores],
                                                            dict[str, Distribution]]:
    """Per QA role (``forget``, ``retain``, ...): the three means and the distributions.

    ``qa[role]`` holds per-record arrays ``prob``, ``rouge``, ``truth_ratio`` (``R =
    P(perturbed)/P(paraphrased)``) and, for ``OPTION_SPLITS``, ``norm_prob``, which is
    then the split's probability. The arrays may differ in length (logs drop records a
    metric could not score, as open-unlearning does).
    """
    scores, dist = {}, {}
    for split, nums in qa.items():
        if "truth_ratio" not in nums:  # membership inference only (TOFU's holdout<NN>)
            continue
        prob = nums["norm_prob"] if split in OPTION_SPLITS else nums["prob"]
        agg = (metrics.truth_ratio_forget_score if split in ("forget", HOLDOUT)
               else metrics.truth_ratio_retain_score)
        scores[split] = SplitScores(prob=_mean(prob), rouge=_mean(nums["rouge"]),
                                    truth_ratio=agg(nums["truth_ratio"]))
        dist[split] = Distribution(prob=tuple(float(v) for v in prob),
                                   truth_ratio=tuple(float(v) for v in nums["truth_ratio"]))
    return scores, dist


def split_scores(measurement: Measurement) -> tuple[dict[str, SplitScores],
                                                    dict[str, Distribution]]:
    """:func:`scores_of` a measurement's QA numbers."""
    return scores_of(measurement.qa)


def forget_quality_against(forget_truth_ratios, retain_truth_ratios) -> float | None:
    """KS p-value of these forget truth ratios against the retain model's (None without)."""
    if retain_truth_ratios is None:
        return None
    return metrics.forget_quality(forget_truth_ratios, retain_truth_ratios)


def tofu_result(qa: Mapping[str, Mapping[str, Any]], *, retain_truth_ratios=None,
                samples: tuple[Sample, ...] = (), records: Mapping[str, int] | None = None,
                extraction_strength: float | None = None,
                per_record: Mapping[str, Mapping[str, Any]] | None = None) -> TofuResult:
    """TOFU's numbers from per-record arrays (:func:`scores_of`): the split means, forget
    quality against ``retain_truth_ratios`` (None without) and model utility."""
    scores, dist = scores_of(qa)
    flat = {f"{split}_{kind}": getattr(s, kind)
            for split, s in scores.items() for kind in SplitScores.KINDS}
    mu_keys = tuple(k for k in metrics.TOFU_MODEL_UTILITY_KEYS if k in flat)
    return TofuResult(
        splits=scores, distributions=dist,
        forget_quality=forget_quality_against(qa["forget"]["truth_ratio"], retain_truth_ratios),
        model_utility=metrics.model_utility({k: flat[k] for k in mu_keys}),
        model_utility_keys=mu_keys, samples=samples,
        records=dict(records) if records is not None else {s: len(v["prob"])
                                                            for s, v in qa.items()},
        extraction_strength=extraction_strength, per_record=dict(per_record or {}))


def _per_record(m: Measurement) -> dict[str, dict[str, Any]]:
    """What TOFU_EVAL.json keeps per question: the numbers, ``avg_loss = -log prob``,
    the question, its answer and the model's greedy answer."""
    return {split: {**nums, "avg_loss": -np.log(nums["prob"]),
                    "input": [r["question"] for r in m.plans[split].records],
                    "ground_truth": [r["answer"] for r in m.plans[split].records],
                    "generation": list(m.generations[split])}
            for split, nums in m.qa.items() if "truth_ratio" in nums}


def answer_extraction_strength(correct, mask) -> np.ndarray:
    """open-unlearning's per-answer extraction strength ``[N]`` from teacher-forced greedy
    hits ``correct [N, T]`` over the answer ``mask [N, T]`` (answer + eos): the last
    masked position (the eos) is left out, as its ``extraction_strength`` drops the last
    label, then ``memorization_metrics.extraction_strength`` (its ``1/n`` loop bound)."""
    on = np.asarray(mask) > 0
    rows = np.flatnonzero(on.any(axis=1))
    last = on.shape[1] - 1 - np.argmax(on[:, ::-1], axis=1)
    on[rows, last[rows]] = False
    return np.asarray(memorization_metrics.extraction_strength(
        np.asarray(correct, bool), on.astype(np.float32)), np.float64)


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> TofuResult:
    m = inputs.measurement
    plan = m.plans["forget"]
    answers = m.scores.take(plan.answer)
    return tofu_result(
        m.qa, retain_truth_ratios=inputs.retain_truth_ratios,
        samples=tuple(Sample(question=r["question"], answer=r["answer"], generation=g)
                      for r, g in zip(plan.records[:3], m.generations["forget"][:3])),
        records={split: len(p.records) for split, p in m.plans.items()},
        extraction_strength=float(np.mean(answer_extraction_strength(answers.correct,
                                                                     answers.mask))),
        per_record=_per_record(m))


GROUP = MetricGroup(name="tofu", compute=compute)
