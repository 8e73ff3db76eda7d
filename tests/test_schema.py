"""data.schema: the one forget -> retain table and the record schemas every reader uses."""

import pytest

from jaxunlearn.config import DataConfig
from jaxunlearn.data import schema, synthetic


def test_one_retain_table_for_every_reader():
    assert schema.RETAIN_OF == {"forget01": "retain99", "forget05": "retain95",
                                "forget10": "retain90"}
    for forget, retain in schema.RETAIN_OF.items():
        assert schema.retain_split_of(forget) == retain
        assert DataConfig(forget=forget).retain_split == retain
        # The split names say which share of the people they hold.
        assert round(100 * schema.FORGET_FRACTION[forget]) + int(retain[-2:]) == 100
    assert schema.retain_split_of("forget42") is None
    assert DataConfig(forget="forget42", retain="mine").retain_split == "mine"


def test_the_generator_writes_the_layout():
    bench = synthetic.generate(synthetic.SyntheticConfig(num_people=20, num_world_facts=4,
                                                         canary_repetitions=(1,)))
    assert set(bench.splits) == {*schema.QA_SPLITS, schema.WORLD_FACTS}
    for forget, retain in schema.RETAIN_OF.items():
        people = {r["person_id"] for r in bench.splits[forget]}
        assert people and not people & {r["person_id"] for r in bench.splits[retain]}
    for record in bench.splits["forget10"]:
        assert set(record) == set(schema.QA_FIELDS)
    assert {c["split"] for c in bench.canaries} == set(schema.CANARY_SPLITS)
    for c in bench.canaries:
        assert set(c) == set(schema.CANARY_FIELDS)
        assert schema.record_kind("canaries").check(c) is None


@pytest.mark.parametrize("value, problem", [
    ("a", None), (3, "expected a string, got int")])
def test_string_check(value, problem):
    assert schema.check_str(value) == problem


@pytest.mark.parametrize("value, problem", [
    (3, None), (True, "expected an integer, got bool"), ("3", "expected an integer, got str")])
def test_integer_check(value, problem):
    assert schema.check_int(value) == problem


def test_list_and_canary_checks_say_what_is_wrong():
    perturbed = schema.QA_FIELDS["perturbed_answer"]
    assert perturbed(["x"]) is None and perturbed([]) == "expected a non-empty list of strings, got []"
    assert perturbed(["x", " "]).startswith("item 1 must be a non-empty string")
    assert schema.QA_FIELDS["facts"]([]) is None
    check = schema.record_kind("canaries").check
    ok = {"canary_id": 0, "format": "pin", "prefix": "p ", "secret": "1", "text": "p 1",
          "repetitions": 2, "split": "forget"}
    assert check(ok) is None
    assert check({**ok, "text": "p 2"}) == ("text", "must equal prefix + secret")
    assert check({**ok, "split": "heldout"})[0] == "repetitions"
    assert check({**ok, "split": "elsewhere"})[0] == "split"
    assert schema.record_kind("forget10").required == schema.QA_REQUIRED
