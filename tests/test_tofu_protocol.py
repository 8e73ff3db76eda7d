"""TOFU as published, evaluated end to end the way open-unlearning does: a directory of
TOFU's configs (JSON lines, a JSON array, parquet and a save_to_disk directory), with the
published real-authors and world-facts files as they are; MU = harmonic mean of the nine
components listed in TOFU_SUMMARY.json; MIA / privleak against holdout10."""

from __future__ import annotations

import json

import pytest
from _tofu_layout import PUBLISHED, write_jsonl, write_tofu_layout
from scipy import stats

from jaxunlearn.config import load_config
from jaxunlearn.data import tofu
from jaxunlearn.errors import DataError
from jaxunlearn.eval.inputs import benchmark_splits
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.tofu_logs import read_tofu_logs
from jaxunlearn.pipeline.evaluation import Evaluation

NINE = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised",
        "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE",
        "wf_Truth_Ratio")


def test_published_files_have_the_documented_shape():
    for name, count in (("real_authors_perturbed", 100), ("world_facts_perturbed", 117)):
        rows = tofu.read_records(PUBLISHED / f"{name}.json")
        assert len(rows) == count
        assert all(set(r) == {"question", "answer", "perturbed_answer"} for r in rows)
        assert all(len(r["perturbed_answer"]) == 3 for r in rows)


def test_roles_follow_open_unlearning(tmp_path, qa_bench):
    root = write_tofu_layout(tmp_path / "TOFU", qa_bench)
    data = benchmark_splits(root, SuiteConfig(forget="forget10", retain="retain90"))
    assert len(data["retain"]) == 6  # retain_perturbed, not retain90
    assert len(data["forget"]) == len(qa_bench.splits["forget10"])
    assert len(data["holdout"]) == len(qa_bench.splits["holdout"])  # the save_to_disk dir
    assert len(data["real_authors"]) == 100 and len(data["world_facts"]) == 117
    assert all(len(r["perturbed_answer"]) == 3 for r in data["real_authors"])
    # A bad record names the file, the record and the field, before any model is loaded.
    write_jsonl(root / "retain_perturbed.json", [{"question": "q", "answer": "a",
                                             "perturbed_answer": "not a list"}])
    with pytest.raises(DataError, match=r"retain_perturbed.json: line 1: field "
                                        r"'perturbed_answer': expected a list"):
        benchmark_splits(root, SuiteConfig(forget="forget10", retain="retain90"))


def test_tofu_layout_evaluates_end_to_end(tmp_path, qa_bench, qa_tokenizer, qa_model):
    root = write_tofu_layout(tmp_path / "TOFU", qa_bench)
    cfg = load_config(None, [f"output_dir={tmp_path / 'out'}", f"data.benchmark={root}",
                             "eval.batch_size=16", "eval.max_new_tokens=8", "eval.max_records=4",
                             "eval.attacks=false", "eval.metrics=[tofu,mia]"])
    ev = Evaluation(cfg, cfg.data.benchmark)
    ev.add_retain(qa_model, qa_tokenizer)
    ev.add("target", qa_model, qa_tokenizer)
    ev.write(tmp_path / "out", mesh=None)
    entry = json.loads((tmp_path / "out" / "eval.json").read_text())["models"]["target"]
    assert len(entry["info"]["model_utility_keys"]) == 9
    assert entry["mia_min_k_auc"] is not None and entry["privleak"] is not None
    summary = json.loads((tmp_path / "out" / "TOFU" / "target" / "TOFU_SUMMARY.json").read_text())
    assert summary["model_utility"] == pytest.approx(stats.hmean([summary[k] for k in NINE]),
                                                     rel=1e-12)
    assert summary["forget_quality"] == pytest.approx(1.0)  # the same model as the retain one
    assert summary["privleak"] == pytest.approx(0.0, abs=1e-9)
    assert 0.0 <= summary["extraction_strength"] <= 1.0
    doc = json.loads((tmp_path / "out" / "TOFU" / "target" / "TOFU_EVAL.json").read_text())
    rows = doc["forget_Q_A_ROUGE"]["value_by_index"]
    assert set(rows["0"]) == {"rougeL_recall", "input", "ground_truth", "generation"}
    assert doc["ra_Q_A_Prob_normalised"]["agg_value"] == summary["ra_Q_A_Prob_normalised"]
    # The written file reads back as a retain reference, number for number.
    back = read_tofu_logs(tmp_path / "out" / "TOFU" / "target")
    assert back.qa["forget"]["truth_ratio"].tolist() == pytest.approx(
        entry["distributions"]["forget_truth_ratio"], rel=1e-12)
