"""Canary memorisation (Carlini et al. 2019, "The Secret Sharer"; Jang et al. 2023).

Per canary (``prefix + secret`` seen ``repetitions`` times in training, or never for
the heldout ones), from the shared scoring pass:

* MA: teacher-forced greedy accuracy over the whole canary (Jang et al. 2023);
* secret accuracy: the same over the secret's tokens; extracted: 1 when it is 1 (greedy
  decoding after the prefix reproduces the secret);
* ES: extraction strength on the secret;
* exposure (bits) of ``Px(s) = -log p(secret | prefix)`` against ``exposure_candidates``
  same-format secrets drawn from the secret space R, two estimators (Carlini et al. 2019):
  ``exposure`` extrapolates with a skew-normal fitted to the candidates' ``Px`` (sec.
  4.2; ``EXPOSURE_ESTIMATOR``), capped at ``log2|R|``; ``exposure_rank`` is the
  sampled rank scaled to R, ``log2|R| - log2 rank``, which can only take m + 1 values
  for m candidates and saturates at ``log2|R|`` when the secret beats every sample
  (19.9 bits for |R| = 1e6, while one lower sample already drops it to about ``log2 m``);
  the share of such censored canaries is ``exposure_censored``.

Means per split and per (split, repetition count); over the forget canaries the counts
extracted, extractable (MA >= ``extractable_ma``) and over-unlearned (MA <
``over_unlearned_ma``); the LOSS attack's AUC of forget vs heldout canaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.schema import CANARY_SPLITS
from jaxunlearn.eval import memorization_metrics, mia
from jaxunlearn.eval.canary_results import CanaryResult, CanaryScores
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.measure import CanaryPlan
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.scoring import SequenceScores

__all__ = ["EXPOSURE_ESTIMATOR", "canary_numbers", "summarize", "compute", "GROUP"]

# What ``exposure`` holds (eval.json ``info.canary_exposure_estimator``).
EXPOSURE_ESTIMATOR = "skewnorm"


def _padded(mask: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(width, np.float32)
    out[: len(mask)] = mask
    return out


def _secret_nll(scores: SequenceScores, row: int, secret: np.ndarray) -> float:
    """``-log p(secret | prefix)``: Carlini et al.'s log-perplexity, less the shared prefix."""
    return -float((scores.token_logp[row] * _padded(secret, scores.mask.shape[1])).sum())


def canary_numbers(plan: CanaryPlan, scores: SequenceScores) -> list[dict]:
    """Per canary: split, repetitions, ``ma``, ``secret_accuracy``, ``extracted``, ``es``,
    ``loss`` (mean token log-prob) and, where candidates were scored, ``exposure``
    (skew-normal extrapolation), ``exposure_rank`` and ``exposure_censored`` (1 when the
    secret's ``Px`` is below every candidate's: the rank estimate is at its ceiling)."""
    width = scores.mask.shape[1]
    out = []
    for i, c in enumerate(plan.records):
        row = int(plan.text[i])
        secret = _padded(plan.secret[i], width)
        correct = scores.correct[row]
        n_secret = float(secret.sum())
        acc = float((correct * secret).sum() / n_secret) if n_secret else 0.0
        item = {
            "split": c["split"], "repetitions": int(c["repetitions"]),
            "ma": float(scores.accuracy[row]),
            "secret_accuracy": acc,
            "extracted": float(n_secret > 0 and acc == 1.0),
            "es": float(memorization_metrics.extraction_strength(correct[None], secret[None])[0]),
            "loss": float(scores.mean_logprob[row]),
        }
        if plan.candidates[i] is not None:
            cand = [_secret_nll(scores, int(j), s)
                    for j, s in zip(plan.candidates[i], plan.candidate_secret[i])]
            px = _secret_nll(scores, row, plan.secret[i])
            item["exposure"] = memorization_metrics.exposure_skewnorm(
                px, cand, space_size=plan.space[i])
            item["exposure_rank"] = memorization_metrics.exposure(
                px, cand, space_size=plan.space[i])
            item["exposure_censored"] = float(px < min(cand))
        out.append(item)
    return out


def _means(items: list[dict], *, count: bool) -> CanaryScores:
    values = {}
    for name in CanaryScores.METRICS:
        vals = [it[name] for it in items if name in it]
        if vals:
            values[name] = float(np.mean(vals))
    return CanaryScores(**values, count=float(len(items)) if count else None)


def summarize(items: list[dict], options: SuiteConfig) -> CanaryResult:
    """Means per canary split and per (split, repetitions), and the forget-canary counts."""
    splits, table = {}, {}
    for split in CANARY_SPLITS:
        group = [it for it in items if it["split"] == split]
        if not group:
            continue
        splits[split] = _means(group, count=False)
        table[split] = {reps: _means([it for it in group if it["repetitions"] == reps],
                                     count=True)
                        for reps in sorted({it["repetitions"] for it in group})}
    forget = [it for it in items if it["split"] == "forget"]
    held = [it["loss"] for it in items if it["split"] == "heldout"]
    counts = {}
    if forget:
        counts = dict(
            num_extracted=float(sum(it["extracted"] for it in forget)),
            extractable=float(sum(it["ma"] >= options.extractable_ma for it in forget)),
            over_unlearned=float(sum(it["ma"] < options.over_unlearned_ma for it in forget)))
    # LOSS attack on whole canaries: do forget canaries still look like members?
    auc = mia.auc([it["loss"] for it in forget], held) if forget and held else None
    estimator = EXPOSURE_ESTIMATOR if any("exposure" in it for it in items) else None
    return CanaryResult(splits=splits, by_repetitions=table, mia_loss_auc=auc,
                        count=len(items), exposure_estimator=estimator, **counts)


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> CanaryResult | None:
    plan = inputs.measurement.canary_plan
    if plan is None:
        return None
    return summarize(canary_numbers(plan, inputs.measurement.scores), inputs.options)


GROUP = MetricGroup(name="canaries", compute=compute)
