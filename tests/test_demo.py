"""``pipeline.demo`` (``jaxunlearn demo``) end to end at toy sizes: the benchmark, the
target and retain models, one method, the evaluation by the common rules, eval.json,
the report and the printed table."""

import json

import pytest

from jaxunlearn.config import load_config
from jaxunlearn.errors import ConfigError
from jaxunlearn.pipeline import demo


def _cfg(tmp_path):
    return load_config(None, [
        f"output_dir={tmp_path / 'run'}", f"data.benchmark={tmp_path / 'bench'}",
        "data.people=10", "data.qa_per_person=2", "data.num_world_facts=4", "data.max_len=96",
        "data.truncate=true",
        "model=tiny", "train.steps=2", "train.batch_size=8", "eval.metrics=[tofu]",
        "eval.attacks=false", "eval.max_records=4", "eval.max_new_tokens=4",
        "eval.batch_size=16"], base=demo.DEFAULTS)


def test_demo_runs_end_to_end_with_one_method(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    assert demo.run_demo(cfg, ["grad_ascent"]) == 0
    out = tmp_path / "run"
    data = json.loads((out / "eval.json").read_text())
    assert list(data["models"]) == ["retain", "target", "grad_ascent"]
    assert data["models"]["retain"]["forget_quality"] == 1.0
    made = data["models"]["grad_ascent"]["unlearn"]
    assert made["method"]["name"] == "grad_ascent" and made["updates"] == len(made["curve"]) > 0
    assert "unlearn" not in data["models"]["target"]
    assert [m["name"] for m in data["config"]["methods"]] == ["grad_ascent"]
    assert {"train", "eval_retain", "eval_target", "eval_grad_ascent", "unlearn_grad_ascent",
            "total"} <= set(data["timings"])
    assert (out / "report.md").is_file()
    table = capsys.readouterr().out
    assert "| model | FQ | MU | forget ROUGE | forget P | retain ROUGE | MIA AUC | canary MA |" \
        in table
    row = next(line for line in table.splitlines() if line.startswith("| retain |"))
    assert row.split(" | ")[1] == "1.00e+00"
    assert row.split(" | ")[6] == "n/a"  # MIA not selected here


def test_unknown_methods_are_refused_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="--methods: unknown method 'nope'"):
        demo.run_demo(_cfg(tmp_path), ["nope"])
    assert not (tmp_path / "run").exists() and not (tmp_path / "bench").exists()
