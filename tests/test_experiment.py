"""``pipeline.experiment`` (`jaxunlearn run`): experiment YAMLs parse, and the SmolLM2
experiment runs offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _tofu_layout import write_tofu_layout

from jaxunlearn.config import load_config
from jaxunlearn.errors import ConfigError
from jaxunlearn.models import save_pretrained
from jaxunlearn.pipeline.evaluation import Evaluation
from jaxunlearn.pipeline.experiment import read_experiment, run_experiment

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_yaml_parses(path, tmp_path):
    text = path.read_text()
    if "requires:" in text:  # give what the experiment says the user must supply
        (tmp_path / "TOFU_EVAL.json").write_text("{}")
        cfg, meta = read_experiment(path, ["model.path=/x", "data.benchmark=/y",
                                           f"retain_logs={tmp_path / 'TOFU_EVAL.json'}"])
        assert set(meta.get("requires", [])) <= {"model.path", "data.benchmark",
                                                 "retain_logs|retain_model"}
    else:
        cfg, meta = read_experiment(path, [])
    assert cfg.method.get("name") or "train" in path.name


def test_tofu_experiment_requires_model_path():
    with pytest.raises(ConfigError, match="model.path"):
        read_experiment(ROOT / "experiments" / "tofu_llama32_1b_npo.yaml", [])
    with pytest.raises(ConfigError, match="retain_logs=... or retain_model=..."):
        read_experiment(ROOT / "experiments" / "tofu_llama32_1b_npo.yaml",
                        ["model.path=/x", "data.benchmark=/y"])
    with pytest.raises(ConfigError, match="retain_logs: /nowhere does not exist"):
        read_experiment(ROOT / "experiments" / "tofu_llama32_1b_npo.yaml",
                        ["model.path=/x", "data.benchmark=/y", "retain_logs=/nowhere"])


def test_tofu_experiment_prints_ours_beside_expected(tmp_path, qa_bench, qa_tokenizer,
                                                    qa_model, capsys):
    """The published-TOFU experiment, eval stage only, against retain logs in
    open-unlearning's format written by our own evaluation of the same model (FQ = 1)."""
    root = write_tofu_layout(tmp_path / "TOFU", qa_bench)
    save_pretrained(qa_model, qa_model.config, tmp_path / "target", tokenizer=qa_tokenizer)
    small = ["eval.max_records=4", "eval.max_new_tokens=8", "eval.batch_size=16",
             "eval.attacks=false", "eval.metrics=[tofu,mia]", f"data.benchmark={root}"]
    cfg = load_config(None, [f"output_dir={tmp_path / 'ref'}", *small])
    ev = Evaluation(cfg, root)
    ev.add_retain(qa_model, qa_tokenizer)
    ev.write(tmp_path / "ref", mesh=None)
    text = (ROOT / "experiments" / "tofu_llama32_1b_npo.yaml").read_text()
    experiment = tmp_path / "tofu_eval_only.yaml"
    experiment.write_text(text.replace("stages: [unlearn, eval]", "stages: [eval]"))
    assert run_experiment(experiment, [f"model.path={tmp_path / 'target'}",
                                       f"retain_logs={tmp_path / 'ref' / 'TOFU' / 'retain'}",
                                       f"output_dir={tmp_path / 'run'}", *small]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "experiment"'):])
    assert summary["measured"]["forget_quality"] == pytest.approx(1.0)
    assert summary["expected"]["forget_quality"] == 0.02
    assert "forget_quality" in out and "metric / ours / expected" in out


@pytest.mark.slow
def test_smollm2_synthetic_npo_smoke(tmp_path):
    """The real pretrained model (SmolLM2-135M-Instruct, 30 layers), fine-tuned and unlearned
    for 2 steps each, evaluated on 4 records a split: offline, end to end through the CLI.

    Sized to run in about 1.5 min on 2 cores (README "Tests"): 10 people, TOFU and MIA
    metrics (the canary groups' extraction likelihood decodes every canary prefix), one
    evaluation batch of 16 rows."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxunlearn.cli", "run",
           str(ROOT / "experiments" / "smollm2_synthetic_npo.yaml"), "steps=2",
           f"output_dir={out}", f"data.benchmark={tmp_path / 'bench'}", "data.people=10",
           "data.max_len=96", "data.truncate=true", "train.batch_size=2",
           "eval.max_records=4", "eval.max_new_tokens=4", "eval.batch_size=16",
           "eval.metrics=[tofu,mia]"]
    # The CLI as users run it: one host device and XLA's default optimisation (the test
    # processes' XLA_FLAGS, 8 host devices at optimisation level 0, more than double the
    # CPU time of a 135M model's run).
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.rindex('{\n  "experiment"'):])
    assert set(summary["models"]) >= {"target", "npo"}
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"target", "npo"} <= set(evaluation["models"])
    for name in ("target", "npo"):
        assert evaluation["models"][name]["model_utility"] is not None
        assert 0.0 <= evaluation["models"][name]["mia_loss_auc"] <= 1.0


def _tiny_multi_method(tmp_path, methods_yaml: str) -> Path:
    path = tmp_path / "multi.yaml"
    path.write_text(f"""description: two methods from one target, toy sizes
stages: [train_target, train_retain, unlearn, eval]
model: tiny
data:
  benchmark: {tmp_path / 'bench'}
  people: 10
  qa_per_person: 2
  num_world_facts: 4
  max_len: 96
  truncate: true
methods:
{methods_yaml}
train:
  batch_size: 8
  optimizer:
    learning_rate: 1.0e-3
eval:
  batch_size: 16
  max_records: 4
  max_new_tokens: 4
  metrics: [tofu, knowledge]
  attacks: false
output_dir: {tmp_path / 'run'}
""")
    return path


@pytest.mark.slow
def test_experiment_with_several_methods_unlearns_each_from_the_target(tmp_path, capsys):
    """``methods:`` unlearns every listed method from the same trained target, each with
    the run's train config updated by its own, and evaluates them all against the retain
    model (the TOFU protocol at toy sizes)."""
    path = _tiny_multi_method(tmp_path, "  - {name: grad_ascent, train: {steps: 1}}\n"
                                        "  - name: npo\n    beta: 0.2\n")
    cfgs = read_experiment(path, ["steps=2"])[1]["method_configs"]
    assert [(c.method["name"], c.train.steps) for c in cfgs] == [("grad_ascent", 2), ("npo", 2)]
    assert cfgs[1].method["beta"] == 0.2
    assert run_experiment(path, ["steps=2"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "experiment"'):])
    assert set(summary["models"]) == {"target", "retain", "grad_ascent", "npo"}
    assert set(summary["measured_by_model"]) == {"grad_ascent", "npo"}
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert list(evaluation["models"]) == ["retain", "target", "grad_ascent", "npo"]
    for name in ("grad_ascent", "npo"):
        entry = evaluation["models"][name]
        assert entry["forget_quality"] is not None and entry["model_utility"] is not None
        unlearned = json.loads((tmp_path / "run" / name / "unlearn.json").read_text())
        assert unlearned["method"]["name"] == name
    assert json.loads((tmp_path / "run" / "npo" / "unlearn.json").read_text())[
        "method"]["beta"] == 0.2


@pytest.mark.parametrize("methods_yaml, needle", [
    ("  - {name: nope}\n", "nope"),
    ("  - {name: npo}\n  - {name: npo}\n", "listed twice"),
    ("  - {beta: 0.1}\n", "methods[0] must be a mapping with a name"),
    ("  - {name: npo, train: 3}\n", "methods[0].train must be a mapping"),
])
def test_bad_methods_list_is_one_line_naming_the_file(tmp_path, methods_yaml, needle):
    path = _tiny_multi_method(tmp_path, methods_yaml)
    with pytest.raises(ConfigError) as e:
        read_experiment(path, [])
    assert str(path) in str(e.value)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_smollm2_synthetic_lists_the_six_methods_of_its_table():
    """``experiments/smollm2_synthetic.yaml`` (the real-model table): the TOFU protocol's
    stages and the six methods, each with its own unlearning schedule; the fine-tuning
    keeps the run's ``train``. Its mechanics run at toy sizes in the test above."""
    cfg, meta = read_experiment(ROOT / "experiments" / "smollm2_synthetic.yaml", [])
    assert meta["stages"] == ["train_target", "train_retain", "unlearn", "eval"]
    configs = meta["method_configs"]
    assert [c.method["name"] for c in configs] == ["grad_ascent", "npo", "rkld", "newton",
                                                   "relearn", "sga"]
    assert cfg.train.epochs == 4 and configs[0].train.epochs == 5
    assert all(c.model == cfg.model and c.data == cfg.data for c in configs)
    assert cfg.model.path == "smollm2-135m"
    assert cfg.eval.metrics == ("tofu", "mia", "knowledge")  # knowledge: the Linguistic Score


@pytest.mark.slow
def test_smollm2_synthetic_runs_every_stage_and_method_at_toy_sizes(tmp_path):
    """The README's real-model command, ``jaxunlearn run experiments/smollm2_synthetic.yaml``,
    as written but on the tiny preset, one update a stage and two records a split: every
    stage and all six methods run and the table's columns are filled (the real model's
    smoke run is ``test_smollm2_synthetic_npo_smoke``)."""
    overrides = ["model=tiny", "steps=1", f"data.benchmark={tmp_path / 'bench'}",
                 f"output_dir={tmp_path / 'run'}", "eval.max_records=2",
                 "eval.max_new_tokens=4", "eval.batch_size=8", "data.max_len=96",
                 "data.truncate=true"]
    assert run_experiment(ROOT / "experiments" / "smollm2_synthetic.yaml", overrides) == 0
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    methods = ["grad_ascent", "npo", "rkld", "newton", "relearn", "sga"]
    assert list(evaluation["models"]) == ["retain", "target", *methods]
    for name in methods:
        entry = evaluation["models"][name]
        assert entry["forget_quality"] is not None and entry["model_utility"] is not None
        assert entry["ls"] is not None
