"""TOFU's metrics (Maini et al. 2024; definitions as open-unlearning's), per QA split.

* probability: mean ``P(a|q)^(1/|a|)`` (world facts: normalised over the answer and
  its perturbations, as TOFU);
* ROUGE-L recall of the greedy answer (``max_new_tokens``) against the answer;
* truth ratio ``R = P(perturbed) / P(paraphrased)`` per record, aggregated as
  ``mean(min(R, 1/R))`` on forget and holdout (1 = truth and falsehood equally
  likely) and ``mean(max(0, 1 - R))`` on retain and world facts (the share of
  preference for the truth);
* forget quality: KS p-value of the forget truth ratios against the retain model's;
* model utility: harmonic mean of ``metrics.MODEL_UTILITY_KEYS`` ({retain, world facts}
  x {prob, rouge, truth ratio}) that exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.schema import HOLDOUT, WORLD_FACTS
from jaxunlearn.eval import metrics
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.measure import Measurement
from jaxunlearn.eval.results import Distribution, Sample, SplitScores, TofuResult

__all__ = ["split_scores", "forget_quality_against", "compute", "GROUP"]


def _mean(x) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64)))


def split_scores(measurement: Measurement) -> tuple[dict[str, SplitScores],
                                                    dict[str, Distribution]]:
    """Per QA split: the three means and the per-record distributions."""
    scores, dist = {}, {}
    for split, nums in measurement.qa.items():
        prob = nums["norm_prob"] if split == WORLD_FACTS else nums["prob"]
        agg = (metrics.truth_ratio_forget_score if split in ("forget", HOLDOUT)
               else metrics.truth_ratio_retain_score)
        scores[split] = SplitScores(prob=_mean(prob), rouge=_mean(nums["rouge"]),
                                    truth_ratio=agg(nums["truth_ratio"]))
        dist[split] = Distribution(prob=tuple(float(v) for v in prob),
                                   truth_ratio=tuple(float(v) for v in nums["truth_ratio"]))
    return scores, dist


def forget_quality_against(forget_truth_ratios, retain_truth_ratios) -> float | None:
    """KS p-value of these forget truth ratios against the retain model's (None without)."""
    if retain_truth_ratios is None:
        return None
    return metrics.forget_quality(forget_truth_ratios, retain_truth_ratios)


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> TofuResult:
    m = inputs.measurement
    scores, dist = split_scores(m)
    flat = {f"{split}_{kind}": getattr(s, kind)
            for split, s in scores.items() for kind in SplitScores.KINDS}
    mu_keys = tuple(k for k in metrics.MODEL_UTILITY_KEYS if k in flat)
    plan = m.plans["forget"]
    return TofuResult(
        splits=scores, distributions=dist,
        forget_quality=forget_quality_against(m.qa["forget"]["truth_ratio"],
                                              inputs.retain_truth_ratios),
        model_utility=metrics.model_utility({k: flat[k] for k in mu_keys}),
        model_utility_keys=mu_keys,
        samples=tuple(Sample(question=r["question"], answer=r["answer"], generation=g)
                      for r, g in zip(plan.records[:3], m.generations["forget"][:3])),
        records={split: len(p.records) for split, p in m.plans.items()})


GROUP = MetricGroup(name="tofu", compute=compute)
