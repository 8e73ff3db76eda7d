"""jaxunlearn.validate: names that become path components cannot escape their directory
(``path_component``, ``inside``, and the method names that become output directories);
a tokenizer and data that do not fit the model are refused (``check_vocab``,
``check_context``)."""

from __future__ import annotations

import pytest

from jaxunlearn import methods, validate
from jaxunlearn.errors import ValidationError
from jaxunlearn.models.presets import tiny


@pytest.mark.parametrize("name", ["npo", "forget10", "target-0123abcd", "retain_99", "näme",
                                  "a.b", "x" * 255])
def test_path_component_accepts_plain_names(name):
    assert validate.path_component(name, "method.name") == name


@pytest.mark.parametrize("name, why", [
    ("..", "must not start with '.'"), ("../x", "plain name"), ("a/b", "plain name"),
    ("/etc", "plain name"), ("a\\b", "plain name"), ("", "empty"), (".hidden", "start with"),
    ("x\x00y", "plain name"), ("line\nbreak", "plain name"), (" npo", "whitespace"),
    ("y" * 256, "longer than 255"), (3, "expected a name"), (None, "expected a name")])
def test_path_component_refuses_escapes(name, why):
    with pytest.raises(ValidationError, match=why) as err:
        validate.path_component(name, "data.forget")
    assert str(err.value).startswith("data.forget: ")


def test_inside_keeps_paths_under_the_root_even_through_symlinks(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    assert validate.inside(root, "npo", field="method.name") == root / "npo"
    assert validate.inside(tmp_path / "not_yet", "a", field="x") == tmp_path / "not_yet" / "a"
    with pytest.raises(ValidationError, match="method.name"):
        validate.inside(root, "..", field="method.name")
    (root / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValidationError, match="outside"):
        validate.inside(root, "link", field="method.name")


def test_every_registered_method_name_is_a_plain_component():
    """``unlearn`` writes to ``<output_dir>/<method name>``: names come from the registry."""
    names = methods.method_names()
    assert "npo" in names
    for name in names:
        validate.path_component(name, "method.name")
    with pytest.raises(methods.MethodError, match="unknown method"):
        methods.get_method({"name": "../npo"})


class _Tok:
    def __init__(self, n, bos=0, eos=1, pad=2):
        self.n, self.bos_token_id, self.eos_token_id, self.pad_token_id = n, bos, eos, pad

    def __len__(self):
        return self.n


def test_check_vocab_counts_added_tokens_and_special_ids():
    config = tiny(vocab_size=300)
    validate.check_vocab(_Tok(300), config)  # equal: every id has a row
    validate.check_vocab(_Tok(256), config)  # a padded model vocabulary is fine
    with pytest.raises(ValidationError, match="m/: tokenizer has 301 tokens but the model's "
                                              "vocabulary has 300"):
        validate.check_vocab(_Tok(301), config, where="m/")
    with pytest.raises(ValidationError, match="pad_token_id=300 is outside"):
        validate.check_vocab(_Tok(250, pad=300), config)


def test_check_context_says_how_many_sequences_are_too_long():
    config = tiny().replace(max_position_embeddings=16)
    validate.check_context([16, 3, 16], config)
    with pytest.raises(ValidationError, match=r"data.max_len: 2 of 4 forget10 sequences are "
                                              r"longer than the model's context of 16 "
                                              r"positions \(longest 40\)"):
        validate.check_context(iter([17, 3, 40, 16]), config, what="forget10 sequences")
    validate.check_context(16, config)
    with pytest.raises(ValidationError, match="data.max_len=17 exceeds the model's context"):
        validate.check_context(17, config)
