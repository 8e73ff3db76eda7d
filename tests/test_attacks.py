"""Recovery attacks: quantisation error bounds, fine-tuning recovery, before/after reports."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.data import synthetic, tokenizer as tk
from jaxunlearn.errors import UserError
from jaxunlearn.eval import attacks, suite
from jaxunlearn.eval.results import BeforeAfter, ForgetScores
from jaxunlearn.models import Llama
from jaxunlearn.models.hf_layout import hf_tensors_from_model
from jaxunlearn.models.presets import tiny

OPTIONS = suite.SuiteConfig(forget="forget10", retain="retain90", batch_size=8,
                            max_new_tokens=8, max_records=None)


@pytest.fixture(scope="module")
def bench():
    return synthetic.generate(synthetic.SyntheticConfig(
        num_people=20, qa_per_person=2, num_world_facts=2, canary_repetitions=(2,),
        canaries_per_repetition=1, num_heldout_canaries=1, seed=5))


@pytest.fixture(scope="module")
def tokenizer(bench):
    return tk.train_tokenizer(tk.corpus_texts({**bench.splits, "canaries": bench.canaries}),
                              vocab_size=1000)


@pytest.fixture(scope="module")
def model(tokenizer):
    return Llama(tiny(len(tokenizer)), rngs=nnx.Rngs(1))


def _np_step(w, bits):
    """Independent per-row quantisation step ``max|w_row| / (2^(bits-1) - 1)``."""
    return np.abs(np.asarray(w, np.float64)).max(axis=1, keepdims=True) / (2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [8, 4])
def test_rtn_is_within_half_a_step_on_an_integer_grid(bits):
    rng = np.random.default_rng(bits)
    w = rng.normal(0, 0.05, (6, 33)).astype(np.float32)
    w[2] = 0.0  # an all-zero channel stays zero
    w[4, 7] = 3.0  # an outlier only coarsens its own row
    got = attacks.quantize_rtn(w, bits)
    step = _np_step(w, bits)
    assert got.dtype == np.float32 and got.shape == w.shape
    assert np.all(np.abs(got - w) <= step / 2 * (1 + 1e-5) + 1e-12)
    levels = np.divide(got, step, out=np.zeros_like(step * got), where=step > 0)
    np.testing.assert_allclose(levels, np.rint(levels), atol=1e-4)  # integer multiples
    assert np.abs(np.rint(levels)).max() == 2 ** (bits - 1) - 1  # the row maximum is exact
    np.testing.assert_array_equal(got[2], 0.0)
    np.testing.assert_allclose(np.abs(got).max(1), np.abs(w).max(1), rtol=1e-6)
    assert np.abs(got[0] - w[0]).max() < np.abs(got[4] - w[4]).max()


def test_rtn_hand_worked_example():
    # bits=4: q_max = 7, step = 0.7 / 7 = 0.1; round(-3.3) = -3, round(1.4) = 1.
    got = attacks.quantize_rtn(np.array([[0.7, -0.33, 0.14, 0.0]]), 4)
    np.testing.assert_allclose(got, [[0.7, -0.3, 0.1, 0.0]], atol=1e-7)


def test_quantize_model_touches_every_matrix_and_nothing_else(model):
    before = hf_tensors_from_model(model)
    q8 = attacks.quantize_model(model, 8)
    after = hf_tensors_from_model(q8)
    assert set(after) == set(before)
    for name, w in before.items():
        if w.ndim == 2:
            assert not np.array_equal(after[name], w), name
            assert np.all(np.abs(after[name] - w) <= _np_step(w, 8) / 2 * (1 + 1e-5)), name
        else:
            np.testing.assert_array_equal(after[name], w)  # norms are kept
    for name, w in hf_tensors_from_model(model).items():
        np.testing.assert_array_equal(w, before[name])  # the input model is unchanged
    ids = np.arange(2, 18, dtype=np.int32)[None]
    forward = nnx.jit(lambda m, x: m(x))  # one compilation for the three models
    ref = np.asarray(forward(model, ids))
    err8 = np.abs(np.asarray(forward(q8, ids)) - ref).max()
    err4 = np.abs(np.asarray(forward(attacks.quantize_model(model, 4), ids)) - ref).max()
    assert 0 < err8 < err4


def test_quantization_attack_barely_moves_an_undamaged_model_at_8_bits(model, tokenizer, bench):
    records = list(bench.splits["forget10"])
    out = attacks.quantization_attack(model, tokenizer, records, OPTIONS,
                                      canaries=bench.canaries)
    assert set(out) == {"quantize_8bit", "quantize_4bit"}
    q8, q4 = out["quantize_8bit"].metrics, out["quantize_4bit"].metrics
    assert set(q8) == set(ForgetScores.KEYS)
    for key in ForgetScores.KEYS:
        assert q8[key].before == q4[key].before
    p = q8["forget_prob"]
    assert abs(p.after - p.before) <= 0.02 * p.before
    tr = q8["forget_truth_ratio"]
    assert abs(tr.after - tr.before) <= 0.02
    # A known "before" is reused as given.
    given = ForgetScores(**{f.name: 0.5 for f in dataclasses.fields(ForgetScores)})
    again = attacks.quantization_attack(model, tokenizer, records, OPTIONS, bits=(8,),
                                        before=given)
    assert again["quantize_8bit"].metrics["forget_prob"].before == 0.5


def test_recovery_split_is_disjoint_by_person_and_seeded(bench):
    records = list(bench.splits["forget10"])
    train, rest = attacks.recovery_split(records, 0.5, seed=0)
    assert train and rest and len(train) + len(rest) == len(records)
    assert not {r["person_id"] for r in train} & {r["person_id"] for r in rest}
    assert attacks.recovery_split(records, 0.5, seed=0) == (train, rest)
    one_person = [r for r in records if r["person_id"] == records[0]["person_id"]]
    train, rest = attacks.recovery_split(one_person, 0.5, seed=0)
    assert len(train) == 1 and len(rest) == len(one_person) - 1
    with pytest.raises(UserError, match="at least 2 records"):
        attacks.recovery_split(records[:1], 0.5, seed=0)


def test_finetune_lowers_the_loss_deterministically_and_copies(model, tokenizer, bench):
    records = list(bench.splits["forget10"])
    config = attacks.FinetuneRecoveryConfig(steps=6, learning_rate=1e-2, batch_size=4)
    original = hf_tensors_from_model(model)
    tuned, losses = attacks.finetune_nll(model, tokenizer, records, config)
    assert len(losses) == 6 and losses[-1] < losses[0]
    again, losses2 = attacks.finetune_nll(model, tokenizer, records, config)
    assert losses == losses2
    for a, b in zip(jax.tree.leaves(nnx.state(tuned)), jax.tree.leaves(nnx.state(again))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name, w in hf_tensors_from_model(model).items():
        np.testing.assert_array_equal(w, original[name])


def test_recovery_attack_trains_on_some_people_and_measures_the_others(model, tokenizer,
                                                                      bench):
    records = list(bench.splits["forget10"])
    config = attacks.FinetuneRecoveryConfig(fraction=0.5, steps=6, learning_rate=1e-2,
                                            batch_size=4)
    out = attacks.finetune_recovery_attack(model, tokenizer, records, OPTIONS, config=config)
    # The same experiment by hand: split, fine-tune a copy, measure the held-back people.
    train, rest = attacks.recovery_split(records, 0.5, seed=0)
    tuned, losses = attacks.finetune_nll(model, tokenizer, train, config)
    before = suite.evaluate_forget(model, tokenizer, rest, OPTIONS).to_json()
    after = suite.evaluate_forget(tuned, tokenizer, rest, OPTIONS).to_json()
    assert set(out.metrics) == set(before)
    assert set(before) == {"forget_prob", "forget_rouge", "forget_truth_ratio"}  # no canaries
    for key in before:
        assert out.metrics[key] == BeforeAfter(before=before[key], after=after[key])
    assert after["forget_prob"] != before["forget_prob"]
    assert out.info == {"train_records": len(train), "eval_records": len(rest), "steps": 6,
                           "loss_first": losses[0], "loss_last": losses[-1]}


def test_bad_attack_settings_name_the_field():
    with pytest.raises(UserError, match="fraction"):
        attacks.FinetuneRecoveryConfig(fraction=1.0)
    with pytest.raises(UserError, match="steps"):
        attacks.FinetuneRecoveryConfig(steps=0)
    with pytest.raises(UserError, match="learning_rate"):
        attacks.FinetuneRecoveryConfig(learning_rate=0.0)
    with pytest.raises(UserError, match="bits"):
        attacks.quantize_rtn(np.ones((2, 2)), 1)
    with pytest.raises(UserError, match="weight"):
        attacks.quantize_rtn(np.ones((2, 2, 2)), 8)
