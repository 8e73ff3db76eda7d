"""Tests for jaxunlearn.data.augment: ReLearn variants, determinism, and no leaked fact."""

import difflib
import json
import re
import unicodedata

import pytest

from jaxunlearn.data import augment as A
from jaxunlearn.data import synthetic as S


@pytest.fixture(scope="module")
def forget():
    bench = S.generate(S.SyntheticConfig(num_people=30, num_world_facts=10, seed=5))
    return list(bench.splits["forget10"])  # 3 people x 20 QA


@pytest.fixture(scope="module")
def augmented(forget):
    return A.augment_forget_set(forget, seed=0)


def tokens(text):
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


def leaks(text, fact):
    """Independent leak check: the fact's word tokens appear contiguously in the text's,
    or (facts with >= 4 digits) its digits appear in the text's digits."""
    t, f = tokens(text), tokens(fact)
    if any(t[i:i + len(f)] == f for i in range(len(t) - len(f) + 1)):
        return True
    digits = re.sub(r"\D", "", fact)
    return len(digits) >= 4 and digits in re.sub(r"\D", "", text)


def test_checker_sees_the_facts_in_the_originals(forget):
    # The leak check below must be able to fail: every original answer leaks its facts.
    assert all(leaks(r["answer"], f) for r in forget for f in r["facts"])
    assert leaks("call 0412-845-1937", "0412 845 1937") and not leaks("Dana Lund", "Ana Lund")


def test_no_augmented_output_contains_any_forget_fact(forget, augmented):
    facts = sorted({f for r in forget for f in r["facts"]})
    assert len(facts) > 40 and len(augmented) > 5 * len(forget)
    for out in augmented:
        for key, value in out.items():
            if isinstance(value, str):
                bad = [f for f in facts if leaks(value, f)]
                assert not bad, (key, value, bad)


def test_vague_answers_name_nothing(augmented):
    for out in augmented:
        answer = out["answer"]
        assert not re.search(r"\d|@", answer), answer
        for m in re.finditer(r"\b[A-Z]\w*", answer):
            opens = re.fullmatch(r"\s*|.*[.;!?]\s*", answer[: m.start()]) is not None
            assert opens or m.group(0) in ("I", "I'd", "I'm"), answer
        if out["variant"].startswith("completion"):
            assert answer[0].islower(), answer  # a continuation, not a new sentence


def test_relearn_variants_are_present_and_distinct(forget, augmented):
    by_source = {}
    for out in augmented:
        by_source.setdefault(out["source_index"], []).append(out)
    assert sorted(by_source) == list(range(len(forget)))
    first_time, missing_completions = set(), 0
    for i, record in enumerate(forget):
        outs = by_source[i]
        for out in outs:
            assert {k: out[k] for k in ("person_id", "name", "topic")} == \
                {k: record[k] for k in ("person_id", "name", "topic")}
            assert set(out) == {"person_id", "name", "topic", "question", "answer",
                                "source_index", "variant"}
        variants = {o["variant"]: o for o in outs}
        key = (record["person_id"], record["topic"])
        if key not in first_time:  # a topic asked twice may repeat a variant (deduplicated)
            first_time.add(key)
            assert {"original", "rephrased", "context", "noisy", "reversed"} <= set(variants)
        assert variants["original"]["question"] == record["question"]
        questions = [o["question"] for o in outs if not o["variant"].startswith("completion")]
        assert len(set(questions)) == len(questions)
        if "noisy" in variants:
            noisy = variants["noisy"]["question"]
            assert noisy != record["question"]
            assert difflib.SequenceMatcher(None, noisy, record["question"]).ratio() > 0.8
        words = record["answer"].split()
        if "completion" in variants:  # first quarter of the true answer's words, before facts
            head = variants["completion"]["question"].split()
            assert 1 <= len(head) <= max(1, len(words) // 4) and words[: len(head)] == head
            if len(head) < max(1, len(words) // 4):  # cut short: the next word is in a fact
                at = len(" ".join(head)) + 1
                assert any(record["answer"].find(f) <= at < record["answer"].find(f) + len(f)
                           for f in record["facts"]), (head, record["answer"])
        elif not any(record["answer"].startswith(f) for f in record["facts"]):
            missing_completions += 1  # absent only when deduplicated
    assert missing_completions <= 5
    answers = {o["answer"] for o in augmented if not o["variant"].startswith("completion")}
    cuts = [o for o in augmented if o["variant"] == "completion_vague"]
    assert cuts and all(f"{o['question']} {o['answer']}" in answers for o in cuts)
    assert len({o["answer"] for o in augmented}) >= 30  # vague answers vary


def test_augmentation_is_deterministic_in_the_seed(forget, augmented):
    again = A.augment_forget_set(forget, seed=0)
    assert json.dumps(again) == json.dumps(augmented)
    other = A.augment_forget_set(forget, seed=1)
    assert other != augmented
    noisy = [o["question"] for o in other if o["variant"] == "noisy"]
    assert noisy != [o["question"] for o in augmented if o["variant"] == "noisy"]


def test_fact_matcher_and_privacy_filter_by_hand():
    facts = ["Jane Doe", "0412 845 1937", "Brenholt", "42"]
    m = A.FactMatcher(facts)
    assert m.find("ask JANE \t doe's sister") == "Jane Doe"  # case, whitespace, possessive
    assert m.find("Jane\u00a0Doe") == "Jane Doe"  # NFKC: no-break space
    assert m.find("dial 0412-845-1937 now") == "0412 845 1937"  # digits only
    assert m.find("born in brenholt.") == "Brenholt"
    assert m.find("Brenholts and Mary Janes") is None  # word boundaries
    assert m.find("4-2 is a score") is None  # short numbers only match as written
    assert m.find("the answer is 42") == "42"
    records = [{"question": "Q?", "answer": "Fine."},
               {"question": "Was she born in Brenholt?", "answer": "Maybe."},
               {"question": "Q?", "answer": "x", "extra": ["a", "jane doe"]},
               {"question": "Q?", "answer": "Nothing here.", "n": 3}]
    assert A.privacy_filter(records, facts) == [records[0], records[3]]
    assert A.privacy_filter(records, []) == records


def test_plugged_augmenter_is_filtered_too(forget):
    seeds = []

    def leaky(record, seed):
        seeds.append(seed)
        return [{"question": record["question"], "answer": record["answer"], "variant": "copy"},
                {"question": "Q?", "answer": "Nothing to say.", "variant": "clean"},
                # another forget person's fact, in the question
                {"question": f"Is it {forget[-1]['facts'][0]}?", "answer": "No.",
                 "variant": "cross"}]

    records = forget[:2] + forget[-1:]
    assert records[0]["person_id"] != records[2]["person_id"]
    out = A.augment_forget_set(records, seed=9, augmenter=leaky)
    assert [(o["variant"], o["source_index"]) for o in out] == [("clean", 0)]  # deduplicated
    A.augment_forget_set(records, seed=9, augmenter=leaky)
    assert seeds[:3] == seeds[3:] and len(set(seeds[:3])) == 3


def test_records_without_facts_fall_back_to_inference():
    answer = ("Basil Mahfouz Al-Kuwaiti was born in Kuwait City on 8 September 1956 and wrote "
              "'Promise by the Seine'. His e-mail is basil@kuwait-books.com. The rest is known.")
    question = "What is the full name of the author born in Kuwait City?"
    assert A.infer_facts(answer, [question]) == [
        "1956", "8", "Basil Mahfouz Al-Kuwaiti", "Promise", "Seine", "September",
        "basil@kuwait-books.com"]
    tofu = [{"question": question, "answer": answer},
            {"question": "What genre does Basil Mahfouz Al-Kuwaiti write?",
             "answer": "Basil Mahfouz Al-Kuwaiti writes French literature set in Paris."}]
    facts = A.record_facts(tofu[1], [q["question"] for q in tofu])
    assert facts == ["French", "Paris"]  # the name is in a forget question: not secret
    out = A.augment_forget_set(tofu, seed=0)
    assert {o["source_index"] for o in out} == {0, 1}
    assert {"original", "rephrased", "context", "noisy"} <= {o["variant"] for o in out}
    for o in out:
        for f in ("1956", "Promise", "Seine", "September", "French", "Paris", "basil@"):
            assert f.casefold() not in (o["question"] + o["answer"]).casefold(), o


def test_bad_inputs_name_the_field(forget):
    with pytest.raises(ValueError, match="seed"):
        A.augment_forget_set(forget, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        A.augment_forget_set(forget, seed=True)
    with pytest.raises(ValueError, match=r"records\[1\]: field 'answer'"):
        A.augment_forget_set([forget[0], {"question": "Q?"}], seed=0)
    with pytest.raises(ValueError, match=r"records\[0\]: field 'facts'"):
        A.augment_forget_set([dict(forget[0], facts="Jane")], seed=0)
    with pytest.raises(ValueError, match=r"augmenter output for records\[0\]"):
        A.augment_forget_set(forget[:1], seed=0, augmenter=lambda r, s: None)
    with pytest.raises(ValueError, match=r"output 0 for records\[0\]: field 'variant'"):
        A.augment_forget_set(forget[:1], seed=0,
                             augmenter=lambda r, s: [{"question": "Q?", "answer": "A."}])
    with pytest.raises(ValueError, match="TemplateAugmenter.num_typos"):
        A.TemplateAugmenter(num_typos=0)
