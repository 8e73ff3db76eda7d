"""Published TOFU logs in (TOFU's eval_log_aggregated.json, open-unlearning's TOFU_EVAL.json):
FQ/MU against an independent NumPy/SciPy computation by TOFU's aggregate_eval_stat.py
formulas, written here from the formulas, not from our code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from jaxunlearn import cli
from jaxunlearn.errors import DataError
from jaxunlearn.eval.groups.tofu import answer_extraction_strength, tofu_result
from jaxunlearn.eval.results import ModelResult
from jaxunlearn.eval.tofu_logs import (SUMMARY_KEYS, TOFU_TASKS, logs_result, read_tofu_logs,
                                       tofu_eval_document, tofu_summary)

TASKS = list(TOFU_TASKS)  # forget, retain, real authors, world facts


def _tofu_log(rng, *, shift: float, n=(12, 10, 6, 7)) -> dict:
    """A small eval_log_aggregated.json: 5 perturbed answers for forget/retain, 3 for the
    option splits (as the published files), indices as strings, extra fields kept."""
    doc = {}
    for task, rows in zip(TASKS, n):
        k = 3 if "wo_options" in task else 5
        gt = rng.uniform(0.05, 2.0, rows) + (shift if task == "eval_log_forget.json" else 0)
        para = rng.uniform(0.1, 2.5, rows)
        pert = rng.uniform(0.5, 3.5, (rows, k))
        rouge = rng.uniform(0, 1, rows)
        doc[task] = {
            "avg_gt_loss": {str(i): float(v) for i, v in enumerate(gt)},
            "avg_paraphrased_loss": {str(i): float(v) for i, v in enumerate(para)},
            "average_perturb_loss": {str(i): [float(x) for x in row] for i, row in enumerate(pert)},
            "rougeL_recall": {str(i): float(v) for i, v in enumerate(rouge)},
            "num_token_gt": {str(i): 7 for i in range(rows)},
            "generated_text": {str(i): [f"[INST] q{i} [/INST]", f"gen {i}", f"gt {i}"]
                               for i in range(rows)}}
    return doc


def _reference(doc: dict) -> dict:
    """TOFU's aggregate_eval_stat.py, re-derived: returns the nine MU parts and MU."""
    out = {}
    names = {"eval_log.json": "retain", "eval_real_author_wo_options.json": "ra",
             "eval_real_world_wo_options.json": "wf"}
    for task, short in names.items():
        t = doc[task]
        gt = np.array(list(t["avg_gt_loss"].values()))
        pert = np.array(list(t["average_perturb_loss"].values()))
        para = np.array(list(t["avg_paraphrased_loss"].values()))
        if short == "retain":
            prob = np.mean(np.exp(-gt))
        else:
            true = np.exp(-gt)
            prob = np.mean(true / (true + np.exp(-pert).sum(-1)))
        stat = np.exp(pert.mean(-1) - para)  # P(para) / P(pert)
        out[short] = (prob, np.mean(list(t["rougeL_recall"].values())),
                      np.mean(np.maximum(0, 1 - 1 / stat)))
    out["mu"] = stats.hmean([v for s in ("retain", "ra", "wf") for v in out[s]])
    return out


def _forget_ratio(doc):
    t = doc["eval_log_forget.json"]
    pert = np.array(list(t["average_perturb_loss"].values())).mean(-1)
    return np.exp(pert - np.array(list(t["avg_paraphrased_loss"].values())))


def test_tofu_aggregated_log_matches_aggregate_eval_stat(tmp_path):
    rng = np.random.default_rng(0)
    full, retain = _tofu_log(rng, shift=-0.04), _tofu_log(rng, shift=1.0)
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "retain").mkdir()
    (tmp_path / "retain" / "eval_log_aggregated.json").write_text(json.dumps(retain))
    logs = read_tofu_logs(tmp_path / "full.json")
    ret = read_tofu_logs(tmp_path / "retain")  # a directory holding the file
    result = logs_result(logs, ret).tofu
    ref = _reference(full)
    assert result.model_utility == pytest.approx(ref["mu"], abs=1e-12)
    for role, short in (("retain", "retain"), ("real_authors", "ra"), ("world_facts", "wf")):
        s = result.splits[role]
        assert (s.prob, s.rouge, s.truth_ratio) == pytest.approx(ref[short], abs=1e-12)
    fq = stats.ks_2samp(_forget_ratio(full), _forget_ratio(retain)).pvalue
    assert result.forget_quality == pytest.approx(fq, rel=1e-12)
    r = _forget_ratio(full)  # forget truth ratio: mean min(R, 1/R)
    assert result.splits["forget"].truth_ratio == pytest.approx(np.mean(np.minimum(r, 1 / r)))
    assert result.model_utility_keys and len(result.model_utility_keys) == 9
    assert logs_result(ret, ret).tofu.forget_quality == 1.0
    assert result.samples[0].generation == "gen 0" and result.samples[0].answer == "gt 0"


def test_hand_worked_option_probability_and_ratio(tmp_path):
    # One real-authors question: losses gt 1, perturbed [ln 2 + 1, 1, 1 - ln 2]:
    # p = e^-1, p_k = e^-1 * (1/2, 1, 2) -> normalised 1 / (1 + 3.5) = 2/9.
    doc = _tofu_log(np.random.default_rng(1), shift=0.0)
    task = doc["eval_real_author_wo_options.json"]
    for field in list(task):
        task[field] = {"0": task[field]["0"]}
    task["avg_gt_loss"]["0"] = 1.0
    task["avg_paraphrased_loss"]["0"] = 1.0
    task["average_perturb_loss"]["0"] = [np.log(2) + 1, 1.0, 1 - np.log(2)]
    (tmp_path / "a.json").write_text(json.dumps(doc))
    s = logs_result(read_tofu_logs(tmp_path / "a.json")).tofu.splits["real_authors"]
    assert s.prob == pytest.approx(2 / 9, abs=1e-12)
    assert s.truth_ratio == pytest.approx(0.0, abs=1e-12)  # R = exp(1 - 1) = 1 -> max(0, 1 - 1)


def _ou_eval(rng, n=8) -> dict:
    """A small open-unlearning TOFU_EVAL.json (value_by_index keyed by strings)."""
    def metric(key, values, **extra):
        return {"agg_value": float(np.mean(values)),
                "value_by_index": {str(i): {key: float(v), **{k: e[i] for k, e in extra.items()}}
                                   for i, v in enumerate(values)}}
    doc = {}
    for p in ("forget", "retain", "ra", "wf"):
        prob = rng.uniform(0.05, 1, n)
        doc[f"{p}_Q_A_Prob"] = metric("prob", prob)
        if p in ("ra", "wf"):
            doc[f"{p}_Q_A_Prob_normalised"] = metric("prob", rng.uniform(0.1, 0.9, n))
        doc[f"{p}_Q_A_ROUGE"] = metric("rougeL_recall", rng.uniform(0, 1, n),
                                       input=[f"q{i}" for i in range(n)],
                                       ground_truth=[f"a{i}" for i in range(n)],
                                       generation=[f"g{i}" for i in range(n)])
        name = "forget_truth_ratio" if p == "forget" else f"{p}_Truth_Ratio"
        doc[name] = metric("score", rng.uniform(0.2, 3.0, n))
    doc["mia_min_k"] = {"agg_value": float(rng.uniform(0.6, 0.95)), "auc": 0.0}
    doc["extraction_strength"] = {"agg_value": 0.42, "value_by_index": {}}
    return doc


def test_open_unlearning_tofu_eval_read_and_written_back(tmp_path):
    rng = np.random.default_rng(2)
    model, retain = _ou_eval(rng), _ou_eval(rng)
    retain["mia_min_k"]["agg_value"] = 0.5
    (tmp_path / "m.json").write_text(json.dumps(model))
    (tmp_path / "r.json").write_text(json.dumps(retain))
    result = logs_result(read_tofu_logs(tmp_path / "m.json"), read_tofu_logs(tmp_path / "r.json"))
    vals = lambda doc, m, k: np.array([v[k] for v in doc[m]["value_by_index"].values()])
    nine = []
    for p in ("retain", "ra", "wf"):
        prob = vals(model, f"{p}_Q_A_Prob" if p == "retain" else f"{p}_Q_A_Prob_normalised", "prob")
        tr = vals(model, f"{p}_Truth_Ratio", "score")
        nine += [prob.mean(), vals(model, f"{p}_Q_A_ROUGE", "rougeL_recall").mean(),
                 np.mean(np.maximum(0, 1 - tr))]
    assert result.tofu.model_utility == pytest.approx(stats.hmean(nine), abs=1e-12)
    f, r = (vals(d, "forget_truth_ratio", "score") for d in (model, retain))
    assert result.tofu.forget_quality == pytest.approx(stats.ks_2samp(f, r).pvalue, rel=1e-12)
    assert result.tofu.splits["forget"].truth_ratio == pytest.approx(
        np.mean(np.minimum(f, 1 / (f + 1e-10))), abs=1e-9)
    auc = model["mia_min_k"]["agg_value"]
    assert result.mia.muse_privleak == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100, abs=1e-9)
    summary = tofu_summary(result)
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["model_utility"] == result.tofu.model_utility
    assert summary["ra_Q_A_Prob_normalised"] == pytest.approx(
        vals(model, "ra_Q_A_Prob_normalised", "prob").mean())
    assert summary["extraction_strength"] == 0.42


def test_tofu_eval_document_reads_back(tmp_path):
    rng = np.random.default_rng(3)
    per = {}
    for role, n in (("forget", 6), ("retain", 5), ("real_authors", 4), ("world_facts", 4)):
        loss = rng.uniform(0.1, 2, n)
        per[role] = {"prob": np.exp(-loss), "avg_loss": loss, "rouge": rng.uniform(0, 1, n),
                     "truth_ratio": rng.uniform(0.2, 2, n), "norm_prob": rng.uniform(0, 1, n),
                     "input": [f"q{i}" for i in range(n)], "ground_truth": ["a"] * n,
                     "generation": ["g"] * n}
    result = ModelResult(tofu=tofu_result(per, retain_truth_ratios=per["forget"]["truth_ratio"]))
    doc = tofu_eval_document(result, per)
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(doc))
    back = logs_result(read_tofu_logs(tmp_path), read_tofu_logs(tmp_path)).tofu
    assert back.model_utility == pytest.approx(result.tofu.model_utility, abs=1e-12)
    assert back.forget_quality == 1.0
    assert doc["model_utility"]["agg_value"] == result.tofu.model_utility


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("eval_log.json"), "field 'eval_log.json': missing"),
    (lambda d: d["eval_log_forget.json"].pop("avg_paraphrased_loss"),
     "eval_log_forget.json: field 'avg_paraphrased_loss': missing"),
    (lambda d: d["eval_log.json"]["average_perturb_loss"].__setitem__("2", "x"),
     "question 2: field 'average_perturb_loss': expected a non-empty list"),
    (lambda d: d["eval_log.json"]["avg_gt_loss"].__setitem__("1", None),
     "question 1: field 'avg_gt_loss': expected a finite number"),
])
def test_bad_tofu_log_names_file_and_field(tmp_path, edit, message):
    doc = _tofu_log(np.random.default_rng(4), shift=0.0)
    edit(doc)
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    with pytest.raises(DataError) as e:
        read_tofu_logs(tmp_path / "bad.json")
    assert str(tmp_path / "bad.json") in str(e.value) and message in str(e.value)


def test_bad_open_unlearning_log_and_unknown_file(tmp_path):
    doc = _ou_eval(np.random.default_rng(5))
    del doc["wf_Q_A_ROUGE"]
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match="field 'wf_Q_A_ROUGE': missing"):
        read_tofu_logs(tmp_path / "TOFU_EVAL.json")
    for name in ("ra_Q_A_Prob", "ra_Q_A_Prob_normalised", "ra_Q_A_ROUGE", "ra_Truth_Ratio"):
        doc.pop(name)
    doc["wf_Q_A_ROUGE"] = doc["wf_Q_A_Prob"]  # a role present in part: its field is named
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"wf_Q_A_ROUGE.value_by_index.0.rougeL_recall'?: missing"):
        read_tofu_logs(tmp_path / "TOFU_EVAL.json")
    for name in ("wf_Q_A_ROUGE", "wf_Q_A_Prob", "wf_Q_A_Prob_normalised", "wf_Truth_Ratio"):
        doc.pop(name)
    (tmp_path / "TOFU_EVAL.json").write_text(json.dumps(doc))
    assert set(read_tofu_logs(tmp_path / "TOFU_EVAL.json").qa) == {"forget", "retain"}
    (tmp_path / "other.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataError, match="neither open-unlearning"):
        read_tofu_logs(tmp_path / "other.json")
    with pytest.raises(DataError, match="no such log file"):
        read_tofu_logs(tmp_path / "absent.json")


def test_cli_eval_from_logs_writes_eval_json(tmp_path, capsys):
    rng = np.random.default_rng(6)
    full, retain = _tofu_log(rng, shift=0.0), _tofu_log(rng, shift=1.0)
    (tmp_path / "full.json").write_text(json.dumps(full))
    (tmp_path / "retain.json").write_text(json.dumps(retain))
    out = tmp_path / "out"
    code = cli.main(["eval", "--logs", f"full={tmp_path / 'full.json'}", "--retain-logs",
                     str(tmp_path / "retain.json"), f"output_dir={out}"])
    assert code == 0, capsys.readouterr().err
    models = json.loads((out / "eval.json").read_text())["models"]
    assert set(models) == {"retain", "full"}
    fq = stats.ks_2samp(_forget_ratio(full), _forget_ratio(retain)).pvalue
    assert models["full"]["forget_quality"] == pytest.approx(fq, rel=1e-12)
    assert models["full"]["model_utility"] == pytest.approx(_reference(full)["mu"], abs=1e-12)
    assert models["retain"]["forget_quality"] == 1.0
    assert models["full"]["real_authors_prob"] == pytest.approx(_reference(full)["ra"][0])
    assert (out / "report.md").is_file()
    # A bad log file: one line naming the file and field, exit 2, nothing written.
    del full["eval_log.json"]["rougeL_recall"]
    (tmp_path / "bad.json").write_text(json.dumps(full))
    code = cli.main(["eval", "--logs", f"bad={tmp_path / 'bad.json'}",
                     f"output_dir={tmp_path / 'out2'}"])
    err = capsys.readouterr().err
    assert code == 2 and "bad.json" in err and "rougeL_recall" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out2" / "eval.json").exists()


def _es_loop(preds_ok: list[bool]) -> float:
    """open-unlearning's extraction_strength loop on one answer (labels without the eos):
    the first k with every position from k on right; k stays n - 1 when none is."""
    n = len(preds_ok)
    if n == 0:
        return 0.0
    k = 0
    for k in range(n):
        if all(preds_ok[k:]):
            break
    return 1 - k / n


def test_answer_extraction_strength_matches_open_unlearning_loop():
    rng = np.random.default_rng(7)
    n_rows, width = 40, 12
    correct = rng.random((n_rows, width)) < 0.7
    mask = np.zeros((n_rows, width), np.float32)
    want = []
    for i in range(n_rows):
        start, length = rng.integers(0, 4), rng.integers(1, 8)  # prompt, answer + eos
        mask[i, start:start + length] = 1
        want.append(_es_loop(list(correct[i, start:start + length - 1])))
    got = answer_extraction_strength(correct, mask)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert got[np.flatnonzero(mask.sum(1) == 1)].tolist() == [0.0] * int((mask.sum(1) == 1).sum())
