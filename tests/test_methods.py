"""The method registry and every method's objective, on a tiny random model.

Each objective is compared with the same composition written out here from
``jaxunlearn.losses`` and the model's forward pass, with the reference computed live
from a frozen copy of the weights; the cached reference (``unlearn.build_cache``) is
checked against that live reference (values and gradients); the top-k reference
against an independent NumPy computation.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from jaxunlearn import losses, methods, unlearn
from jaxunlearn.data.batch import Encoded, collate
from jaxunlearn.errors import UserError
from jaxunlearn.models import Llama, LlamaConfig

DESIGN_GRADIENT = ("grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu", "undial",
                   "wga", "rkld")
DESIGN_ALL = DESIGN_GRADIENT + ("newton", "fisher_removal", "fisher_forgetting", "sga", "tau",
                                "relearn")
CFG = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=1,
                  num_heads=2, num_kv_heads=1, tie_word_embeddings=True)
B, T = 4, 12


# ------------------------------------------------------------------------------ fixtures


def _encoded(rng, n):
    out = []
    for _ in range(n):
        prompt, answer = int(rng.integers(2, 5)), int(rng.integers(2, 6))
        ids = rng.integers(3, CFG.vocab_size, prompt + answer).astype(np.int32)
        counted = np.r_[np.zeros(prompt), np.ones(answer)].astype(np.float32)
        out.append(Encoded(ids, counted))
    return out


@pytest.fixture(scope="module")
def setup():
    """Reference (target) params, perturbed policy params, forget/idk/retain batches."""
    rng = np.random.default_rng(0)
    model = Llama(CFG, rngs=nnx.Rngs(0))
    graphdef, ref = nnx.split(model, nnx.Param)
    leaves, tree = jax.tree.flatten(ref)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    policy = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    enc = {"answer": _encoded(rng, B), "idk": _encoded(rng, B)}
    enc_retain = _encoded(rng, B)
    data = unlearn.Prepared(forget=enc, retain=enc_retain, t_forget=T, t_retain=T, pad_id=0)
    forget = {v: collate(e, T, 0) for v, e in enc.items()}
    retain = collate(enc_retain, T, 0)
    return graphdef, ref, policy, data, forget, retain


def _logits(graphdef, params, batch, layer=None):
    out = nnx.merge(graphdef, params).forward(batch.input_ids, batch.attention_mask,
                                              hidden_layer=layer)
    return out if layer is not None else out.logits


def _seq_logp(graphdef, params, batch):
    return losses.sequence_logprob(_logits(graphdef, params, batch), batch.labels,
                                   batch.loss_mask)


def _cache(method, setup):
    graphdef, ref, _, data, _, _ = setup
    c = unlearn.build_cache(method, graphdef, ref, CFG, data, np.arange(B), batch_size=B,
                            strengthened=setup[2] if method.name == "rkld" else None)
    return c.rows(np.arange(B), np.arange(B))


# ------------------------------------------------------------------------------ registry


def test_registry_names_are_design_names():
    names = methods.method_names()
    assert set(DESIGN_GRADIENT) <= set(names)
    assert set(names) <= set(DESIGN_ALL), "every registered name must be a DESIGN.md name"
    for name in DESIGN_GRADIENT:
        cfg = methods.get_method(name)
        assert cfg.name == name and cfg.kind == "gradient"
        assert isinstance(cfg, methods.GradientMethod) and cfg.reference
        assert cfg.to_dict()["name"] == name


def test_defaults_follow_open_unlearning_and_papers():
    g = methods.get_method
    assert (g("npo").beta, g("npo").alpha, g("npo").gamma) == (0.1, 1.0, 1.0)
    s = g("simnpo")
    assert (s.beta, s.delta, s.gamma, s.alpha) == (4.5, 0.0, 0.125, 1.0)
    assert (g("idk_dpo").beta, g("idk_dpo").retain_loss) == (0.1, "nll")
    assert (g("undial").beta, g("undial").alpha) == (10.0, 0.0)
    assert g("wga").beta == 1.0 and g("grad_ascent").alpha == 0.0 and g("grad_diff").alpha == 1.0
    r = g("rmu")
    assert (r.steering_coeff, r.retain_loss, r.hidden_layer(CFG)) == (2.0, "activation", 0)
    assert r.hidden_layer(dataclasses.replace(CFG, num_layers=4)) == 1
    assert r.hidden_layer(dataclasses.replace(CFG, num_layers=16)) == 7  # open-unlearning's
    assert g("npo").cache_spec(CFG).ref_logp_views == ("answer",)
    assert g("simnpo").cache_spec(CFG).ref_logp_views == ()  # reference-free
    assert g("rkld").cache_spec(CFG).forget_dist == "rkld_teacher"


def test_yaml_values_are_coerced_and_frozen():
    m = methods.get_method({"name": "npo", "beta": 1, "alpha": 0})
    assert isinstance(m.beta, float) and m.beta == 1.0 and m.alpha == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.beta = 2.0
    assert methods.get_method(m) is m


@pytest.mark.parametrize("spec, needle", [
    ({"name": "npo", "beta": -0.1}, "method.beta"),
    ({"name": "npo", "beta": 0.0}, "method.beta"),
    ({"name": "grad_diff", "alpha": -1}, "method.alpha"),
    ({"name": "simnpo", "gamma": -2.0}, "method.gamma"),
    ({"name": "simnpo", "delta": -0.5}, "method.delta"),
    ({"name": "undial", "beta": -1}, "method.beta"),
    ({"name": "wga", "beta": "high"}, "method.beta"),
    ({"name": "npo", "beta": True}, "method.beta"),
    ({"name": "npo", "beta": float("nan")}, "method.beta"),
    ({"name": "npo", "betta": 0.1}, "method.betta"),
    ({"name": "npo", "retain_loss": "mse"}, "method.retain_loss"),
    ({"name": "npo", "weighting": "loudest"}, "method.weighting"),
    ({"name": "rmu", "steering_coeff": 0}, "method.steering_coeff"),
    ({"name": "rmu", "layer": -1}, "method.layer"),
    ({"name": "rkld", "teacher_alpha": -1}, "method.teacher_alpha"),
    ({"name": "rkld", "strengthen_epochs": 0}, "method.strengthen_epochs"),
    ({"name": "rkld", "ref_top_k": -3}, "method.ref_top_k"),
    ({"beta": 0.1}, "method.name"),
])
def test_bad_hyper_parameters_are_named(spec, needle):
    with pytest.raises(methods.MethodError, match=needle.replace(".", r"\.")):
        methods.get_method(spec)


def test_unknown_method_lists_known_names_and_is_a_user_error():
    with pytest.raises(methods.MethodError) as e:
        methods.get_method({"name": "forgetall"})
    assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)
    for name in DESIGN_GRADIENT:
        assert name in str(e.value)


def test_rmu_layer_checked_against_the_model():
    with pytest.raises(methods.MethodError, match=r"method\.layer"):
        methods.get_method({"name": "rmu", "layer": 1}).check_model(CFG)


# ------------------------------------------------------------------------------ objectives


def _by_hand(m, setup, cache):
    """The method's loss written out from losses + forward passes, reference LIVE."""
    graphdef, ref, policy, _, forget, retain = setup
    fb = forget["answer"]
    sg = jax.lax.stop_gradient
    lp = _seq_logp(graphdef, policy, fb)
    lp_ref = _seq_logp(graphdef, sg(ref), fb)
    n = losses.sequence_token_counts(fb.loss_mask)
    logits = _logits(graphdef, policy, fb)
    name = m.name
    if name in ("grad_ascent", "grad_diff"):
        forget_term = losses.gradient_ascent(logits, fb.labels, fb.loss_mask)
    elif name == "npo":
        forget_term = losses.npo(lp, lp_ref, m.beta)
    elif name == "simnpo":
        forget_term = losses.simnpo(lp, n, m.beta, m.delta)
    elif name == "idk_dpo":
        ib = forget["idk"]
        forget_term = losses.dpo(_seq_logp(graphdef, policy, ib), lp,
                                 _seq_logp(graphdef, sg(ref), ib), lp_ref, m.beta)
    elif name == "rmu":
        hidden = _logits(graphdef, policy, fb, 0).hidden
        forget_term = losses.rmu_forget(hidden, cache["control"][0], fb.loss_mask)
    elif name == "undial":
        forget_term = losses.undial(logits, _logits(graphdef, sg(ref), fb), fb.labels,
                                    fb.loss_mask, m.beta)
    elif name == "wga":
        forget_term = losses.wga(logits, fb.labels, fb.loss_mask, m.beta)
    elif name == "rkld":
        teacher = losses.rkld_teacher(_logits(graphdef, sg(ref), fb),
                                      _logits(graphdef, sg(policy), fb), m.teacher_alpha)
        forget_term = losses.reverse_kl(logits, teacher, fb.loss_mask)
    r_logits = _logits(graphdef, policy, retain)
    if m.retain_loss == "nll":
        retain_term = losses.token_nll(r_logits, retain.labels, retain.loss_mask)
    elif m.retain_loss == "kl":
        retain_term = losses.forward_kl(r_logits, _logits(graphdef, sg(ref), retain),
                                        retain.loss_mask)
    else:
        retain_term = losses.rmu_retain(_logits(graphdef, policy, retain, 0).hidden,
                                        _logits(graphdef, sg(ref), retain, 0).hidden,
                                        retain.loss_mask)
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


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s['name']}-{s.get('retain_loss', '')}")
def test_objective_equals_losses_composed_by_hand(setup, spec):
    graphdef, _, policy, _, forget, retain = setup
    m = methods.get_method(spec)
    cache = _cache(m, setup)
    loss, metrics = m.objective(graphdef, CFG)(policy, forget, retain, cache)
    want = _by_hand(m, setup, cache)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5, atol=1e-6)
    assert set(metrics) >= {"forget_loss", "retain_loss", "forget_prob", "retain_prob"}
    # forget_prob is TOFU's per-token probability, computed here with NumPy.
    logits = np.asarray(_logits(graphdef, policy, forget["answer"]), np.float64)
    fb = forget["answer"]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    tok = np.take_along_axis(logits, fb.labels[..., None], -1)[..., 0] - lse
    per_token = np.exp((tok * fb.loss_mask).sum(-1) / fb.loss_mask.sum(-1))
    np.testing.assert_allclose(float(metrics["forget_prob"]), per_token.mean(), rtol=1e-5)


@pytest.mark.parametrize("spec", [c for c in CASES if c["name"] in
                                  ("grad_diff", "npo", "simnpo", "idk_dpo")],
                         ids=lambda s: s["name"])
def test_fused_label_logprob_gradients_equal_autodiff_through_logits(setup, spec):
    # ModelOutput takes label log-probs from jaxunlearn.ops (its own derivative rule);
    # the by-hand loss differentiates log_softmax of the full logits with plain autodiff.
    graphdef, _, policy, _, forget, retain = setup
    m = methods.get_method(spec)
    cache = _cache(m, setup)
    got = jax.grad(lambda p: m.objective(graphdef, CFG)(p, forget, retain, cache)[0])(policy)
    want = jax.grad(lambda p: _by_hand(m, (*setup[:2], p, *setup[3:]), cache))(policy)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-6)


def test_memorization_weights_reweight_sequences(setup):
    graphdef, ref, policy, _, forget, retain = setup
    m = methods.get_method({"name": "npo", "beta": 0.5, "alpha": 0.0,
                            "weighting": "memorization"})
    cache = _cache(m, setup)
    fb = forget["answer"]
    lp_ref = np.asarray(_seq_logp(graphdef, ref, fb), np.float64)
    n = np.asarray(fb.loss_mask.sum(-1), np.float64)
    w = np.exp(lp_ref / n)
    np.testing.assert_allclose(cache["weight"], w, rtol=1e-5)
    # NumPy NPO per sequence: -(2/beta) log sigmoid(-beta (lp - lp_ref)).
    lp = np.asarray(_seq_logp(graphdef, policy, fb), np.float64)
    per_seq = (2 / 0.5) * np.logaddexp(0.0, 0.5 * (lp - lp_ref))
    loss, _ = m.objective(graphdef, CFG)(policy, forget, retain, cache)
    np.testing.assert_allclose(float(loss), (w * per_seq).sum() / w.sum(), rtol=1e-5)
    assert not np.allclose(w, w[0]), "weights must actually differ for this test to bite"


def test_cached_reference_equals_live_reference_value_and_grads(setup):
    graphdef, ref, policy, _, forget, retain = setup
    m = methods.get_method({"name": "npo", "beta": 0.2, "retain_loss": "kl", "ref_top_k": 0})
    cache = _cache(m, setup)
    objective = m.objective(graphdef, CFG)
    cached = jax.value_and_grad(lambda p: objective(p, forget, retain, cache)[0])(policy)

    def live(p):  # the reference model kept in memory and run at every step
        fb = forget["answer"]
        lp_ref = _seq_logp(graphdef, jax.lax.stop_gradient(ref), fb)
        r_ref = _logits(graphdef, jax.lax.stop_gradient(ref), retain)
        return (losses.npo(_seq_logp(graphdef, p, fb), lp_ref, 0.2)
                + losses.forward_kl(_logits(graphdef, p, retain), r_ref, retain.loss_mask))

    want = jax.value_and_grad(live)(policy)
    np.testing.assert_allclose(float(cached[0]), float(want[0]), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(cached[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    # The reference really differs from the policy (the log-ratio is not zero).
    lp = np.asarray(_seq_logp(graphdef, policy, forget["answer"]))
    assert np.abs(lp - cache["ref_logp"]["answer"]).min() > 1e-3


def test_objective_jit_equals_no_jit(setup):
    graphdef, _, policy, _, forget, retain = setup
    m = methods.get_method({"name": "idk_dpo", "beta": 0.3})
    cache = _cache(m, setup)
    fn = m.objective(graphdef, CFG)
    eager, _ = fn(policy, forget, retain, cache)
    jitted, _ = jax.jit(fn)(policy, forget, retain, cache)
    np.testing.assert_allclose(float(jitted), float(eager), rtol=1e-6)


@pytest.mark.parametrize("spec", [{"name": "undial", "alpha": 1.0, "retain_loss": "kl"},
                                  {"name": "npo", "alpha": 1.0}], ids=lambda s: s["name"])
def test_extra_padding_changes_nothing(setup, spec):
    """Masking == slicing: 8 more padding columns (and a top-k cache) give the same loss."""
    graphdef, ref, policy, data, forget, retain = setup
    m = methods.get_method({**spec, "ref_top_k": 5})
    wide = unlearn.Prepared(data.forget, data.retain, T + 8, T + 8, data.pad_id)
    c_narrow = _cache(m, setup)
    c_wide = unlearn.build_cache(m, graphdef, ref, CFG, wide, np.arange(B), batch_size=B
                                 ).rows(np.arange(B), np.arange(B))
    def pad(b):
        return jax.tree.map(lambda x: np.pad(x, ((0, 0), (0, 8))), b)

    fn = m.objective(graphdef, CFG)
    narrow, _ = fn(policy, forget, retain, c_narrow)
    wide_loss, _ = fn(policy, {v: pad(b) for v, b in forget.items()}, pad(retain), c_wide)
    np.testing.assert_allclose(float(wide_loss), float(narrow), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ top-k references


def _numpy_coarse(logp, labels, k):
    """Top-k (label forced in) + tail, with NumPy: returns (index sets, kept logp, tail)."""
    scores = np.where(np.arange(logp.shape[-1]) == labels[..., None], np.inf, logp)
    idx = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
    kept = np.take_along_axis(logp, idx, -1)
    tail = np.log1p(-np.exp(kept).sum(-1).clip(max=1 - 1e-15))
    return idx, kept, tail


def test_top_k_reference_matches_numpy_and_bounds_the_full_kl():
    rng = np.random.default_rng(3)
    V, K = 30, 6
    ref_logits = rng.normal(size=(2, 5, V)) * 2.0
    logits = rng.normal(size=(2, 5, V))
    labels = rng.integers(0, V, (2, 5)).astype(np.int32)
    mask = np.ones((2, 5), np.float32)
    mask[1, 3:] = 0
    ref_logp = jax.nn.log_softmax(jnp.asarray(ref_logits, jnp.float32))
    dist = methods.compress_logprobs(ref_logp, jnp.asarray(labels), K)
    idx, kept, tail = _numpy_coarse(np.asarray(ref_logp, np.float64), labels, K)
    assert np.all(np.sort(np.asarray(dist.index), -1) == np.sort(idx, -1))
    assert np.all((np.asarray(dist.index) == labels[..., None]).any(-1)), "label always kept"
    np.testing.assert_allclose(np.sort(np.asarray(dist.logp), -1), np.sort(kept, -1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(dist.tail), tail, atol=1e-5)
    # Coarse KL by NumPy: KL between the (K + 1)-outcome distributions.
    lq = np.asarray(jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)), np.float64)
    q_kept = np.take_along_axis(lq, idx, -1)
    q_tail = np.log1p(-np.exp(q_kept).sum(-1))
    kl = (np.exp(kept) * (kept - q_kept)).sum(-1) + np.exp(tail) * (tail - q_tail)
    want = (kl * mask).sum() / mask.sum()
    coarse = losses.forward_kl(methods.model_on_support(jnp.asarray(logits, jnp.float32), dist),
                               methods.ref_on_support(dist), mask)
    np.testing.assert_allclose(float(coarse), want, rtol=1e-4)
    full = losses.forward_kl(jnp.asarray(logits, jnp.float32), ref_logp, mask)
    assert float(coarse) <= float(full) + 1e-6  # data-processing inequality
    exact = methods.compress_logprobs(ref_logp, jnp.asarray(labels), V)  # K >= V: full
    assert exact.index is None
    same = losses.forward_kl(methods.model_on_support(jnp.asarray(logits, jnp.float32), exact),
                             methods.ref_on_support(exact), mask)
    np.testing.assert_allclose(float(same), float(full), rtol=1e-6)
    sup = methods.labels_on_support(jnp.asarray(labels), dist)
    assert np.all(np.take_along_axis(np.asarray(dist.index), np.asarray(sup)[..., None], -1)[..., 0]
                  == labels)


def test_coarse_kl_gradient():
    rng = np.random.default_rng(4)
    ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(2, 3, 12)), jnp.float32))
    dist = methods.compress_logprobs(ref, jnp.zeros((2, 3), jnp.int32), 4)
    mask = jnp.ones((2, 3))

    def f(logits):
        return losses.forward_kl(methods.model_on_support(logits, dist),
                                 methods.ref_on_support(dist), mask)

    check_grads(jax.jit(f), (jnp.asarray(rng.normal(size=(2, 3, 12)), jnp.float32),), order=1,
                modes=["rev"], atol=1e-2, rtol=1e-2)


# ------------------------------------------------------------------------------ RKLD teacher


def test_rkld_teacher_only_lowers_tokens_the_strengthened_model_raised(setup):
    graphdef, ref, strong, _, forget, _ = setup
    alpha = 1.5
    m = methods.get_method({"name": "rkld", "teacher_alpha": alpha, "ref_top_k": 0})
    teacher = np.asarray(_cache(m, setup)["forget_dist"].logp, np.float64)
    fb = forget["answer"]
    orig = np.asarray(_logits(graphdef, ref, fb), np.float64)
    raised = np.asarray(_logits(graphdef, strong, fb), np.float64) - orig
    orig_logp = orig - np.log(np.exp(orig).sum(-1, keepdims=True))
    # teacher_logp - orig_logp = -alpha * relu(raised) + (a per-position constant).
    real = fb.loss_mask > 0
    rel = (teacher - orig_logp)[real]
    rel = rel - (rel + alpha * np.maximum(raised[real], 0.0))[:, :1]
    np.testing.assert_allclose(rel, -alpha * np.maximum(raised[real], 0.0), atol=2e-5)
    up = raised[real] > 1e-3
    assert up.any() and (~up).any(), "the test needs raised and not-raised tokens"
    assert np.all(rel[up] < -1e-4), "tokens the strengthened model raised are lowered"
    np.testing.assert_allclose(rel[raised[real] <= 0], 0.0, atol=2e-5)  # the rest unchanged


def test_rkld_top_k_teacher_keeps_the_original_top_tokens(setup):
    graphdef, ref, _, _, forget, _ = setup
    m = methods.get_method({"name": "rkld", "teacher_alpha": 5.0, "ref_top_k": 4})
    dist = _cache(m, setup)["forget_dist"]
    fb = forget["answer"]
    orig = np.asarray(_logits(graphdef, ref, fb))
    top1 = orig.argmax(-1)
    assert np.all((np.asarray(dist.index) == top1[..., None]).any(-1))
    assert np.all((np.asarray(dist.index) == fb.labels[..., None]).any(-1))
    total = np.exp(np.asarray(dist.logp)).sum(-1) + np.exp(np.asarray(dist.tail))
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
