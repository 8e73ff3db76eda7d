"""jaxunlearn.strict_yaml: duplicate keys and exploding or recursive aliases refused at parse time."""

from __future__ import annotations

import pytest

from jaxunlearn import strict_yaml


def test_duplicate_keys_are_refused_naming_key_and_line():
    with pytest.raises(strict_yaml.YAMLInputError,
                       match=r"^run.yaml: line 3: duplicate key 'steps'"):
        strict_yaml.load("train:\n  steps: 1\n  steps: 500\n", "run.yaml")


def test_merge_keys_may_still_be_overridden_and_aliases_still_work():
    text = ("base: &base {lr: 0.1, steps: 5}\n"
            "run:\n  <<: *base\n  steps: 7\n"
            "lrs: [*base, *base]\n")
    value = strict_yaml.load(text)
    assert value["run"] == {"lr": 0.1, "steps": 7}
    assert value["lrs"] == [{"lr": 0.1, "steps": 5}] * 2


def test_exponent_floats_are_numbers():
    assert strict_yaml.load("lr: 3e-3\nbeta: 1E-1\n") == {"lr": 0.003, "beta": 0.1}


def test_an_alias_bomb_is_refused_naming_the_key_before_it_expands():
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    text = "eval:\n  metrics: [" + ", ".join(levels) + "]\n"
    assert len(text) < 500
    with pytest.raises(strict_yaml.YAMLInputError,
                       match=r"^b.yaml: 'eval.metrics' expands to \d+ values through YAML "
                             r"aliases \(at most 100000\)$"):
        strict_yaml.load(text, "b.yaml")


def test_a_recursive_alias_is_refused():
    with pytest.raises(strict_yaml.YAMLInputError, match="refers to itself"):
        strict_yaml.load("a: &loop [1, *loop]\n", "r.yaml")


def test_read_file_names_the_file_for_every_problem(tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"a: caf\xe9\n")
    (tmp_path / "dir.yaml").mkdir()
    for name, why in [("bin.yaml", "not UTF-8 text .bad byte at offset 6"),
                      ("dir.yaml", "is a directory"), ("none.yaml", "config file does not exist")]:
        with pytest.raises(strict_yaml.YAMLInputError, match=f"{name}: {why}"):
            strict_yaml.read_file(tmp_path / name)
