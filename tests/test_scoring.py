"""Batched jitted scoring vs a per-sequence NumPy computation on a tiny random Llama."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.data.batch import Encoded, collate
from jaxunlearn.errors import DataError
from jaxunlearn.eval import scoring
from jaxunlearn.models import Llama
from jaxunlearn.models.presets import tiny

V, PAD, EOS = 61, 0, 1


@pytest.fixture(scope="module")
def model():
    return Llama(tiny(V), rngs=nnx.Rngs(7))


@pytest.fixture(scope="module")
def forward(model):
    """Logits ``[L, V]`` of one unpadded sequence of L <= 64 tokens.

    One row, right-padded to a fixed 64 inside one jitted call (causal attention:
    the padding cannot reach real positions), so the reference compiles once.
    """
    call = jax.jit(lambda ids, mask: model(ids, mask))

    def run(ids):
        ids = np.asarray(ids, np.int32)
        padded = np.zeros((1, 64), np.int32)
        padded[0, :len(ids)] = ids
        mask = (np.arange(64) < len(ids)).astype(np.int32)[None]
        return np.asarray(call(padded, mask))[0, :len(ids)]

    return run


def _sequences(seed=0):
    """QA-like sequences: a prompt (not counted) then answer tokens (counted)."""
    rng = np.random.default_rng(seed)
    out = []
    for prompt_len, answer_len in [(4, 6), (9, 3), (2, 1), (12, 20), (5, 2), (3, 35), (7, 7)]:
        ids = rng.integers(2, V, prompt_len + answer_len).astype(np.int32)
        counted = np.r_[np.zeros(prompt_len), np.ones(answer_len)].astype(np.float32)
        out.append(Encoded(ids, counted))
    return out


def _np_log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _reference(forward, e: Encoded, k=0.4):
    """Single-sequence forward, every reduction by hand in float64 NumPy."""
    logits = forward(e.token_ids[:-1])
    labels, on = e.token_ids[1:], e.counted[1:] > 0
    logp = _np_log_softmax(logits)
    tok = logp[np.arange(len(labels)), labels]
    p = np.exp(logp)
    mu = (p * logp).sum(-1)
    sigma = np.sqrt(np.maximum((p * (logp - mu[:, None]) ** 2).sum(-1), 1e-6))
    z = (tok - mu) / sigma
    scored = np.flatnonzero(on)[:-1]  # Min-K leaves the final (eos) token out

    def lowest(v):
        if len(v) == 0:
            return 0.0
        n = max(1, int(len(v) * k))
        return float(np.sort(v)[:n].mean())

    return {"seq_logprob": tok[on].sum(), "num_tokens": on.sum(),
            "num_correct": (logits.argmax(-1) == labels)[on].sum(),
            "min_k": lowest(tok[scored]), "min_k_plus_plus": lowest(z[scored]),
            "token_logp": tok, "correct": logits.argmax(-1) == labels}


def test_scores_equal_numpy_reference_and_keep_order(model, forward):
    seqs = _sequences()
    got = scoring.score_sequences(model, seqs, pad_id=PAD, batch_size=3)
    assert got.token_logp.shape == (len(seqs), 48)  # longest (37 positions) -> bucket 48
    for i, e in enumerate(seqs):
        ref = _reference(forward, e)
        assert got.seq_logprob[i] == pytest.approx(ref["seq_logprob"], rel=1e-5, abs=1e-4)
        assert got.num_tokens[i] == ref["num_tokens"]
        assert got.num_correct[i] == ref["num_correct"]
        assert got.min_k[i] == pytest.approx(ref["min_k"], rel=1e-4, abs=1e-4)
        assert got.min_k_plus_plus[i] == pytest.approx(ref["min_k_plus_plus"], rel=1e-4, abs=1e-4)
        n = e.length
        on = e.counted[1:] > 0
        np.testing.assert_allclose(got.token_logp[i, :n], np.where(on, ref["token_logp"], 0),
                                   rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(got.correct[i, :n], ref["correct"] & on)
        np.testing.assert_array_equal(got.labels[i, :n], e.token_ids[1:])
        np.testing.assert_array_equal(got.mask[i, :n], e.counted[1:])
        assert not got.mask[i, n:].any()  # padding is never scored
    np.testing.assert_allclose(got.mean_logprob, got.seq_logprob / got.num_tokens)
    np.testing.assert_allclose(got.accuracy, got.num_correct / got.num_tokens)


def test_batch_composition_and_padding_rows_do_not_matter(model):
    seqs = _sequences(1)
    # 7 sequences in batches of 3, then 6 of them in another order (other batch-mates,
    # other bucket for some, empty padding rows in the last batch): same numbers.
    all_of_them = scoring.score_sequences(model, seqs, pad_id=PAD, batch_size=3)
    order = [5, 2, 0, 6, 4, 1]
    some = scoring.score_sequences(model, [seqs[i] for i in order], pad_id=PAD, batch_size=3)
    for a, b in zip(all_of_them.take(order), some):
        if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_jit_equals_no_jit(model):
    seqs = _sequences(2)[:2]  # and an empty padding row
    b = collate(seqs, 32, PAD, batch_size=3)  # a shape the other tests compiled
    graphdef, state = nnx.split(model)
    args = (graphdef, state, b.input_ids, b.labels, b.loss_mask, b.attention_mask)
    jitted = scoring._score_batch(*args, k=0.4)
    with jax.disable_jit():
        eager = scoring._score_batch(*args, k=0.4)
    for name in jitted:
        np.testing.assert_allclose(np.asarray(jitted[name], np.float64),
                                   np.asarray(eager[name], np.float64), rtol=1e-5, atol=1e-5)


def test_drop_last_removes_each_rows_final_scored_token():
    mask = np.array([[0, 1, 1, 1, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    want = np.array([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    np.testing.assert_array_equal(scoring._drop_last(jnp.asarray(mask)), want)


def _greedy_by_recomputation(forward, prompt, n, eos):
    seq, out = list(prompt), []
    for _ in range(n):
        nxt = int(np.argmax(forward(seq)[-1]))
        if nxt == eos:
            break
        out.append(nxt)
        seq.append(nxt)
    return out


def test_greedy_generate_matches_unpadded_recomputation(model, forward):
    rng = np.random.default_rng(3)
    prompts = [rng.integers(2, V, n).tolist() for n in (5, 17, 3, 9, 11)]
    # Make one row stop early: its 3rd greedy token becomes the eos.
    eos = _greedy_by_recomputation(forward, prompts[3], 3, -1)[2]
    got = scoring.greedy_generate(model, prompts, max_new_tokens=6, eos_id=eos, pad_id=PAD,
                                  batch_size=2)
    for prompt, tokens in zip(prompts, got):
        assert tokens == _greedy_by_recomputation(forward, prompt, 6, eos)
    assert len(got[3]) <= 2


def test_bad_arguments_name_the_field(model):
    with pytest.raises(DataError, match="batch_size"):
        scoring.score_sequences(model, _sequences(), pad_id=PAD, batch_size=0)
    with pytest.raises(DataError, match="encoded"):
        scoring.score_sequences(model, [], pad_id=PAD)
    with pytest.raises(DataError, match="prompts"):
        scoring.greedy_generate(model, [[3], []], max_new_tokens=2, eos_id=EOS, pad_id=PAD)
