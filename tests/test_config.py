"""YAML + dotted overrides -> typed RunConfig; bad keys and types name the key and file."""

import pytest

from jaxunlearn.config import RunConfig, load_config
from jaxunlearn.errors import ConfigError


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("model: {preset: tiny}\ntrain:\n  epochs: 2\n  optimizer: {learning_rate: 0.001}\n"
                 "method: {name: npo, beta: 0.1}\n")
    cfg = load_config(f, ["method=simnpo", "method.beta=4.5", "train.optimizer.warmup_steps=3",
                          "mesh.fsdp=4", "seed=7", "steps=2", "data.forget=forget05"])
    assert isinstance(cfg, RunConfig)
    assert cfg.method == {"name": "simnpo", "beta": 4.5}
    assert cfg.train.epochs == 2 and cfg.train.steps == 2
    assert cfg.train.optimizer.learning_rate == 0.001 and cfg.train.optimizer.warmup_steps == 3
    assert cfg.mesh.fsdp == 4 and cfg.seed == 7
    assert cfg.data.forget == "forget05" and cfg.data.retain_split == "retain95"
    assert cfg.model.preset == "tiny"


def test_model_shortcut_preset_or_path():
    assert load_config(None, ["model=smollm2-135m"]).model.preset == "smollm2-135m"
    m = load_config(None, ["model=/some/dir"]).model
    assert m.preset is None and m.path == "/some/dir"


def test_model_layout_and_remat_keys():
    cfg = load_config(None, ["model.scan_layers=false", "model.remat=dots_saveable", "mesh.tensor=4"])
    assert (cfg.model.scan_layers, cfg.model.remat, cfg.mesh.tensor) == (False, "dots_saveable", 4)
    defaults = load_config(None)
    assert (defaults.model.scan_layers, defaults.model.remat, defaults.mesh.tensor) == (True, "none", 1)
    # The former boolean spelling still reads, as the policy it meant.
    assert load_config(None, ["model.remat=true"]).model.remat == "full"
    assert load_config(None, ["model.remat=false"]).model.remat == "none"


def test_fingerprint_stable_and_sensitive():
    a, b = load_config(None, ["seed=1"]), load_config(None, ["seed=1"])
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_config(None, ["seed=2"]).fingerprint()
    assert a.fingerprint("model") == load_config(None, ["seed=2"]).fingerprint("model")


@pytest.mark.parametrize("override,needle", [
    (["train.epoch=3"], "unknown key 'epoch'"),
    (["train.epochs=three"], "train.epochs: expected an integer"),
    (["train.batch_size=0"], "train.batch_size must be >= 1"),
    (["train.optimizer.learning_rate=-1"], "learning_rate must be > 0"),
    (["mesh.fsdp=0"], "mesh.fsdp must be >= 1"),
    (["mesh.tensor=0"], "mesh.tensor must be >= 1"),
    (["model.remat=half"], "model.remat must be one of none, full, dots_saveable"),
    (["model.scan_layers=maybe"], "model.scan_layers: expected true/false"),
    (["novalue"], "must look like key=value"),
])
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_config(None, override)


def test_bad_yaml_names_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: malformed YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("field, value", [("forget", "../../etc/passwd"), ("retain", "a/b"),
                                          ("forget", ".."), ("retain", "/abs")])
def test_config_refuses_split_names_that_are_paths(field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        load_config(None, [f"data.{field}={value}"])
    assert load_config(None, [f"data.{field}=forget05"]).data.forget  # plain names pass


def test_exponent_floats_are_numbers_not_bad_input():
    """``learning_rate=3e-3`` is not a bad input (PyYAML alone reads it as a string)."""
    cfg = load_config(None, ["train.optimizer.learning_rate=3e-3", "method.beta=1E-1"])
    assert cfg.train.optimizer.learning_rate == 0.003 and cfg.method["beta"] == 0.1
