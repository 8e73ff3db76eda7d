"""The ``unlearn`` command: it validates before it works and writes a loadable unlearned model.

The target is ``conftest.toy_target``: a 1-layer Llama trained to recall 24 toy private
facts; 4 people (8 answers) are forgotten, 8 retained. The unlearning itself is tested
in ``test_methods_runner.py``.
"""

import json
from pathlib import Path

import pytest
import yaml

from jaxunlearn import cli, methods
from jaxunlearn.models import load_pretrained


# ------------------------------------------------------------------------------ the command


def _config(tmp_path, target, **over):
    _, _, _, _, path, bench = target
    cfg = {"model": {"preset": None, "path": str(path)},
           "data": {"benchmark": str(bench), "forget": "forget_toy", "retain": "retain_toy",
                    "max_len": 64},
           "method": {"name": "grad_diff"},
           "train": {"steps": 5, "batch_size": 8, "optimizer": {
               "learning_rate": 3e-3, "schedule": "constant", "weight_decay": 0.0}},
           "output_dir": str(tmp_path / "out")}
    for dotted, value in over.items():
        node = cfg
        *head, last = dotted.split("__")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(cfg))
    return file


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, toy_target):
    """``jaxunlearn unlearn`` with grad_diff, 5 updates of 8 rows."""
    tmp = tmp_path_factory.mktemp("cli")
    code = cli.main(["unlearn", "--config", str(_config(tmp, toy_target)), "method.alpha=1",
                     "seed=0"])
    assert code == 0
    return tmp / "out" / "grad_diff"


def test_unlearn_command_writes_a_loadable_unlearned_model(toy_target, cli_run, answer_prob):
    model, tok, forget, _, _, _ = toy_target
    assert (cli_run / "config.json").is_file() and (cli_run / "tokenizer.json").is_file()
    record = json.loads((cli_run / "unlearn.json").read_text())
    assert record["method"] == methods.get_method("grad_diff").to_dict()
    assert record["updates"] == 5 and record["forget"] == "forget_toy"
    checkpoints = cli_run.parent / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), "checkpoints cleaned up"
    unlearned, _ = load_pretrained(cli_run)
    assert answer_prob(unlearned, tok, forget) < answer_prob(model, tok, forget)
    history = json.loads((cli_run / "unlearn.json").read_text())["history"]
    assert len(history) == 5 and {"loss", "forget_prob", "retain_prob"} <= set(history[0])


@pytest.mark.parametrize("over, needle", [
    ({"method": {"name": "forget_everything"}}, "method.name"),
    ({"method__beta": -1.0, "method__name": "npo"}, "method.beta"),
    ({"method__gamma_": 1.0}, "method.gamma_"),
    ({"data__forget": "forget_missing"}, "forget_missing"),
    ({"data__retain": "forget_toy"}, "overlap"),
    ({"mesh": {"data": 3, "fsdp": 1}}, "train.batch_size"),
    ({"model__path": "/nonexistent/model"}, "model.path"),
    ({"data__max_len": 8}, "max_len"),
    ({"method": {"name": "rmu", "layer": 5}}, "method.layer"),
])
def test_unlearn_command_rejects_bad_input_before_work(tmp_path, toy_target, capsys, over,
                                                       needle):
    code = cli.main(["unlearn", "--config", str(_config(tmp_path, toy_target, **over))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing may be written before validation passes"


# ------------------------------------------------------------------------------ experiments


@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu",
                                  "undial", "wga", "rkld"])
def test_experiment_yaml_is_valid(name):
    from jaxunlearn.pipeline.experiment import read_experiment

    path = Path(__file__).parent.parent / "experiments" / f"unlearn_{name}.yaml"
    cfg, meta = read_experiment(path, ["model.path=runs/demo/models/target"])
    method = methods.get_method(cfg.method)
    assert method.name == name and "unlearn" in meta["stages"]
    assert cfg.train.optimizer.learning_rate > 0 and cfg.data.forget == "forget10"
