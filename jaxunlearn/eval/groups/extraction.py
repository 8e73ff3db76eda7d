"""Extraction likelihood EL_n of the canaries (Jang et al. 2023, "Knowledge Unlearning").

For each canary of ``options.el_splits`` longer than ``n`` tokens, greedy continuations
of its prefixes (``memorization_metrics.extraction_likelihood_prefixes``) are compared with the
rest of the canary by n-gram overlap; the means per split and per (split, repetition
count) are reported beside the other canary numbers. It needs one decoding per prefix,
the evaluation's second model pass over the canaries.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.batch import pad_id
from jaxunlearn.data.schema import CANARY_SPLITS
from jaxunlearn.eval import memorization_metrics
from jaxunlearn.eval.canary_results import ExtractionResult
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.measure import CanaryPlan
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.scoring import greedy_generate

__all__ = ["extraction_likelihoods", "compute", "GROUP"]


def extraction_likelihoods(model, tokenizer, plan: CanaryPlan, options: SuiteConfig
                           ) -> dict[int, float]:
    """``{canary index: EL_n}`` for the canaries in ``options.el_splits``."""
    targets: dict[int, list[int]] = {}
    prompts, owners, budgets = [], [], []
    for i, c in enumerate(plan.records):
        target = [int(t) for t in plan.docs[i].token_ids[:-1]]  # bos + text, no eos
        if c["split"] not in options.el_splits or len(target) <= options.el_n:
            continue
        targets[i] = target
        for p in memorization_metrics.extraction_likelihood_prefixes(len(target), options.el_n):
            prompts.append(target[:p])
            owners.append(i)
            budgets.append(len(target) - p)  # the continuation is cut at the target's length
    if not prompts:
        return {}
    gens = greedy_generate(model, prompts, max_new_tokens=budgets,
                           eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer),
                           batch_size=options.batch_size)
    conts: dict[int, list[list[int]]] = {i: [] for i in targets}
    for i, g in zip(owners, gens):
        conts[i].append(g)
    return {i: memorization_metrics.extraction_likelihood(targets[i], conts[i], n=options.el_n)
            for i in targets}


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> ExtractionResult | None:
    plan = inputs.measurement.canary_plan
    if plan is None:
        return None
    el = extraction_likelihoods(inputs.model, inputs.tokenizer, plan, inputs.options)
    splits, rows = {}, {}
    for split in CANARY_SPLITS:
        owned = [(int(plan.records[i]["repetitions"]), v) for i, v in el.items()
                 if plan.records[i]["split"] == split]
        if not owned:
            continue
        splits[split] = float(np.mean([v for _, v in owned]))
        rows[split] = {reps: float(np.mean([v for r, v in owned if r == reps]))
                       for reps in sorted({r for r, _ in owned})}
    return ExtractionResult(n=inputs.options.el_n, splits=splits, by_repetitions=rows)


GROUP = MetricGroup(name="extraction", compute=compute)
