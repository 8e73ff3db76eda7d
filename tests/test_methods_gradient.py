"""The gradient methods (``jaxunlearn.methods.gradient``) on a tiny random model.

Each objective is compared with the same composition written out here from the scalar
``jaxunlearn.losses`` and the model's forward pass, with the reference computed live from
a frozen copy of the weights; memorisation weights against NumPy; and for every
registered gradient method, an update split into micro-batches of very different token
counts (``train.grad_accum``) equals one batch of the same rows: loss, metrics and
gradient (one SGD update with rate 1).
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn import losses, methods
from jaxunlearn.models import LlamaConfig
from jaxunlearn.methods import runner
from jaxunlearn.train.step import init_train_state, make_train_step, objective_value


def _out(s, params, batch, layer=None):
    return nnx.merge(s["graphdef"], params).forward(batch.input_ids, batch.attention_mask,
                                                    hidden_layer=layer)


def _logits(s, params, batch):
    return _out(s, params, batch).logits


def _seq_logp(s, params, batch):
    return losses.sequence_logprob(_logits(s, params, batch), batch.labels, batch.loss_mask)


def _cache(method, s):
    rows = np.arange(8)
    c = runner.build_cache(method, s["graphdef"], s["ref"], s["config"], s["data"], rows,
                           batch_size=8,
                           strengthened=s["policy"] if method.name == "rkld" else None)
    return c.rows(rows, rows)


def _batch(s, cache):
    return {"forget": s["forget"], "retain": s["retain"], "cache": cache}


def _answer_inputs(loss_mask):
    """Positions whose input token is an answer token (open-unlearning's RMU mask):
    label t is input t + 1, so the loss mask moved one position right, by NumPy."""
    out = np.zeros_like(np.asarray(loss_mask))
    out[:, 1:] = np.asarray(loss_mask)[:, :-1]
    return out


def _by_hand(m, s, cache, policy=None):
    """The method's loss written out from scalar losses + forward passes, reference LIVE."""
    policy = s["policy"] if policy is None else policy
    ref, fb, retain = jax.lax.stop_gradient(s["ref"]), s["forget"]["answer"], s["retain"]
    lp, lp_ref = _seq_logp(s, policy, fb), _seq_logp(s, ref, fb)
    logits = _logits(s, policy, fb)
    name = m.name
    if name in ("grad_ascent", "grad_diff"):
        forget_term = losses.gradient_ascent(logits, fb.labels, fb.loss_mask)
    elif name == "npo":
        forget_term = losses.npo(lp, lp_ref, m.beta)
    elif name == "simnpo":
        forget_term = losses.simnpo(lp, losses.sequence_token_counts(fb.loss_mask), m.beta,
                                    m.delta)
    elif name == "idk_dpo":
        ib = s["forget"]["idk"]
        forget_term = losses.dpo(_seq_logp(s, policy, ib), lp, _seq_logp(s, ref, ib), lp_ref,
                                 m.beta)
    elif name == "rmu":  # activations at the answer tokens' input positions (shift by one)
        forget_term = losses.rmu_forget(_out(s, policy, fb, 0).hidden, cache["control"][0],
                                        _answer_inputs(fb.loss_mask))
    elif name == "undial":
        forget_term = losses.undial(logits, _logits(s, ref, fb), fb.labels, fb.loss_mask, m.beta)
    elif name == "wga":
        forget_term = losses.wga(logits, fb.labels, fb.loss_mask, m.beta)
    elif name == "rkld":
        teacher = losses.rkld_teacher(_logits(s, ref, fb),
                                      _logits(s, jax.lax.stop_gradient(s["policy"]), fb),
                                      m.teacher_alpha)
        forget_term = losses.reverse_kl(logits, teacher, fb.loss_mask)
    r_logits = _logits(s, policy, retain)
    if m.retain_loss == "nll":
        retain_term = losses.token_nll(r_logits, retain.labels, retain.loss_mask)
    elif m.retain_loss == "kl":
        retain_term = losses.forward_kl(r_logits, _logits(s, ref, retain), retain.loss_mask)
    else:
        retain_term = losses.rmu_retain(_out(s, policy, retain, 0).hidden,
                                        _out(s, ref, retain, 0).hidden,
                                        _answer_inputs(retain.loss_mask))
    return m.gamma * forget_term + m.alpha * retain_term


# Non-default weights so both terms count; ref_top_k=0 keeps cached distributions exact.
CASES = [
    {"name": "grad_ascent", "gamma": 0.7},
    {"name": "grad_diff", "gamma": 0.7, "alpha": 1.3},
    {"name": "npo", "beta": 0.3, "alpha": 0.5},
    {"name": "npo", "beta": 0.3, "retain_loss": "kl", "ref_top_k": 0},
    {"name": "simnpo", "beta": 2.0, "delta": 0.5},
    {"name": "idk_dpo", "beta": 0.2, "gamma": 1.5},
    {"name": "rmu", "steering_coeff": 5.0, "alpha": 2.0},
    {"name": "undial", "beta": 3.0, "alpha": 0.5, "ref_top_k": 0},
    {"name": "wga", "beta": 0.5},
    {"name": "rkld", "teacher_alpha": 2.0, "ref_top_k": 0},
]


def _id(spec):
    return "-".join(str(v) for k, v in spec.items() if k in ("name", "retain_loss", "weighting"))


def test_cases_cover_every_registered_gradient_method():
    # The library's own methods (tests may register more, e.g. the README's half_npo).
    configs = [methods.get_method(n) for n in methods.method_names()]
    gradient = {m.name for m in configs
                if m.kind == "gradient" and type(m).__module__.startswith("jaxunlearn.")}
    assert {c["name"] for c in CASES} == gradient


@pytest.mark.parametrize("spec", CASES, ids=_id)
def test_objective_equals_losses_composed_by_hand(method_setup, spec):
    s = method_setup
    m = methods.get_method(spec)
    cache = _cache(m, s)
    loss, metrics = objective_value(m.objective(s["graphdef"], s["config"]), s["policy"],
                                    _batch(s, cache))
    want = _by_hand(m, s, cache)
    # A difference of two terms: the bound scales with the terms, not with their difference.
    scale = (m.gamma * abs(float(metrics["forget_loss"]))
             + m.alpha * abs(float(metrics["retain_loss"])))
    np.testing.assert_allclose(float(loss), float(want), rtol=0, atol=1e-5 * scale + 1e-7)
    # forget_prob is TOFU's per-token probability, computed here with NumPy.
    fb = s["forget"]["answer"]
    logits = np.asarray(_logits(s, s["policy"], fb), np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    tok = np.take_along_axis(logits, fb.labels[..., None], -1)[..., 0] - lse
    per_token = np.exp((tok * fb.loss_mask).sum(-1) / fb.loss_mask.sum(-1))
    np.testing.assert_allclose(float(metrics["forget_prob"]), per_token.mean(), rtol=1e-5)


@pytest.mark.parametrize("spec", [c for c in CASES if c["name"] in
                                  ("grad_diff", "npo", "simnpo", "idk_dpo")], ids=_id)
def test_fused_label_logprob_gradients_equal_autodiff_through_logits(method_setup, spec):
    # ModelOutput takes label log-probs from jaxunlearn.ops (its own derivative rule);
    # the by-hand loss differentiates log_softmax of the full logits with plain autodiff.
    s = method_setup
    m = methods.get_method(spec)
    cache = _cache(m, s)
    objective = m.objective(s["graphdef"], s["config"])
    got = jax.grad(lambda p: objective_value(objective, p, _batch(s, cache))[0])(s["policy"])
    want = jax.grad(lambda p: _by_hand(m, s, cache, policy=p))(s["policy"])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["npo", "grad_ascent"])
def test_memorization_weights_reweight_sequences(method_setup, name):
    s = method_setup
    m = methods.get_method({"name": name, "alpha": 0.0, "weighting": "memorization"})
    cache = _cache(m, s)
    fb = s["forget"]["answer"]
    lp_ref = np.asarray(_seq_logp(s, s["ref"], fb), np.float64)
    n = np.asarray(fb.loss_mask.sum(-1), np.float64)
    w = np.exp(lp_ref / n)
    np.testing.assert_allclose(cache["weight"], w, rtol=1e-5)
    lp = np.asarray(_seq_logp(s, s["policy"], fb), np.float64)
    if name == "npo":  # NumPy NPO per sequence: -(2/beta) log sigmoid(-beta (lp - lp_ref))
        want = (w * (2 / m.beta) * np.logaddexp(0.0, m.beta * (lp - lp_ref))).sum() / w.sum()
    else:  # every token of row b weighted by w_b: sum_b w_b lp_b / sum_b w_b n_b
        want = (w * lp).sum() / (w * n).sum()
    loss, _ = objective_value(m.objective(s["graphdef"], s["config"]), s["policy"],
                              _batch(s, cache))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert not np.allclose(w, w[0]), "weights must actually differ for this test to bite"


def test_objective_jit_equals_no_jit(method_setup):
    s = method_setup
    m = methods.get_method({"name": "idk_dpo", "beta": 0.3})
    batch = _batch(s, _cache(m, s))
    objective = m.objective(s["graphdef"], s["config"])
    eager, _ = objective_value(objective, s["policy"], batch)
    jitted, _ = jax.jit(lambda p, b: objective_value(objective, p, b))(s["policy"], batch)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)


@pytest.mark.parametrize("spec", [{"name": "undial", "alpha": 1.0, "retain_loss": "kl"},
                                  {"name": "npo", "alpha": 1.0}], ids=_id)
def test_extra_padding_changes_nothing(method_setup, spec):
    """Masking == slicing: 8 more padding columns (and a top-k cache) give the same loss."""
    s = method_setup
    m = methods.get_method({**spec, "ref_top_k": 5})
    data = s["data"]
    wide = data._replace(t_forget=data.t_forget + 8, t_retain=data.t_retain + 8)
    rows = np.arange(8)
    c_wide = runner.build_cache(m, s["graphdef"], s["ref"], s["config"], wide, rows,
                                batch_size=8).rows(rows, rows)

    def pad(b):
        return jax.tree.map(lambda x: np.pad(x, ((0, 0), (0, 8))), b)

    objective = m.objective(s["graphdef"], s["config"])
    narrow, _ = objective_value(objective, s["policy"], _batch(s, _cache(m, s)))
    wide_loss, _ = objective_value(objective, s["policy"], {
        "forget": {v: pad(b) for v, b in s["forget"].items()}, "retain": pad(s["retain"]),
        "cache": c_wide})
    np.testing.assert_allclose(float(wide_loss), float(narrow), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ exact reductions

ACCUM_CASES = CASES + [{"name": "grad_diff", "weighting": "memorization"}]


def _step(objective, params, batch, accum: int):
    """Metrics and gradient of one step of ``grad_accum=accum`` (SGD at rate 1: the update
    is minus the gradient)."""
    opt = optax.sgd(1.0)
    step = make_train_step(objective, opt, grad_accum=accum, donate=False)
    micro = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)
    state, metrics = step(init_train_state(params, opt, jax.random.key(0)), micro)
    grads = jax.tree.map(lambda old, new: np.asarray(old, np.float64) - np.asarray(new),
                         params, state.params)
    return {k: float(v) for k, v in metrics.items()}, grads


def _terms(m, s, batch):
    """Value and gradient of the whole batch's ``gamma * forget`` and ``alpha * retain``."""
    objectives = [dataclasses.replace(m, alpha=0.0).objective(s["graphdef"], s["config"]),
                  dataclasses.replace(m, gamma=0.0).objective(s["graphdef"], s["config"])]
    both = jax.jit(lambda p: [jax.value_and_grad(lambda q, o=o: objective_value(o, q, batch)[0])(p)
                              for o in objectives])
    return [(float(v), jax.tree.map(lambda x: np.asarray(x, np.float64), g))
            for v, g in both(s["policy"])]


def _max_abs(tree) -> float:
    return max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("spec", ACCUM_CASES, ids=_id)
def test_grad_accum_equals_one_batch_of_the_same_rows(method_setup, spec):
    """Two micro-batches of 1-3 and 6-9 answer tokens per row give the loss, metrics and
    gradient of the whole batch: the step adds ``(sum, count)`` parts and divides once.

    The whole batch's loss and gradient are the sums of its forget and retain terms'
    (computed apart); the bounds scale with those terms (grad_diff's loss and gradient
    are differences), at 1e-5 of them.
    """
    s = method_setup
    m = methods.get_method(spec)
    batch = _batch(s, _cache(m, s))
    (f_val, f_grad), (r_val, r_grad) = _terms(m, s, batch)
    accums = (2, 4) if spec["name"] in ("grad_ascent", "npo") else (2,)
    for accum in accums:
        got, g_got = _step(m.objective(s["graphdef"], s["config"]), s["policy"], batch, accum)
        np.testing.assert_allclose(got["loss"], f_val + r_val, rtol=0,
                                   atol=1e-5 * (abs(f_val) + abs(r_val)))
        np.testing.assert_allclose(m.gamma * got["forget_loss"], f_val, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(m.alpha * got["retain_loss"], r_val, rtol=1e-5, atol=1e-7)
        scale = _max_abs(f_grad) + _max_abs(r_grad)
        for g, a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(f_grad),
                           jax.tree.leaves(r_grad)):
            np.testing.assert_allclose(g, a + b, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("spec", [{"name": "grad_ascent"}, {"name": "wga"}], ids=_id)
def test_a_mean_of_micro_batch_means_would_differ(method_setup, spec):
    """The test above bites: averaging the two micro-batches' own token means (the old
    step) misses the whole batch's loss by far more than its bound."""
    s = method_setup
    m = methods.get_method(spec)
    batch = _batch(s, _cache(m, s))
    objective = m.objective(s["graphdef"], s["config"])
    whole = float(objective_value(objective, s["policy"], batch)[0])
    halves = [jax.tree.map(lambda x, i=i: x[4 * i:4 * (i + 1)], batch) for i in (0, 1)]
    mean_of_means = np.mean([float(objective_value(objective, s["policy"], h)[0])
                             for h in halves])
    assert abs(mean_of_means - whole) > 100 * 1e-5 * abs(whole)


# ------------------------------------------------------------------------------ the reference cache

AUTO_CASES = [{"name": "undial", "beta": 3.0, "alpha": 0.5, "retain_loss": "kl"},
              {"name": "rkld", "teacher_alpha": 2.0},
              {"name": "npo", "beta": 0.3, "alpha": 0.5, "retain_loss": "kl"}]


def _build(m, s, **kw):
    return runner.build_cache(m, s["graphdef"], s["ref"], s["config"], s["data"], np.arange(8),
                              batch_size=8,
                              strengthened=s["policy"] if m.name == "rkld" else None, **kw)


@pytest.mark.parametrize("spec", AUTO_CASES, ids=_id)
def test_default_cache_is_the_full_vocabulary_and_gives_the_live_teacher_gradient(
        method_setup, spec):
    """With ``ref_top_k`` left to the cache and memory to spare, the cached teacher is the
    whole distribution: the UNDIAL / RKLD / KL objective's gradient equals the one with
    the teacher computed on the fly from the frozen weights (``_by_hand``)."""
    s = method_setup
    m = methods.get_method(spec)
    assert m.ref_top_k is None
    built = _build(m, s)
    info = built.info
    assert info["distribution"] == "full" and info["chosen_by"] == "auto"
    positions = 8 * 16 * ((m.name != "npo") + (m.retain_loss == "kl"))  # forget, retain dists
    assert info["full_vocabulary_bytes"] == positions * s["config"].vocab_size * 4
    assert all(t == {"mean": 0.0, "max": 0.0} for t in info["tail_mass"].values())
    rows = np.arange(8)
    batch = _batch(s, built.rows(rows, rows))
    objective = m.objective(s["graphdef"], s["config"])
    got = jax.grad(lambda p: objective_value(objective, p, batch)[0])(s["policy"])
    want = jax.grad(lambda p: _by_hand(m, s, batch["cache"], policy=p))(s["policy"])
    scale = _max_abs(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0, atol=1e-5 * scale)


def _numpy_tail_mass(logits, labels, mask, k):
    """1 - the probability of the k tokens kept (the label and the k - 1 likeliest others)."""
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    score = logp.copy()
    np.put_along_axis(score, labels[..., None], np.inf, -1)
    kept = np.argsort(-score, -1)[..., :k]
    tail = 1.0 - np.exp(np.take_along_axis(logp, kept, -1)).sum(-1)
    on = np.asarray(mask) > 0
    return tail[on]


def test_truncated_cache_records_the_teacher_tail_mass(method_setup, monkeypatch):
    s = method_setup
    m = methods.get_method({"name": "undial", "alpha": 1.0, "retain_loss": "kl"})
    # Auto: the full vocabulary when it fits the budget, else AUTO_TOP_K tokens.
    assert runner.choose_top_k(None, 100, 100) == 0
    assert runner.choose_top_k(None, 101, 100) == methods.AUTO_TOP_K
    assert runner.choose_top_k(7, 1, 100) == 7 and runner.choose_top_k(0, 10 ** 12, 1) == 0
    monkeypatch.setattr(runner, "AUTO_TOP_K", 5)  # below the tiny model's 23 tokens
    assert _build(m, s, memory_budget=10 ** 9).info["distribution"] == "full"
    info = _build(m, s, memory_budget=100).info
    assert info["distribution"] == "top_k" and info["top_k"] == 5 and info["chosen_by"] == "auto"
    for name, batch in (("forget_dist", s["forget"]["answer"]), ("retain_dist", s["retain"])):
        want = _numpy_tail_mass(_logits(s, s["ref"], batch), np.asarray(batch.labels),
                                batch.loss_mask, 5)
        got = info["tail_mass"][name]
        assert want.mean() > 0.05  # enough mass outside the 5 tokens for the check to bite
        np.testing.assert_allclose(got["mean"], want.mean(), rtol=1e-4)
        np.testing.assert_allclose(got["max"], want.max(), rtol=1e-4)
    forced = _build(dataclasses.replace(m, ref_top_k=5), s).info
    assert forced["chosen_by"] == "method.ref_top_k" and forced["top_k"] == 5


def test_rmu_layer_default_is_open_unlearnings_block_7():
    """Block 7 whenever the model has one past it (open-unlearning's module_regex
    model.layers.7); shallower models: num_layers // 2 - 1, at least 0."""
    m = methods.get_method("rmu")
    for depth, want in ((32, 7), (16, 7), (8, 7), (7, 2), (4, 1), (2, 0), (1, 0)):
        config = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=32,
                             num_layers=depth, num_heads=2, num_kv_heads=1)
        assert m.hidden_layer(config) == want, depth
        assert m.cache_spec(config).hidden_layer == want
    assert methods.get_method({"name": "rmu", "layer": 3}).hidden_layer(config) == 3


def test_rmu_objective_is_the_per_sequence_mean_by_numpy(method_setup):
    """RMU's loss by NumPy from the model's block-0 activations: per sequence the mean over
    its answer-input positions of mean_d (h - c)^2, then the mean over the 8 sequences
    (their 1-9 answer tokens make this differ from a token mean)."""
    s = method_setup
    m = methods.get_method({"name": "rmu", "steering_coeff": 5.0, "alpha": 2.0})
    cache = _cache(m, s)
    loss, metrics = objective_value(m.objective(s["graphdef"], s["config"]), s["policy"],
                                    _batch(s, cache))

    def np_term(batch, target):
        h = np.asarray(_out(s, s["policy"], batch, 0).hidden, np.float64)
        on = _answer_inputs(batch.loss_mask) > 0
        sq = ((h - target) ** 2).mean(-1)
        return np.mean([sq[b][on[b]].mean() for b in range(h.shape[0])])

    forget = np_term(s["forget"]["answer"], np.asarray(cache["control"][0], np.float64))
    retain = np_term(s["retain"], np.asarray(_out(s, s["ref"], s["retain"], 0).hidden,
                                             np.float64))
    np.testing.assert_allclose(float(metrics["forget_loss"]), forget, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["retain_loss"]), retain, rtol=1e-5)
    np.testing.assert_allclose(float(loss), m.gamma * forget + m.alpha * retain, rtol=1e-5)
