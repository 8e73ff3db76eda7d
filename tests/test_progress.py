"""Evaluation during unlearning: ``eval.progress`` against NumPy/SciPy/rouge-score, and
``jaxunlearn unlearn`` with ``train.eval_every``, ``train.keep_best``, ``train.log_every``
and ``train.tracker=tensorboard`` end to end on the toy target (``conftest.toy_target``)."""

import json

import numpy as np
import pytest
import yaml
from flax import nnx
from rouge_score import rouge_scorer
from scipy import stats

from jaxunlearn import cli
from jaxunlearn.config import load_config
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.errors import ConfigError
from jaxunlearn.eval import progress
from jaxunlearn.eval.generate import generate_texts
from jaxunlearn.models import load_pretrained
from test_tracking import _read_events


def _with_truth_ratio_fields(records):
    """Each record gets a paraphrased answer and two perturbed ones (other people's)."""
    answers = [r["answer"] for r in records]
    return [{**r, "paraphrased_answer": f"It is {r['answer']}.",
             "perturbed_answer": [answers[(i + 1) % len(answers)], answers[(i + 3) % len(answers)]]}
            for i, r in enumerate(records)]


def _mean_logp(model, tokenizer, pairs) -> np.ndarray:
    """``[N]`` per-token mean answer log-prob of (question, answer) pairs, NumPy float64 on
    the model's logits (independent of eval.scoring)."""
    enc = [batch_lib.encode_qa(tokenizer, q, a) for q, a in pairs]
    b = batch_lib.collate(enc, 48, tokenizer.pad_token_id)
    logits = np.asarray(nnx.jit(lambda m: m(b.input_ids, b.attention_mask))(model), np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, b.labels[..., None], -1)[..., 0]
    return (tok * b.loss_mask).sum(-1) / b.loss_mask.sum(-1)


def test_progress_numbers_equal_independent_computations(toy_target):
    model, tok, forget, retain, _, _ = toy_target
    forget = _with_truth_ratio_fields(forget)
    subset = progress.ProgressSet.first(forget, retain, n=6)
    assert len(subset.forget) == 6 and subset.has_truth_ratio
    reference = np.exp(np.random.default_rng(0).normal(0.0, 1.0, 6))
    got = progress.progress_numbers(model, tok, subset, batch_size=8, max_new_tokens=8,
                                    retain_truth_ratios=reference)
    for split, records in (("forget", subset.forget), ("retain", subset.retain)):
        pairs = [(r["question"], r["answer"]) for r in records]
        np.testing.assert_allclose(got[f"{split}_prob"],
                                   np.mean(np.exp(_mean_logp(model, tok, pairs))), rtol=1e-4)
        texts = generate_texts(model, tok, [batch_lib.encode_prompt(tok, q).tolist()
                                            for q, _ in pairs], max_new_tokens=8, batch_size=8)
        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        want = np.mean([scorer.score(a, t)["rougeL"].recall for t, (_, a) in zip(texts, pairs)])
        assert got[f"{split}_rouge"] == pytest.approx(want, abs=1e-12)
    para = _mean_logp(model, tok, [(r["question"], r["paraphrased_answer"]) for r in subset.forget])
    pert = np.stack([_mean_logp(model, tok, [(r["question"], p) for p in r["perturbed_answer"]])
                     for r in subset.forget])
    ratios = np.exp(pert.mean(1) - para)
    np.testing.assert_allclose(progress.forget_truth_ratios(model, tok, subset, batch_size=8),
                               ratios, rtol=1e-4)
    assert got["forget_quality"] == pytest.approx(stats.ks_2samp(ratios, reference).pvalue)
    # Without the retain model's ratios there is no forget quality.
    assert "forget_quality" not in progress.progress_numbers(model, tok, subset, batch_size=8,
                                                             max_new_tokens=4)


def test_is_better_follows_each_metrics_direction():
    assert progress.is_better("retain_prob", 0.5, 0.4) and not progress.is_better("retain_prob", 0.4, 0.4)
    assert progress.is_better("forget_prob", 0.1, 0.2) and progress.is_better("forget_quality", 0.0, None)


@pytest.mark.parametrize("over, needle", [
    (["train.keep_best=retain_prob"], "train.keep_best needs train.eval_every"),
    (["train.eval_every=2", "train.keep_best=loss"], "train.keep_best must be one of"),
    (["train.tracker=mlflow"], "train.tracker must be one of"),
])
def test_config_refuses_bad_progress_keys(over, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, over)


def _config(tmp_path, target, forget, **train):
    _, _, _, retain, path, _ = target
    bench = tmp_path / "bench"
    bench.mkdir()
    for split, recs in (("forget_toy", _with_truth_ratio_fields(forget)), ("retain_toy", retain)):
        (bench / f"{split}.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = {"model": {"preset": None, "path": str(path)},
           "data": {"benchmark": str(bench), "forget": "forget_toy", "retain": "retain_toy",
                    "max_len": 64},
           "method": {"name": "grad_ascent"},
           "train": {"steps": 4, "batch_size": 8, "optimizer": {
               "learning_rate": 3e-2, "schedule": "constant", "weight_decay": 0.0}, **train},
           "eval": {"batch_size": 8, "max_new_tokens": 6, "retain_model": str(path)},
           "output_dir": str(tmp_path / "out")}
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(cfg))
    return file


def test_unlearn_evaluates_keeps_the_best_model_and_tracks(tmp_path, toy_target, answer_prob):
    _, tok, forget, retain, _, _ = toy_target
    file = _config(tmp_path, toy_target, forget, eval_every=2, keep_best="retain_prob",
                   log_every=3, tracker="tensorboard")
    assert cli.main(["unlearn", "--config", str(file)]) == 0
    out = tmp_path / "out" / "grad_ascent"
    record = json.loads((out / "unlearn.json").read_text())
    evals = {h["step"]: h for h in record["history"] if "eval/retain_prob" in h}
    assert sorted(evals) == [2, 4]
    assert {"eval/forget_prob", "eval/forget_rouge", "eval/retain_rouge",
            "eval/forget_quality"} <= set(evals[2])
    best_step = max(evals, key=lambda s: evals[s]["eval/retain_prob"])
    assert record["best"] == {"metric": "retain_prob", "step": best_step,
                              "value": evals[best_step]["eval/retain_prob"]}
    assert best_step == 2, "lr 3e-2 gradient ascent lowers retain probability: step 2 is best"
    saved, _ = load_pretrained(out)  # the best model, not the last one
    np.testing.assert_allclose(answer_prob(saved, tok, retain), evals[2]["eval/retain_prob"],
                               rtol=1e-4)
    assert evals[4]["eval/retain_prob"] < 0.5 * evals[2]["eval/retain_prob"]  # not the last
    assert not list((tmp_path / "out" / "checkpoints").glob("best-*")), "best copy removed"
    logs = tmp_path / "out" / "logs" / "grad_ascent"
    assert record["metrics_log"] == str(logs / "metrics.jsonl")
    rows = [json.loads(x) for x in (logs / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3, 4]  # every 3rd, every evaluation, the last
    assert rows == [json.loads(json.dumps(h)) for h in record["history"] if h["step"] in (2, 3, 4)]
    events = _read_events(logs)
    assert ("eval/retain_prob", 2) in {(t, s) for t, s, _ in events}
    assert ("loss", 3) in {(t, s) for t, s, _ in events}


@pytest.mark.parametrize("train, needle", [
    ({"eval_every": 2, "keep_best": "forget_quality"}, None),
    ({"eval_every": 1}, "newton"),
])
def test_unlearn_refuses_what_it_cannot_evaluate(tmp_path, toy_target, capsys, train, needle):
    _, _, forget, _, _, _ = toy_target
    file = _config(tmp_path, toy_target, forget, **train)
    over = ["eval.retain_model=null", "data.forget=forget_plain"] if needle is None else \
        ["method=newton"]
    if needle is None:  # records without truth-ratio fields: no forget quality to keep
        (tmp_path / "bench" / "forget_plain.json").write_text(
            "".join(json.dumps(r) + "\n" for r in forget))
        needle = "train.keep_best=forget_quality"
    assert cli.main(["unlearn", "--config", str(file), *over]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "grad_ascent").exists()
