"""eval.groups.canaries: exposure per canary (skew-normal and sampled rank) on hand-made
scores, the per-repetition table and the estimator named in eval.json."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from jaxunlearn.eval.groups import canaries
from jaxunlearn.eval.measure import CanaryPlan
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.results import ModelResult, TofuResult
from jaxunlearn.eval.scoring import SequenceScores
from jaxunlearn.errors import UserError

SPACE = 1000


def _scores(secret_px: list[float], cand_px: list[list[float]]):
    """Rows: each canary's document, then its candidates; the secret is label position 1,
    position 0 (the prefix) carries a large log-prob that must not count."""
    px = [p for s, cs in zip(secret_px, cand_px) for p in [s, *cs]]
    n, width = len(px), 2
    token_logp = np.zeros((n, width), np.float32)
    token_logp[:, 0] = -9.0
    token_logp[:, 1] = -np.asarray(px, np.float32)
    mask = np.ones((n, width), np.float32)
    zeros = np.zeros(n)
    scores = SequenceScores(seq_logprob=token_logp.sum(1), num_tokens=np.full(n, width),
                            num_correct=zeros, min_k=zeros, min_k_plus_plus=zeros,
                            token_logp=token_logp, correct=np.zeros((n, width), bool),
                            mask=mask, labels=np.zeros((n, width), np.int32))
    secret = np.array([0.0, 1.0], np.float32)
    text, cands, start = [], [], 0
    for cs in cand_px:
        text.append(start)
        cands.append(np.arange(start + 1, start + 1 + len(cs)))
        start += 1 + len(cs)
    records = [{"split": "forget", "repetitions": r} for r in (16, 1)][: len(secret_px)]
    plan = CanaryPlan(records=records, docs=[], text=np.asarray(text),
                      secret=[secret] * len(secret_px), candidates=cands,
                      candidate_secret=[[secret] * len(cs) for cs in cand_px],
                      space=[SPACE] * len(secret_px))
    return plan, scores


def test_exposure_by_hand_and_by_scipy():
    cands = [3.0, 4.0, 5.0, 6.0, 7.0]
    plan, scores = _scores([2.0, 4.5], [cands, cands])
    first, second = canaries.canary_numbers(plan, scores)
    # The secret beats every candidate: the rank estimate is at its ceiling, censored.
    assert first["exposure_rank"] == pytest.approx(math.log2(SPACE))
    assert first["exposure_censored"] == 1.0
    # Two candidates below 4.5: rank = 1 + 2/5 * (|R| - 1).
    assert second["exposure_rank"] == pytest.approx(math.log2(SPACE) - math.log2(1 + 0.4 * 999))
    assert second["exposure_censored"] == 0.0
    fit = stats.skewnorm.fit(np.asarray(cands))
    for item, px in ((first, 2.0), (second, 4.5)):
        want = min(-math.log2(stats.skewnorm.cdf(px, *fit)), math.log2(SPACE))
        assert item["exposure"] == pytest.approx(want, rel=1e-6)

    result = canaries.summarize([first, second], SuiteConfig(max_records=None))
    table = result.by_repetitions["forget"]
    assert set(table) == {1, 16}
    assert table[16].exposure == pytest.approx(first["exposure"])
    assert table[1].exposure_rank == pytest.approx(second["exposure_rank"])
    assert result.splits["forget"].exposure_censored == pytest.approx(0.5)
    out = ModelResult(tofu=TofuResult(splits={}), canaries=result).to_json()
    assert out["info"]["canary_exposure_estimator"] == "skewnorm"
    assert out["canaries"]["forget"]["16"]["exposure_rank"] == pytest.approx(math.log2(SPACE))
    assert out["canary_forget_exposure"] == pytest.approx(np.mean([first["exposure"],
                                                                   second["exposure"]]))
    back = ModelResult.from_json(out)
    assert back.canaries.exposure_estimator == "skewnorm"
    assert back.canaries.by_repetitions["forget"][1].exposure == pytest.approx(
        second["exposure"])


def test_exposure_needs_three_candidates():
    with pytest.raises(UserError, match="exposure_candidates"):
        SuiteConfig(exposure_candidates=2)
