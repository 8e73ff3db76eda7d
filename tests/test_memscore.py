"""eval.sequence_memorization (memorisation targets, MA summaries) and eval.neighbourhood
(perturber, score): host-side pieces, no model. The model-level parts run in
tests/test_sga_tau.py."""

import re

import numpy as np
import pytest

from jaxunlearn.data import synthetic
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.errors import DataError
from jaxunlearn.eval import neighbourhood, sequence_memorization


@pytest.fixture(scope="module")
def bench():
    return synthetic.generate(synthetic.SyntheticConfig(
        num_people=6, qa_per_person=6, num_world_facts=4, canary_repetitions=(1, 2),
        canaries_per_repetition=2))


@pytest.fixture(scope="module")
def tok(bench):
    return tok_lib.train_tokenizer(tok_lib.corpus_texts({**bench.splits,
                                                         "canaries": bench.canaries,
                                                         "bios": bench.biographies}),
                                   vocab_size=400)


def _decode_counted(tok, e):
    ids = [int(t) for t, c in zip(e.token_ids, e.counted) if c > 0]
    return tok.decode(ids)


def test_canary_target_is_the_secret(bench, tok):
    canaries = list(bench.canaries)
    t = sequence_memorization.encode_targets(tok, canaries, max_len=64)
    assert t.kinds == ["canary"] * len(canaries)
    for c, train, ma in zip(canaries, t.train, t.ma):
        np.testing.assert_array_equal(train.token_ids, ma.token_ids)
        # The counted tokens reach into the secret: they decode to (space +) the secret.
        assert _decode_counted(tok, ma).strip() == c["secret"]
        assert tok.decode([int(x) for x in ma.token_ids[1:-1]]) == c["text"]
        # Training also counts the final eos; MA leaves it out.
        assert train.counted[-1] == 1 and ma.counted[-1] == 0
        assert train.counted[:-1].tolist() == ma.counted[:-1].tolist()


def test_qa_and_text_targets(bench, tok):
    rec = bench.splits["forget10"][0]
    bio = bench.biographies[0]
    t = sequence_memorization.encode_targets(tok, [rec, {"text": bio["text"]}], max_len=512)
    assert t.kinds == ["qa", "text"]
    assert _decode_counted(tok, t.ma[0]) == rec["answer"]
    assert _decode_counted(tok, t.ma[1]) == bio["text"]
    assert int(t.train[0].token_ids[-1]) == tok.eos_token_id and t.train[0].counted[-1] == 1


@pytest.mark.parametrize("record, message", [
    ({"question": "Who?"}, r"record 2: field 'answer'"),
    ({"prefix": "PIN ", "secret": "1234", "text": "PIN 9999"}, r"record 2: field 'text'"),
    ({"prefix": "", "secret": "1234"}, r"record 2: field 'prefix'"),
    ({"title": "x"}, r"record 2: expected a QA record"),
])
def test_bad_records_are_named(bench, tok, record, message):
    with pytest.raises(DataError, match=message):
        sequence_memorization.encode_targets(tok, [bench.splits["forget10"][0], record], max_len=64)
    with pytest.raises(DataError, match="forget split: no records"):
        sequence_memorization.encode_targets(tok, [], max_len=64)


def test_summarize_ma_by_hand():
    ma = [0.0, 0.1, 0.15, 0.6, 0.61, 1.0, 0.95, 0.3]
    s = sequence_memorization.summarize_ma(ma, bins=4)
    assert s.n == 8 and s.max == 1.0 and s.mean == pytest.approx(3.71 / 8)
    assert s.extractable == 3  # 0.61, 1.0, 0.95 (strictly above 0.60)
    assert s.over_unlearned == 2  # 0.0, 0.1 (strictly below 0.15)
    # bins [0, .25) [.25, .5) [.5, .75) [.75, 1]
    assert s.histogram == (3, 1, 2, 2) and s.bin_edges == (0.0, 0.25, 0.5, 0.75, 1.0)
    d = sequence_memorization.compare_ma([0.9, 0.7, 0.2], [0.65, 0.1, 0.2])
    assert d["still_extractable"] == [0] and d["over_unlearned"] == [1]
    assert d["mean_drop"] == pytest.approx(0.85 / 3)
    assert d["before"]["extractable"] == 2 and d["after"]["extractable"] == 1
    with pytest.raises(ValueError, match="ma"):
        sequence_memorization.summarize_ma([np.nan])
    with pytest.raises(ValueError, match="after"):
        sequence_memorization.compare_ma([0.1], [0.1, 0.2])


# ----------------------------------------------------------------------------- neighbours


def test_codes_are_redrawn_class_by_class():
    p = neighbourhood.VocabularyPerturber(phrases={}, words=(), capitalised=())
    rng = np.random.default_rng(0)
    for secret in ("7421-8667", "GX05FH87", "keif-trvz-81"):
        shape = re.sub(r"\d", "9", re.sub(r"[A-Z]", "A", re.sub(r"[a-z]", "a", secret)))
        outs = {p(secret, rng) for _ in range(20)}
        assert secret not in outs and len(outs) > 10
        for o in outs:
            assert re.sub(r"\d", "9", re.sub(r"[A-Z]", "A", re.sub(r"[a-z]", "a", o))) == shape
    with pytest.raises(ValueError, match="nothing to perturb"):
        p("plain words only", rng)


def test_vocabulary_perturber_swaps_within_a_kind():
    dates = ("27 May 1970", "2 January 1955", "15 December 1944")
    p = neighbourhood.VocabularyPerturber(phrases={"date": dates, "lonely": ("x",)},
                                          words=(), capitalised=())
    assert set(p.phrases) == {"date"}  # a kind with one phrase cannot be swapped
    text = "The birth date is 27 May 1970."
    outs = [p(text, np.random.default_rng(seed)) for seed in range(20)]
    assert {o[len("The birth date is "):-1] for o in outs} == set(dates[1:])
    assert outs[3] == p(text, np.random.default_rng(3))  # deterministic per generator
    # Two swaps: the date and the one content word ("birth", "date") pools allow.
    p2 = neighbourhood.VocabularyPerturber(phrases={"date": dates}, words=("birth", "death"),
                                           capitalised=(), swaps=2)
    out = p2(text, np.random.default_rng(0))
    assert out.count(" ") == text.count(" ") and out != text


def test_vocabulary_from_records_keeps_kinds_apart(bench):
    records = [r for s in ("forget10", "retain90", "holdout") for r in bench.splits[s]]
    p = neighbourhood.VocabularyPerturber.from_records(records)
    date = re.compile(r"\d{1,2} [A-Z][a-z]+ \d{4}")
    assert all(date.fullmatch(d) for d in p.phrases["topic:birth_date:0"])
    assert "name" in p.phrases and len(p.phrases["name"]) == len({r["name"] for r in records})
    # Content words only: no function words, no pieces of e-mails.
    assert "is" not in p.words and "the" not in p.words
    assert not any("@" in w or any(c.isdigit() for c in w) for w in p.words + p.capitalised)
    rec = next(r for r in records if r["topic"] == "phone")
    for seed in range(10):
        out = p(rec["answer"], np.random.default_rng(seed))
        assert out != rec["answer"] and out.count(" ") >= rec["answer"].count(" ") - 2


def test_neighbour_records_and_score():
    p = neighbourhood.VocabularyPerturber(phrases={}, words=("tabby", "ginger"), capitalised=())
    rng = np.random.default_rng(1)
    can = {"prefix": "My PIN is ", "secret": "1234", "text": "My PIN is 1234"}
    for n in neighbourhood.neighbour_records(can, p, 3, rng):
        assert n["prefix"] == can["prefix"] and n["text"] == n["prefix"] + n["secret"]
        assert re.fullmatch(r"\d{4}", n["secret"]) and n["secret"] != "1234"
    qa = neighbourhood.neighbour_records({"question": "Pet?", "answer": "a tabby."}, p, 2, rng)
    assert [n["answer"] for n in qa] == ["a ginger."] * 2 and qa[0]["question"] == "Pet?"
    s = neighbourhood.neighbourhood_score([-1.0, -3.0], [[-2.0, -4.0], [-1.0, -2.0]])
    np.testing.assert_allclose(s, [2.0, 1.5])  # |-1 - (-3)|, |-3 - (-1.5)|
    with pytest.raises(ValueError, match="neighbour_logprob"):
        neighbourhood.neighbourhood_score([-1.0], [[-1.0], [-2.0]])
