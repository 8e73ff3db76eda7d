"""``eval.suite`` (and its metric groups) on a tiny synthetic benchmark and a tiny model.

Reported numbers are checked against independent computations: per-record answer
probability and truth ratio from a NumPy log-softmax of the model's logits, ROUGE
from the ``rouge-score`` package, LOSS-attack AUC from SciPy's Mann-Whitney U,
model utility by hand; forget quality of a model against itself is 1.
"""

import json
import math

import jax
import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy import stats

from jaxunlearn.data.batch import encode_qa
from jaxunlearn.data.schema import CANARY_SPLITS
from jaxunlearn.errors import DataError, UserError
from jaxunlearn.eval import suite
from jaxunlearn.eval.groups import REGISTRY
from jaxunlearn.eval.metrics import MODEL_UTILITY_KEYS
from jaxunlearn.eval.options import GROUPS
from jaxunlearn.eval.results import ModelResult

OPTIONS = suite.SuiteConfig(forget="forget10", retain="retain90", batch_size=16,
                            max_new_tokens=16, max_records=None, exposure_candidates=4,
                            el_splits=("forget",))


@pytest.fixture(scope="module")
def bench(qa_bench):
    return qa_bench


@pytest.fixture(scope="module")
def tokenizer(qa_tokenizer):
    return qa_tokenizer


@pytest.fixture(scope="module")
def model(qa_model):
    return qa_model


@pytest.fixture(scope="module")
def evaluated(model, tokenizer, bench):
    return suite.evaluate_model(model, tokenizer, bench, OPTIONS)


@pytest.fixture(scope="module")
def result(evaluated):
    """The model's eval.json entry: the pinned flat keys."""
    return evaluated.to_json()


def _np_mean_logprob(forward, tokenizer, question, answer):
    """Per-token-averaged log p(answer + eos | prompt), NumPy log-softmax of one row."""
    e = encode_qa(tokenizer, question, answer)
    n = e.length
    ids = np.zeros((1, 64), np.int32)  # one fixed width: one compilation
    ids[0, :n] = e.token_ids[:-1]
    logits = np.asarray(forward(ids, (np.arange(64) < n)[None].astype(np.int32)),
                        np.float64)[0, :n]
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    tok = logp[np.arange(n), e.token_ids[1:]]
    return tok[e.counted[1:] > 0].mean()


def test_keys_present_and_values_in_range(result, bench):
    for split in ("forget", "retain", "holdout", "world_facts"):  # no real authors here
        for kind in ("prob", "rouge", "truth_ratio"):
            assert 0.0 <= result[f"{split}_{kind}"] <= 1.0, (split, kind)
    assert result["forget_quality"] is None  # no retain model given
    assert 0.0 < result["model_utility"] <= 1.0
    assert result["retain_prob"] > 10 * result["forget_prob"]  # it learned retain only
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert 0.0 <= result[f"mia_{attack}_auc"] <= 1.0
        assert result[f"privleak_{attack}"] is None  # no reference AUC
    n_forget = sum(c["split"] == "forget" for c in bench.canaries)
    for split in CANARY_SPLITS:
        for name in ("ma", "secret_accuracy", "extracted", "es"):
            assert 0.0 <= result[f"canary_{split}_{name}"] <= 1.0
        assert 0.0 <= result[f"canary_{split}_exposure"] <= math.log2(10 ** 8)
        assert (f"canary_{split}_el10" in result) == (split == "forget")  # el_splits
    assert 0.0 <= result["canary_forget_el10"] <= 1.0
    for name in ("num_extracted", "extractable", "over_unlearned"):
        v = result[f"canary_forget_{name}"]
        assert v == int(v) and 0 <= v <= n_forget
    assert set(result["canaries"]) == {"forget", "retain", "heldout"}
    assert set(result["canaries"]["forget"]) == {"1", "4"}
    for key in ("kfr", "krr", "ls"):
        assert 0.0 <= result[key] <= 1.0
    assert result["info"]["kfr_krr_judge"] == "entity-only"
    assert result["info"]["records"]["forget"] == len(bench.splits["forget10"])
    json.dumps(result, allow_nan=False)  # JSON-ready as it stands


def test_probability_and_truth_ratio_match_numpy(result, model, tokenizer, bench):
    rec = bench.splits["forget10"][0]
    q = rec["question"]
    forward = jax.jit(lambda ids, mask: model(ids, mask))
    want_prob = math.exp(_np_mean_logprob(forward, tokenizer, q, rec["answer"]))
    assert result["distributions"]["forget_prob"][0] == pytest.approx(want_prob, rel=1e-4)
    para = _np_mean_logprob(forward, tokenizer, q, rec["paraphrased_answer"])
    pert = [_np_mean_logprob(forward, tokenizer, q, a) for a in rec["perturbed_answer"]]
    want_ratio = math.exp(np.mean(pert) - para)  # P(perturbed) / P(paraphrased)
    assert result["distributions"]["forget_truth_ratio"][0] == pytest.approx(want_ratio,
                                                                            rel=1e-4)
    ratios = np.asarray(result["distributions"]["forget_truth_ratio"])
    assert result["forget_truth_ratio"] == pytest.approx(np.mean(np.minimum(ratios, 1 / ratios)))


def test_model_utility_is_the_harmonic_mean_of_its_reported_parts(result):
    assert result["info"]["model_utility_keys"] == list(MODEL_UTILITY_KEYS)
    parts = [result[k] for k in MODEL_UTILITY_KEYS]
    assert min(parts) > 0
    assert result["model_utility"] == pytest.approx(len(parts) / sum(1 / p for p in parts))


def test_rouge_matches_rouge_score_package(result, bench):
    samples = result["samples"]
    assert len(samples) == len(bench.splits["forget10"])  # 2 records: all are samples
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = np.mean([scorer.score(s["answer"], s["generation"])["rougeL"].recall
                    for s in samples])
    assert result["forget_rouge"] == pytest.approx(want)


def test_loss_attack_auc_equals_mann_whitney(result):
    # LOSS score = mean log p(answer) = log(probability): same ranking.
    forget = np.asarray(result["distributions"]["forget_prob"])
    holdout = np.asarray(result["distributions"]["holdout_prob"])
    u = stats.mannwhitneyu(forget, holdout).statistic
    assert result["mia_loss_auc"] == pytest.approx(u / (forget.size * holdout.size))


def test_canary_table_agrees_with_the_flat_means(result):
    for split, table in result["canaries"].items():
        counts = np.asarray([row["count"] for row in table.values()])
        ma = np.asarray([row["ma"] for row in table.values()])
        assert result[f"canary_{split}_ma"] == pytest.approx((counts * ma).sum() / counts.sum())


def test_against_itself_forget_quality_is_one_and_privleak_zero(evaluated, result, model,
                                                                tokenizer, bench):
    again = suite.evaluate_model(model, tokenizer, bench, OPTIONS, reference=evaluated).to_json()
    assert again["forget_quality"] == 1.0
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        assert again[f"privleak_{attack}"] == pytest.approx(0.0, abs=1e-9)
    direct = suite.evaluate_model(model, tokenizer, bench, OPTIONS, retain_truth_ratios=[
        r * 50 for r in result["distributions"]["forget_truth_ratio"]]).to_json()
    assert direct["forget_quality"] < 0.5  # shifted reference: distinguishable


def test_subset_is_even_and_deterministic():
    assert suite.subset(list(range(10)), 4) == [0, 3, 6, 9]
    assert suite.subset(list(range(3)), 4) == [0, 1, 2]
    assert suite.subset(list(range(3)), None) == [0, 1, 2]


def test_bad_options_and_data_name_the_field(bench):
    with pytest.raises(UserError, match="eval.metrics"):
        suite.SuiteConfig(groups=("tofu", "nonsense"))
    with pytest.raises(UserError, match="max_records"):
        suite.SuiteConfig(max_records=0)
    with pytest.raises(DataError, match="data.forget"):
        suite.benchmark_splits(bench, suite.SuiteConfig(forget="forget42"))
    broken = {**bench.splits, "forget10": [dict(bench.splits["forget10"][0],
                                                perturbed_answer=[])]}
    with pytest.raises(DataError, match="forget: record 1: field 'perturbed_answer'"):
        suite.evaluate_model(None, None, broken, suite.SuiteConfig(groups=("tofu",)))


def test_registry_holds_every_selectable_group_as_a_result_field(evaluated):
    assert tuple(REGISTRY) == GROUPS
    fields = {f.name for f in __import__("dataclasses").fields(ModelResult)}
    assert set(GROUPS) <= fields
    for name in GROUPS:  # every group ran on this benchmark (it has holdout and canaries)
        if name == "muse":  # MUSE's group runs on a MUSE source only, in place of the others
            assert evaluated.muse is None
            continue
        assert getattr(evaluated, name) is not None, name


def test_selected_groups_only(model, tokenizer, bench):
    only = suite.evaluate_model(model, tokenizer, bench, suite.SuiteConfig(
        forget="forget10", retain="retain90", batch_size=16, max_new_tokens=16,
        max_records=None, groups=("mia",)))
    assert only.mia is not None and only.tofu is not None  # tofu is always computed
    assert only.canaries is None and only.extraction is None and only.knowledge is None
    keys = set(only.to_json())
    assert "mia_min_k_auc" in keys and "kfr" not in keys
    assert not any(k.startswith("canary_") for k in keys) and "canaries" not in keys


def test_json_round_trip_is_exact(evaluated, result):
    again = ModelResult.from_json(json.loads(json.dumps(result)))
    assert again == evaluated
    assert again.to_json() == result
