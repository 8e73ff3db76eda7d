"""jaxunlearn.errors: every user-facing error is a UserError (exit 2 in the CLI), defined
once, and still importable from the module that raises it."""

import importlib

import pytest

from jaxunlearn import errors

# (module that raises it and re-exports it, error name)
RAISED_IN = [
    ("jaxunlearn.config", "ConfigError"),
    ("jaxunlearn.data.tofu", "DataError"),
    ("jaxunlearn.data.synthetic", "BenchmarkError"),
    ("jaxunlearn.data.augment", "AugmentError"),
    ("jaxunlearn.validate", "ValidationError"),
    ("jaxunlearn.models.io", "CheckpointError"),
    ("jaxunlearn.models.gguf", "GGUFError"),
    ("jaxunlearn.train.mesh", "MeshError"),
    ("jaxunlearn.train.loop", "NonFiniteError"),
]


def test_every_error_is_a_user_error_and_a_value_error():
    kinds = [v for v in vars(errors).values()
             if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == errors.__name__]
    assert {k.__name__ for k in kinds} >= {name for _, name in RAISED_IN} | {"MethodError"}
    for kind in kinds:
        assert issubclass(kind, errors.UserError) and issubclass(kind, ValueError), kind


@pytest.mark.parametrize("module, name", RAISED_IN)
def test_old_import_paths_are_the_same_class(module, name):
    assert getattr(importlib.import_module(module), name) is getattr(errors, name)


def test_non_finite_error_carries_the_last_good_state():
    e = errors.NonFiniteError("update 5 gave NaN", state="S", history=[{"step": 4}],
                              checkpoint=None, step=5)
    assert (e.state, e.history, e.checkpoint, e.step) == ("S", [{"step": 4}], None, 5)
    assert str(e) == "update 5 gave NaN"


def test_the_cli_turns_a_user_error_into_one_line_and_exit_2(capsys):
    from jaxunlearn import cli

    assert cli.main(["report", "/nonexistent/eval.json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jaxunlearn report: error: /nonexistent/eval.json: no such file "
                   "(expected an eval.json)"]
