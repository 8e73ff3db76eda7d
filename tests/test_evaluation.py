"""``pipeline.evaluation`` (the one eval.json writer and its rules) and ``pipeline.evaluate``
(the ``jaxunlearn eval`` command), on the shared tiny benchmark and model.

The rules checked: the retain model is evaluated once and is its own reference (FQ 1,
PrivLeak 0) and everyone else's; every model is attacked when ``eval.attacks`` is on,
the retain model included; eval.json holds exactly config, env and models (and timings
when given), and the report is written beside it.
"""

import json

import jax
import numpy as np
import pytest
from scipy import stats

from jaxunlearn import report
from jaxunlearn.config import load_config
from jaxunlearn.data import synthetic
from jaxunlearn.errors import UserError
from jaxunlearn.eval.attacks import FinetuneRecoveryConfig
from jaxunlearn.eval.results import ForgetScores
from jaxunlearn.models import save_pretrained
from jaxunlearn.pipeline.evaluate import main_eval, parse_model_args
from jaxunlearn.pipeline.evaluation import Evaluation
from jaxunlearn.train.mesh import make_mesh

SETTINGS = ["eval.batch_size=16", "eval.max_new_tokens=8", "eval.max_records=4"]


def _cfg(tmp_path, *extra):
    return load_config(None, [f"output_dir={tmp_path / 'out'}", *SETTINGS, *extra])


def _strict(path):
    return json.loads(path.read_text(),
                      parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_retain_is_its_own_reference_and_every_model_is_attacked(tmp_path, qa_bench,
                                                                  qa_tokenizer, qa_model):
    cfg = _cfg(tmp_path, "eval.attacks=true", "eval.metrics=[tofu,mia]")
    ev = Evaluation(cfg, qa_bench)
    retain = ev.add_retain(qa_model, qa_tokenizer)
    ratios = retain.tofu.distributions["forget"].truth_ratio
    assert retain.tofu.forget_quality == stats.ks_2samp(ratios, ratios).pvalue == 1.0
    for attack, auc in retain.mia.auc.items():
        assert retain.mia.privleak[attack] == (None if auc == 1.0 else 0.0)
    assert ev.reference is retain
    # The same weights under another name, judged against the retain model: same numbers.
    made = {"method": {"name": "npo"}, "updates": 2}
    same = ev.add("npo", qa_model, qa_tokenizer, unlearn=made)
    assert same.tofu.forget_quality == 1.0
    assert same.mia.privleak == retain.mia.privleak
    assert same.tofu.splits == retain.tofu.splits
    with pytest.raises(ValueError, match="retain model must come first"):
        ev.add_retain(qa_model, qa_tokenizer)
    with pytest.raises(ValueError, match="taken"):
        ev.add("npo", qa_model, qa_tokenizer)
    for result in ev.results.values():  # the retain model is attacked too: the control
        assert set(result.attacks) == {"quantize_8bit", "quantize_4bit", "relearn"}
        # Quantisation's "before" is the model's own evaluation of the same records.
        before = ForgetScores.of(result).to_json()
        for key, pair in result.attacks["quantize_8bit"].metrics.items():
            assert pair.before == before[key]
        assert result.attacks["relearn"].info["steps"] == FinetuneRecoveryConfig().steps
    assert same.unlearn == made
    path = ev.write(tmp_path / "out", mesh=make_mesh(1, 1), timings={"total": 1.234})
    data = _strict(tmp_path / "out" / "eval.json")
    assert set(data) == {"config", "env", "models", "timings"}
    assert data["timings"] == {"total": 1.23}
    assert list(data["models"]) == ["retain", "npo"]
    assert data["models"]["npo"]["unlearn"] == made
    assert data["models"]["npo"]["attacks"] == {
        k: a.to_json() for k, a in same.attacks.items()}
    assert data["models"]["retain"]["forget_quality"] == 1.0
    assert data["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert data["env"] == report.env_info(make_mesh(1, 1))
    assert path == tmp_path / "out" / "report.md" and "| npo |" in path.read_text()


def test_eval_command_writes_eval_json_and_report(tmp_path, qa_bench, qa_tokenizer, qa_model):
    synthetic.write_benchmark(qa_bench, tmp_path / "bench")
    save_pretrained(qa_model, qa_model.config, tmp_path / "retain", tokenizer=qa_tokenizer)
    save_pretrained(qa_model, qa_model.config, tmp_path / "target", tokenizer=qa_tokenizer)
    cfg = _cfg(tmp_path, f"data.benchmark={tmp_path / 'bench'}", "eval.attacks=false",
               "eval.metrics=[tofu,mia]")
    assert main_eval(cfg, [f"target={tmp_path / 'target'}"], tmp_path / "retain") == 0
    data = _strict(tmp_path / "out" / "eval.json")
    assert set(data) == {"config", "env", "models"}
    assert list(data["models"]) == ["retain", "target"]
    assert data["models"]["retain"]["forget_quality"] == 1.0
    # Same weights: the target is indistinguishable from the retain model.
    assert data["models"]["target"]["forget_quality"] == 1.0
    assert data["models"]["target"]["privleak"] == pytest.approx(0.0, abs=1e-9)
    assert data["env"]["devices"]["count"] == len(jax.devices())
    assert (tmp_path / "out" / "report.md").is_file()
    np.testing.assert_equal(data["models"]["retain"]["distributions"],
                            data["models"]["target"]["distributions"])
    with pytest.raises(UserError, match="does not exist"):
        main_eval(cfg, [f"x={tmp_path / 'missing'}"], None)
    with pytest.raises(UserError, match="used twice"):
        main_eval(cfg, [f"a={tmp_path / 'target'}", f"a={tmp_path / 'retain'}"], None)
    with pytest.raises(UserError, match="reserved"):
        main_eval(cfg, [f"retain={tmp_path / 'target'}"], tmp_path / "retain")


def test_model_arguments(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "x.gguf").write_bytes(b"")
    assert parse_model_args([f"npo={tmp_path / 'm'}", str(tmp_path / "x.gguf")]) == [
        ("npo", tmp_path / "m"), ("x", tmp_path / "x.gguf")]
    assert parse_model_args([str(tmp_path / "m")]) == [("m", tmp_path / "m")]
    with pytest.raises(UserError, match="non-empty word"):
        parse_model_args([f"a b={tmp_path / 'm'}"])
