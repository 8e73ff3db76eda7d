"""``pipeline.experiment`` (`jaxunlearn run`): experiment YAMLs parse, and the SmolLM2
experiment runs offline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxunlearn.errors import ConfigError
from jaxunlearn.pipeline.experiment import read_experiment

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")), ids=lambda p: p.name)
def test_every_experiment_yaml_parses(path):
    text = path.read_text()
    if "requires:" in text:  # give what the experiment says the user must supply
        cfg, meta = read_experiment(path, ["model.path=/x", "data.benchmark=/y"])
        assert set(meta.get("requires", [])) <= {"model.path", "data.benchmark"}
    else:
        cfg, meta = read_experiment(path, [])
    assert cfg.method.get("name") or "train" in path.name


def test_tofu_experiment_requires_model_path():
    with pytest.raises(ConfigError, match="model.path"):
        read_experiment(ROOT / "experiments" / "tofu_llama32_1b_npo.yaml", [])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("JAXUNLEARN_SMOLLM2_SMOKE") != "1",
                    reason="SmolLM2-135M on 2 CPU cores takes >15 min (compiles of a 30-layer "
                    "model); set JAXUNLEARN_SMOLLM2_SMOKE=1 to run it")
def test_smollm2_synthetic_npo_smoke(tmp_path):
    """The real pretrained model, fine-tuned and unlearned for 2 steps each, evaluated on a
    few records: offline, end to end through the CLI."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "jaxunlearn.cli", "run",
           str(ROOT / "experiments" / "smollm2_synthetic_npo.yaml"), "steps=2",
           f"output_dir={out}", f"data.benchmark={tmp_path / 'bench'}", "data.people=10",
           "data.max_len=96", "data.truncate=true", "train.batch_size=2",
           "eval.max_records=4", "eval.max_new_tokens=4", "eval.batch_size=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ),
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.rindex('{\n  "experiment"'):])
    assert set(summary["models"]) >= {"target", "npo"}
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"target", "npo"} <= set(evaluation["models"])
    for name in ("target", "npo"):
        assert evaluation["models"][name]["model_utility"] is not None
