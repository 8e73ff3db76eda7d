"""SGA / TAU (jaxunlearn.methods.memorization): selection, exact zero gradients, the ascent
objectives (the gradient methods' own forget terms) against NumPy, task arithmetic, and
GA vs SGA vs TAU on a tiny model that memorised canaries repeated 1, 4 and 16 times."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from _training import train_nll
from jaxunlearn import methods
from jaxunlearn.methods import memorization
from jaxunlearn.methods import runner
from jaxunlearn.config import TrainConfig
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data import synthetic
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.eval import neighbourhood, sequence_memorization
from jaxunlearn.models import Llama, LlamaConfig
from jaxunlearn.train.step import OptimizerConfig, objective_value

TINY = dict(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4, num_kv_heads=2,
            max_position_embeddings=64, tie_word_embeddings=True)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


# ----------------------------------------------------------------------------- selection


def _their_selection(ma, threshold):
    """The loop of Neo.training_step (selective_unlearning): indexes >= threshold + argmax."""
    indexes, index_max, best = set(), None, float("-inf")
    for i, cur in enumerate(ma):
        if cur >= threshold:
            indexes.add(i)
        if cur > best:
            index_max, best = i, cur
    indexes.add(index_max)
    return np.array([float(i in indexes) for i in range(len(ma))])


@pytest.mark.parametrize("threshold", [0.0, 0.5, 0.7, 1.0])
def test_sga_weights_match_the_reference_selection_loop(threshold):
    rng = np.random.default_rng(0)
    for _ in range(20):
        ma = np.round(rng.uniform(0, 1, size=7), 1).astype(np.float32)  # rounding makes ties
        got = np.asarray(memorization.sga_weights(ma, threshold))
        np.testing.assert_array_equal(got, _their_selection(ma, threshold))
    # jit == no jit
    ma = jnp.asarray([0.2, 0.9, 0.9, 0.1])
    np.testing.assert_array_equal(jax.jit(memorization.sga_weights, static_argnums=1)(ma, 0.95),
                                  [0.0, 1.0, 0.0, 0.0])


def test_memorization_weights_modes():
    ma = np.array([0.1, 0.8, 0.5], np.float32)
    lp = np.array([-2.0, -0.1, -0.7], np.float32)
    np.testing.assert_allclose(memorization.memorization_weights("ma", ma, lp, 0.7), ma)
    np.testing.assert_allclose(memorization.memorization_weights("prob", ma, lp, 0.7),
                               np.exp(lp.astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(memorization.memorization_weights("select", ma, lp, 0.7), [0, 1, 0])
    np.testing.assert_array_equal(memorization.memorization_weights("uniform", ma, lp, 0.7),
                                  [1, 1, 1])
    with pytest.raises(ValueError, match="weighting"):
        memorization.memorization_weights("loss", ma, lp, 0.7)


# ----------------------------------------------------------------------------- gradients


def _random_batch(vocab, B=4, T=10, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (B, T + 1)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    mask[:, 3:] = 1.0
    mask[1, 7:] = 0.0  # rows of different lengths
    att = np.ones((B, T), np.int32)
    return batch_lib.Batch(ids[:, :-1], ids[:, 1:], mask, att)


def _rows(b, idx):
    return jax.tree.map(lambda x: np.asarray(x)[idx], b)


TINY_CONFIG = LlamaConfig(vocab_size=40, **TINY)


@pytest.fixture(scope="module")
def tiny_random():
    model = Llama(TINY_CONFIG, rngs=nnx.Rngs(1))
    return nnx.split(model, nnx.Param)


def _ascent_batch(batch, weight, ref_logp=None):
    ref = jnp.zeros_like(weight) if ref_logp is None else ref_logp
    return {"forget": {"answer": batch}, "cache": {"weight": weight, "ref_logp": {"answer": ref}}}


def test_unselected_rows_contribute_exactly_zero_gradient(tiny_random):
    graphdef, params = tiny_random
    b = _random_batch(40)
    w = np.asarray(memorization.sga_weights(np.array([0.9, 0.2, 0.75, 0.1]), 0.7))
    assert w.tolist() == [1.0, 0.0, 1.0, 0.0]
    objective = memorization.ascent_objective(memorization.SGA(), graphdef, TINY_CONFIG)
    grad_fn = jax.jit(jax.value_and_grad(
        lambda p, batch, weight: objective_value(objective, p, _ascent_batch(batch, weight)),
        has_aux=True))

    def grad(batch, weight):
        return grad_fn(params, batch, weight)

    (loss, aux), g = grad(b, w)
    # Unselected rows replaced by other tokens (and other lengths): bit-identical gradient.
    other = _random_batch(40, seed=7)
    mixed = jax.tree.map(lambda x, o: np.where(np.array([0, 1, 0, 1])[:, None] == 1, o, x),
                         b, other)
    (loss2, _), g2 = grad(mixed, w)
    assert float(loss2) == float(loss)
    for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(g2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    # ... and equal to the gradient of the selected rows alone (masking == slicing).
    (loss3, _), g3 = grad(_rows(b, [0, 2]), np.ones(2, np.float32))
    np.testing.assert_allclose(float(loss3), float(loss), rtol=1e-6)
    # Different batch shapes reduce in different orders: a gradient entry is a sum of
    # cancelling terms, so the bound scales with the leaf's largest entry (a bare atol of
    # 1e-8 failed on one entry of 2560 with matrix products on one thread).
    for a, c in zip(jax.tree.leaves(g), jax.tree.leaves(g3)):
        a, c = np.asarray(a), np.asarray(c)
        np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5 * np.abs(c).max())
    # The loss is the token mean of log p over the selected rows (NumPy reference).
    logits = np.asarray(nnx.merge(graphdef, params)(b.input_ids, b.attention_mask))
    lp = np.take_along_axis(_log_softmax(logits), b.labels[..., None], -1)[..., 0]
    sel = b.loss_mask * w[:, None]
    np.testing.assert_allclose(float(loss), (lp * sel).sum() / sel.sum(), rtol=1e-5)
    assert float(aux["selected"]) == 2.0
    per_token = np.exp((lp * b.loss_mask).sum(-1) / b.loss_mask.sum(-1))  # every row
    np.testing.assert_allclose(float(aux["forget_prob"]), per_token.mean(), rtol=1e-5)


@pytest.mark.parametrize("objective", ["npo", "simnpo"])
def test_soft_weighted_npo_and_simnpo_match_numpy(tiny_random, objective):
    graphdef, params = tiny_random
    b = _random_batch(40, seed=3)
    w = np.array([0.9, 0.0, 0.3, 0.6], np.float32)  # e.g. MA weights
    ref = np.array([-20.0, -25.0, -18.0, -30.0], np.float32)
    method = memorization.SGA(objective=objective, beta=0.5, delta=0.1)
    loss, _ = objective_value(memorization.ascent_objective(method, graphdef, TINY_CONFIG), params,
                              _ascent_batch(b, w, ref))
    logits = np.asarray(nnx.merge(graphdef, params)(b.input_ids, b.attention_mask))
    lp = (np.take_along_axis(_log_softmax(logits), b.labels[..., None], -1)[..., 0]
          * b.loss_mask).sum(-1)
    n = b.loss_mask.sum(-1)
    log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
    per = (-(2 / 0.5) * log_sigmoid(-0.5 * (lp - ref)) if objective == "npo"
           else -(2 / 0.5) * log_sigmoid(0.5 * (-lp / n - 0.1)))
    np.testing.assert_allclose(float(loss), (w * per).sum() / w.sum(), rtol=1e-5)


def test_ga_is_sga_with_threshold_zero(tiny_random):
    graphdef, params = tiny_random
    b = _random_batch(40, seed=5)
    w = np.asarray(memorization.memorization_weights("select", np.zeros(4), np.zeros(4), 0.0))
    objective = memorization.ascent_objective(memorization.SGA(threshold=0.0), graphdef, TINY_CONFIG)
    loss, _ = objective_value(objective, params, _ascent_batch(b, w))
    logits = np.asarray(nnx.merge(graphdef, params)(b.input_ids, b.attention_mask))
    lp = np.take_along_axis(_log_softmax(logits), b.labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), (lp * b.loss_mask).sum() / b.loss_mask.sum(),
                               rtol=1e-5)  # = -token NLL = losses.gradient_ascent


# ----------------------------------------------------------------------------- arithmetic


def test_task_arithmetic_is_exact():
    rng = np.random.default_rng(0)
    anchor = {"a": rng.integers(-50, 50, (3, 4)).astype(np.float32),
              "b": {"c": rng.integers(-50, 50, (5,)).astype(np.float32)}}
    tuned = jax.tree.map(lambda x: x + rng.integers(-9, 9, x.shape).astype(np.float32), anchor)
    for coef in (-1.0, -3.0, 0.5, 0.0):
        out = memorization.task_arithmetic(anchor, tuned, coef)
        # Small integers: every operation is exact in float32, so equality is exact.
        for o, a, t in zip(jax.tree.leaves(out), jax.tree.leaves(anchor), jax.tree.leaves(tuned)):
            np.testing.assert_array_equal(np.asarray(o), a.astype(np.int64) + coef * (t - a))
    fa = {"w": rng.normal(size=(64,)).astype(np.float32)}
    ft = {"w": rng.normal(size=(64,)).astype(np.float32)}
    out = memorization.task_arithmetic(fa, ft, -1.0)["w"]
    np.testing.assert_allclose(out, 2 * fa["w"].astype(np.float64) - ft["w"], rtol=0, atol=1e-6)


def test_method_configs_validate_and_register():
    assert {"sga", "tau"} <= set(methods.method_names())
    tau = methods.get_method({"name": "tau", "coef": -3, "switch_ma": None})
    assert isinstance(tau, memorization.TAU) and tau.coef == -3.0 and tau.switch_ma is None
    assert methods.get_method("sga").threshold == 0.7
    assert methods.get_method({"name": "sga", "objective": "npo"}).resolved_beta == 0.1
    for spec, field in (({"name": "sga", "threshold": 1.5}, "method.threshold"),
                        ({"name": "sga", "weighting": "loss"}, "method.weighting"),
                        ({"name": "sga", "objective": "dpo"}, "method.objective"),
                        ({"name": "sga", "stop_ma": -0.1}, "method.stop_ma"),
                        ({"name": "tau", "coef": 0.5}, "method.coef"),
                        ({"name": "tau", "switch_ma": 2}, "method.switch_ma"),
                        ({"name": "sga", "lambda": 1}, "method.lambda")):
        with pytest.raises(methods.MethodError, match=field):
            methods.get_method(spec)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def canaries():
    """A 1-layer model trained on canaries repeated 1, 4 and 16 times (2 forget + 2 retain
    per count); 6 heldout canaries are never trained on."""
    cfg = synthetic.SyntheticConfig(num_people=2, qa_per_person=1, num_world_facts=1,
                                    canary_repetitions=(1, 4, 16), canaries_per_repetition=2,
                                    num_heldout_canaries=6)
    can = synthetic.generate(cfg).canaries
    tok = tok_lib.train_tokenizer([c["text"] for c in can] * 3, vocab_size=320)
    model = Llama(LlamaConfig(vocab_size=len(tok), **TINY), rngs=nnx.Rngs(0))
    docs = [batch_lib.encode_text(tok, c["text"]) for c in can if c["split"] != "heldout"
            for _ in range(c["repetitions"])]
    model = train_nll(model, docs, steps=80, learning_rate=3e-3, warmup_steps=10,
                      batch_size=16, seq_len=32)
    split = {s: [c for c in can if c["split"] == s] for s in ("forget", "retain", "heldout")}
    return model, tok, split


TRAIN = TrainConfig(epochs=30, batch_size=4, optimizer=OptimizerConfig(
    learning_rate=1e-3, schedule="constant", weight_decay=0.0, b2=0.98))


def _by_reps(records, ma):
    reps = np.array([r["repetitions"] for r in records])
    return {int(k): round(float(ma[reps == k].mean()), 3) for k in np.unique(reps)}


def test_memorization_scores_match_a_per_sequence_numpy_pass(canaries):
    model, tok, split = canaries
    targets = sequence_memorization.encode_targets(tok, split["forget"], max_len=64)
    ma = sequence_memorization.memorization_scores(model, targets, pad_id=2, batch_size=4).ma
    # One right-padded forward pass of every sequence (causal: padding after a token
    # cannot change its prediction), argmax in NumPy.
    width = max(len(e.token_ids) for e in targets.ma)
    ids = np.full((len(ma), width), 2, np.int32)
    for i, e in enumerate(targets.ma):
        ids[i, :len(e.token_ids)] = e.token_ids
    pred = np.asarray(jax.jit(model)(ids)).argmax(-1)
    for i, (e, got) in enumerate(zip(targets.ma, ma)):
        on = e.counted[1:] > 0
        hits = pred[i, :len(e.token_ids) - 1][on] == e.token_ids[1:][on]
        assert got == pytest.approx(hits.mean(), abs=1e-12)
    assert ma.max() > 0.5, "the 16x canaries should be memorised"


def test_ga_sga_tau_bring_memorised_canaries_down(canaries):
    model, tok, split = canaries
    forget, held = split["forget"], split["heldout"]
    targets = sequence_memorization.encode_targets(tok, forget, max_len=64)
    top = np.array([c["repetitions"] for c in forget]) == 16
    before = sequence_memorization.memorization_scores(model, targets, pad_id=2).ma
    figures = {"before": _by_reps(forget, before)}

    # GA = SGA with threshold 0 (every row selected), same never-seen stop level.
    ga = memorization.memorization_unlearn(model, tok, forget, memorization.SGA(threshold=0.0),
                                         TRAIN, never_seen_records=held)
    assert all(h["selected"] == TRAIN.batch_size for h in ga.history)
    assert ga.ma_after[top].mean() < before[top].mean()
    figures["ga"] = _by_reps(forget, ga.ma_after)

    sga = memorization.memorization_unlearn(model, tok, forget, memorization.SGA(), TRAIN,
                                          never_seen_records=held)
    assert sga.stop_source == "never_seen"
    assert sga.stop_ma == pytest.approx(float(sga.never_seen_ma.mean()))
    np.testing.assert_allclose(sga.ma_before, before)
    assert sga.ma_after[top].mean() < before[top].mean()
    if sga.stopped == "stop level":
        assert sga.ma_after.mean() < sga.stop_ma
    first = [h for h in sga.history if h["epoch"] == 0]
    # Before any update only rows with MA >= 0.7 (plus each batch's top row) are selected.
    assert all(1 <= h["selected"] <= TRAIN.batch_size for h in first)
    figures["sga"] = _by_reps(forget, sga.ma_after)

    tau_cfg = memorization.TAU(switch_ma=0.3)
    tau = memorization.memorization_unlearn(model, tok, forget, tau_cfg, TRAIN,
                                          never_seen_records=held)
    assert tau.ma_after[top].mean() < before[top].mean()
    assert tau.finetuned is not None, "TAU should reach its task-arithmetic phase"
    out = nnx.state(tau.model, nnx.Param)
    for o, a, f in zip(jax.tree.leaves(out), jax.tree.leaves(tau.anchor),
                       jax.tree.leaves(tau.finetuned)):
        # theta_s - (theta - theta_s)
        ref = 2 * np.asarray(a, np.float64) - np.asarray(f, np.float64)
        np.testing.assert_allclose(np.asarray(o), ref, rtol=0, atol=1e-5)
    check = sequence_memorization.memorization_scores(tau.model, targets, pad_id=2).ma
    np.testing.assert_allclose(check, tau.ma_after)
    figures["tau"] = _by_reps(forget, tau.ma_after)
    figures["never_seen"] = round(float(sga.never_seen_ma.mean()), 3)
    print("\nforget-canary MA by repetitions:", figures,
          f"\nupdates: ga {len(ga.history)} ({ga.stopped}), sga {len(sga.history)} "
          f"({sga.stopped}), tau {len(tau.history)} ({tau.stopped})")
    summary = sequence_memorization.compare_ma(before, sga.ma_after)
    assert summary["after"]["extractable"] <= summary["before"]["extractable"]


def test_stop_level_already_reached_runs_no_update(canaries):
    model, tok, split = canaries
    out = memorization.memorization_unlearn(model, tok, split["forget"],
                                          memorization.SGA(stop_ma=1.0), TRAIN)
    assert out.stopped == "stop level" and out.stop_source == "fixed"
    assert [h["step"] for h in out.history] == [0]
    for a, b in zip(jax.tree.leaves(nnx.state(out.model, nnx.Param)),
                    jax.tree.leaves(nnx.state(model, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The registry path: unlearn_model dispatches "tau" to its procedure.
    res = runner.unlearn_model(model, tok, split["forget"], split["retain"],
                                {"name": "tau", "stop_ma": 1.0}, TRAIN)
    assert isinstance(res, methods.UnlearnResult) and res.history[0]["ma/mean"] < 1.0


def test_neighbourhood_attack_separates_memorised_canaries(canaries):
    model, tok, split = canaries
    perturber = neighbourhood.VocabularyPerturber.from_records(
        split["forget"] + split["retain"] + split["heldout"])
    top = [c for c in split["forget"] + split["retain"] if c["repetitions"] == 16]
    res = neighbourhood.neighbourhood_attack(model, tok, top, split["heldout"],
                                             perturber=perturber, num_neighbours=4)
    # Independent recomputation of the score from the returned log-probs.
    np.testing.assert_allclose(res.forget.score, np.abs(res.forget.logprob
                                                        - res.forget.neighbour_logprob.mean(1)))
    print(f"\nneighbourhood AUC, 16x canaries vs never-seen: {res.auc:.3f}")
    assert res.auc > 0.5
