"""eval.sequence_memorization: memorisation targets (the tokens MA is taken over: a canary's
secret, a QA answer, a document) and MA summaries; host-side pieces, no model. The
model-level parts run in tests/test_sga_tau.py."""

import numpy as np
import pytest

from jaxunlearn.data import synthetic
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.errors import DataError
from jaxunlearn.eval import sequence_memorization


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
