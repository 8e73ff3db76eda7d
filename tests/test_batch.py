"""jaxunlearn.data.batch: answer-only masks, the shift, padding, bucketing and iterators."""

import copy

import numpy as np
import pytest

from jaxunlearn.data.batch import (
    Batch,
    Encoded,
    bucket_length,
    check_lengths,
    collate,
    encode_candidates,
    encode_prompt,
    encode_qa,
    encode_qa_records,
    encode_text,
    epoch_rows,
    iterate_batches,
    iterate_eval_batches,
    pad_id,
    prompt_batch,
    steps_per_epoch,
)
from jaxunlearn.data.batch import ChatStyle
from jaxunlearn.errors import DataError
from jaxunlearn.data.tokenizer import train_tokenizer

PAD = 2


@pytest.fixture(scope="module")
def tok():
    texts = [f"Question: Where does person {i} live?\nAnswer: Person {i} lives in Tartu, {i} Elm St."
             for i in range(40)]
    return train_tokenizer(texts, vocab_size=320)


def toy(i, n):
    """A distinguishable fake sequence: token ids [i, 100+i, 100+i, ...] of length n."""
    ids = np.array([i] + [100 + i] * (n - 1), np.int32)
    counted = np.array([0.0] + [1.0] * (n - 1), np.float32)
    return Encoded(ids, counted)


def test_qa_mask_covers_exactly_the_answer_and_eos(tok):
    q, a = "Where does Åsa live?", "Åsa lives in Tartu, 5 Elm St."
    e = encode_qa(tok, q, a)
    b = collate([e], seq_len=e.length, pad_id=PAD)
    counted_labels = b.labels[0][b.loss_mask[0] == 1]
    assert tok.decode(counted_labels) == a + "<|eos|>"
    # The uncounted labels are the prompt minus its first token (bos is never a label).
    prompt_labels = b.labels[0][b.loss_mask[0] == 0]
    assert tok.decode(prompt_labels) == f"Question: {q}\nAnswer: "
    # Counted positions are one contiguous run at the end.
    mask = b.loss_mask[0]
    first = int(np.argmax(mask))
    assert mask[first:].all() and not mask[:first].any()
    assert tok.decode(b.input_ids[0][:first + 1]) == f"<|bos|>Question: {q}\nAnswer: "


def test_shift_aligns_labels_with_the_next_token(tok):
    e = encode_qa(tok, "Q?", "Yes, in Tartu.")
    b = collate([e], seq_len=32, pad_id=PAD)
    n = e.length
    np.testing.assert_array_equal(b.input_ids[0, :n], e.token_ids[:-1])
    np.testing.assert_array_equal(b.labels[0, :n], e.token_ids[1:])
    np.testing.assert_array_equal(b.labels[0, : n - 1], b.input_ids[0, 1:n])
    assert b.input_ids[0, 0] == tok.bos_token_id and b.labels[0, n - 1] == tok.eos_token_id


def test_text_counts_every_token(tok):
    text = "Person 3 lives in Tartu."
    e = encode_text(tok, text)
    b = collate([e], seq_len=e.length, pad_id=PAD)
    assert b.loss_mask.all()
    assert tok.decode(b.labels[0]) == text + "<|eos|>"
    assert b.input_ids[0, 0] == tok.bos_token_id


def test_padding_rows_and_dtypes(tok):
    es = [encode_qa(tok, "Q?", "A short one."), encode_text(tok, "Longer text goes here, much longer.")]
    b = collate(es, seq_len=64, pad_id=PAD, batch_size=3)
    assert isinstance(b, Batch) and all(x.shape == (3, 64) for x in b[:4])
    assert [x.dtype for x in b[:4]] == [np.int32, np.int32, np.float32, np.int32]
    for row, e in enumerate(es):
        n = e.length
        assert b.attention_mask[row].sum() == n and b.attention_mask[row, :n].all()
        assert (b.input_ids[row, n:] == PAD).all() and (b.labels[row, n:] == PAD).all()
        assert not b.loss_mask[row, n:].any()
    assert not b.attention_mask[2].any() and not b.loss_mask[2].any() and (b.input_ids[2] == PAD).all()


def test_masked_score_equals_scoring_the_unpadded_slice(tok):
    # Independent NumPy reference: score each sequence alone, then compare with the padded batch.
    es = [encode_qa(tok, "Where?", "Tartu."), encode_qa(tok, "Who lives at 5 Elm St?", "Person 5 does."),
          encode_text(tok, "Person 7 lives in Tartu.")]
    b = collate(es, seq_len=32, pad_id=PAD)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 32, len(tok)))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    batch_scores = (np.take_along_axis(logp, b.labels[..., None], -1)[..., 0] * b.loss_mask).sum(1)
    for row, e in enumerate(es):
        ids, counted = e.token_ids, e.counted
        ref = sum(logp[row, t, ids[t + 1]] for t in range(len(ids) - 1) if counted[t + 1])
        np.testing.assert_allclose(batch_scores[row], ref, rtol=1e-12)


def test_candidates_share_the_prompt(tok):
    es = encode_candidates(tok, "Where?", ["In Tartu.", "In Oslo.", "At 5 Elm St."])
    prompt = encode_prompt(tok, "Where?")
    for e, ans in zip(es, ["In Tartu.", "In Oslo.", "At 5 Elm St."]):
        np.testing.assert_array_equal(e.token_ids[: len(prompt)], prompt)
        assert tok.decode(e.token_ids[e.counted == 1]) == ans + "<|eos|>"
    with pytest.raises(DataError, match=r"answers\[1\]"):
        encode_candidates(tok, "Where?", ["ok", ""])
    with pytest.raises(DataError, match="answers"):
        encode_candidates(tok, "Where?", "not a list")


def test_encode_records_picks_the_answer_field(tok):
    recs = [{"question": "Where?", "answer": "Tartu.", "idk_answer": "I don't know."}]
    (e,) = encode_qa_records(tok, recs, answer_field="idk_answer")
    assert tok.decode(e.token_ids[e.counted == 1]) == "I don't know.<|eos|>"
    with pytest.raises(DataError, match="record 1: field 'paraphrased_answer': missing"):
        encode_qa_records(tok, recs, answer_field="paraphrased_answer")
    with pytest.raises(DataError, match="answer: expected a non-empty string"):
        encode_qa(tok, "Where?", "  ")


def test_bucket_length():
    assert [bucket_length(n) for n in (1, 32, 33, 64, 65, 500, 8192)] == [32, 32, 64, 64, 128, 512, 8192]
    assert bucket_length(8193) == 16384 and bucket_length(20000) == 24576
    assert bucket_length(10, (8, 16)) == 16
    with pytest.raises(DataError, match="buckets"):
        bucket_length(10, (16, 8))


def rows_of(batch):
    """Item index of each row of a batch of toy() sequences (row's first input id)."""
    return [int(i) for i in batch.input_ids[:, 0]]


def test_iterator_is_deterministic_per_seed_and_epoch():
    data = [toy(i, 3 + i % 5) for i in range(10)]
    run = lambda **kw: [rows_of(b) for b in iterate_batches(data, 4, pad_id=PAD, **kw)]  # noqa: E731
    assert run(seed=1, epoch=0) == run(seed=1, epoch=0)
    first = [tuple(x) for x in run(seed=1, epoch=0)]
    assert first != [tuple(x) for x in run(seed=1, epoch=1)]
    assert first != [tuple(x) for x in run(seed=2, epoch=0)]
    b1 = next(iterate_batches(data, 4, seed=1, epoch=0, pad_id=PAD))
    b2 = next(iterate_batches(data, 4, seed=1, epoch=0, pad_id=PAD))
    for x, y in zip(b1, b2):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("n, bs", [(10, 4), (3, 8), (8, 4), (1, 1)])
def test_iterator_wraps_around_to_fill_the_last_batch(n, bs):
    data = [toy(i, 4) for i in range(n)]
    batches = list(iterate_batches(data, bs, seed=0, epoch=5, pad_id=PAD))
    assert len(batches) == steps_per_epoch(n, bs) == -(-n // bs)
    assert all(b.input_ids.shape == (bs, 32) for b in batches)
    assert all(b.attention_mask.sum(1).min() > 0 for b in batches)  # no empty rows
    seen = [r for b in batches for r in rows_of(b)]
    assert sorted(seen[:n]) == list(range(n))  # each item once, in shuffled order...
    assert seen[n:] == [seen[k % n] for k in range(len(seen) - n)]  # ...then the same order again


def test_iterator_drop_remainder():
    data = [toy(i, 4) for i in range(10)]
    batches = list(iterate_batches(data, 4, seed=0, epoch=0, pad_id=PAD, drop_remainder=True))
    seen = [r for b in batches for r in rows_of(b)]
    assert len(batches) == 2 and len(set(seen)) == 8
    with pytest.raises(DataError, match="batch_size: 16 is larger than the 10"):
        iterate_batches(data, 16, seed=0, epoch=0, pad_id=PAD, drop_remainder=True)
    with pytest.raises(DataError, match="epoch"):
        iterate_batches(data, 4, seed=0, epoch=-1, pad_id=PAD)


def test_epoch_rows_is_the_seeded_permutation_wrapped_around():
    rows = epoch_rows(10, 4, seed=3, epoch=2)
    order = np.random.default_rng([3, 2]).permutation(10)  # written out independently
    np.testing.assert_array_equal(rows.ravel(), np.r_[order, order[:2]])
    assert rows.shape == (3, 4)
    np.testing.assert_array_equal(epoch_rows(10, 4, seed=3, epoch=2, drop_remainder=True),
                                  order[:8].reshape(2, 4))
    # iterate_batches yields exactly these rows.
    data = [toy(i, 4) for i in range(10)]
    seen = [rows_of(b) for b in iterate_batches(data, 4, seed=3, epoch=2, pad_id=PAD)]
    assert [list(r) for r in seen] == rows.tolist()


def test_pad_id_falls_back_to_eos_and_names_the_tokenizer():
    class Tok:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    assert pad_id(Tok(5, 7)) == 5 and pad_id(Tok(None, 7)) == 7 and pad_id(Tok(0, 7)) == 0
    with pytest.raises(DataError, match="tokenizer: has neither a pad nor an eos"):
        pad_id(Tok(None, None))


def test_batches_are_padded_to_a_bucket():
    data = [toy(0, 5), toy(1, 40), toy(2, 3)]
    (b,) = iterate_batches(data, 3, seed=0, epoch=0, pad_id=PAD)
    assert b.input_ids.shape == (3, 64)
    (b,) = iterate_batches(data, 3, seed=0, epoch=0, pad_id=PAD, seq_len=48)
    assert b.input_ids.shape == (3, 48)


def test_eval_iterator_keeps_order_and_pads_with_empty_rows():
    data = [toy(i, 3 + i) for i in range(7)]
    out = list(iterate_eval_batches(data, 3, pad_id=PAD))
    assert [e.num_real for e in out] == [3, 3, 1]
    assert [rows_of(e.batch)[: e.num_real] for e in out] == [[0, 1, 2], [3, 4, 5], [6]]
    last = out[-1].batch
    assert last.input_ids.shape == (3, 32)
    assert not last.attention_mask[1:].any() and not last.loss_mask[1:].any()
    assert last.attention_mask[0].sum() == data[6].length


def test_too_long_sequences_raise_unless_truncated(tok):
    data = [toy(0, 5), toy(1, 12), toy(2, 30)]
    with pytest.raises(DataError, match=r"2 of 3 sequences are longer than max_len=8 tokens \(longest 29\)"):
        check_lengths(data, 8)
    cut = check_lengths(data, 8, truncate=True)
    assert [e.length for e in cut] == [4, 8, 8]
    np.testing.assert_array_equal(cut[2].token_ids, data[2].token_ids[:9])
    assert check_lengths(data, 29) == data
    long_prompt = encode_qa(tok, "Where " * 20 + "?", "Tartu.")
    with pytest.raises(DataError, match="prompt alone fills max_len=10"):
        check_lengths([long_prompt], 10, truncate=True)
    with pytest.raises(DataError, match="seq_len: a sequence of 29 positions"):
        collate(data, 16, PAD)


def test_prompt_batch_is_left_padded(tok):
    p1, p2 = encode_prompt(tok, "Where?"), encode_prompt(tok, "Where does person 12 live now?")
    ids, mask = prompt_batch(tok, [p1, p2])
    assert ids.shape == mask.shape == (2, 32) and ids.dtype == mask.dtype == np.int32
    np.testing.assert_array_equal(ids[0, -len(p1):], p1)
    np.testing.assert_array_equal(ids[1, -len(p2):], p2)
    assert (ids[0, : 32 - len(p1)] == tok.pad_token_id).all()
    np.testing.assert_array_equal(mask.sum(1), [len(p1), len(p2)])
    assert mask[:, -1].all()  # the next token follows position T-1 in every row
    with pytest.raises(DataError, match="prompt 1 is empty"):
        prompt_batch(tok, [p1, []])
    with pytest.raises(DataError, match="seq_len"):
        prompt_batch(tok, [p1, p2], seq_len=len(p2) - 1)



# A Llama-3.x-Instruct-like template: it renders "Today Date: {date_string}" and a system
# message, so open-unlearning's defaults apply to it.
DATED_TEMPLATE = (
    "{{- '<|bos|>' -}}"
    "{{- 'system: Today Date: ' + (date_string if date_string is defined else '26 Jul 2024') -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- ' | ' + messages[0]['content'] -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- for message in messages if message['role'] == 'user' -%}"
    "{{- 'Question: ' + message['content'] + '\\n' -}}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Answer: ' -}}{%- endif -%}")


def test_chat_style_open_unlearning_defaults_and_overrides(tok):
    plain = tok.decode(encode_prompt(tok, "Who?"))
    assert plain == "<|bos|>Question: Who?\nAnswer: "  # our template: neither, unchanged
    dated = copy.deepcopy(tok)
    dated.chat_template = DATED_TEMPLATE
    text = dated.decode(encode_prompt(dated, "Who?"))
    assert text == ("<|bos|>system: Today Date: 10 Apr 2025 | You are a helpful assistant.\n"
                    "Question: Who?\nAnswer: ")
    text = dated.decode(encode_prompt(dated, "Who?", chat=ChatStyle(system_prompt="",
                                                                    date_string="1 Jan 2030")))
    assert text == "<|bos|>system: Today Date: 1 Jan 2030\nQuestion: Who?\nAnswer: "
    with pytest.raises(DataError, match="data.system_prompt"):
        ChatStyle(system_prompt=3)
