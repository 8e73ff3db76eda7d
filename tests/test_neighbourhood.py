"""eval.neighbourhood: the vocabulary perturber and the neighbourhood attack's score; host-side
pieces, no model (the model-level attack runs in tests/test_sga_tau.py)."""

import re

import numpy as np
import pytest

from jaxunlearn.data import synthetic
from jaxunlearn.eval import mia, neighbourhood


@pytest.fixture(scope="module")
def bench():
    return synthetic.generate(synthetic.SyntheticConfig(
        num_people=6, qa_per_person=6, num_world_facts=4, canary_repetitions=(1, 2),
        canaries_per_repetition=2))


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
    # Mattern et al.'s d = L(x) - mean L(x~) with L = -log-prob: d = 1 - 3 = -2 (member-like)
    # and 3 - 1.5 = +1.5; the score is -d (higher = member), signed, not |d|.
    np.testing.assert_allclose(s, [2.0, -1.5])
    with pytest.raises(ValueError, match="neighbour_logprob"):
        neighbourhood.neighbourhood_score([-1.0], [[-1.0], [-2.0]])


def test_signed_statistic_auc_by_hand():
    """Forget rows: one still memorised (d = -2), one pushed below its neighbours (d = +1.5);
    never-seen rows d = -0.1, -0.2. Signed (the paper): the first beats both never-seen
    rows, the second neither: AUC = 2/4. An absolute value would have called both members."""
    forget = neighbourhood.neighbourhood_score([-1.0, -3.0], [[-2.0, -4.0], [-1.0, -2.0]])
    never = neighbourhood.neighbourhood_score([-2.0, -2.0], [[-2.1, -2.1], [-2.2, -2.2]])
    np.testing.assert_allclose(never, [0.1, 0.2])
    assert mia.auc(forget, never) == 0.5
    assert mia.auc(np.abs(forget), never) == 1.0
