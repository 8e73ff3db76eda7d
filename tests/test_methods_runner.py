"""The shared gradient loop (``jaxunlearn.methods.runner``) on a tiny trained target.

Every gradient method forgets; the mesh, the padding-free layout and gradient
accumulation change the arithmetic, not the run; the reference cache equals the live
reference (values and gradients), and RKLD's cached teacher lowers exactly what its
strengthened model raised. The target is ``conftest.toy_target``: a 1-layer Llama
trained to recall 24 toy private facts; 4 people (8 answers) are forgotten, 8 retained.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import losses, methods
from jaxunlearn.config import TrainConfig
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.forget_retain import PairedSchedule, prepare_data
from jaxunlearn.methods import runner
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import OptimizerConfig, objective_value

NPO_SPEC = {"name": "npo", "retain_loss": "kl", "ref_top_k": 8, "weighting": "memorization"}


def _train(steps=5, lr=3e-3, **kw):
    return TrainConfig(steps=steps, batch_size=8, log_every=1, **kw, optimizer=OptimizerConfig(
        learning_rate=lr, weight_decay=0.0, schedule="constant"))


@pytest.fixture(scope="module")
def npo_one_device(toy_target):
    """NPO with a top-k KL retain term and memorisation weights, on one device (shared by
    the forgetting test and the mesh test, to compile it once)."""
    model, tok, forget, retain, _, _ = toy_target
    return runner.unlearn_model(model, tok, forget, retain, NPO_SPEC, _train(), seed=0,
                                max_len=64)


# ------------------------------------------------------------------------------ forgetting

# Methods with a retain term must hurt the retain set less than the forget set, and keep
# its answer probability within this factor of the target's (the toy facts share digits
# and templates, so some collateral damage is expected).
RETAIN_FACTOR = 10.0


@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu",
                                  "undial", "wga", "rkld"])
def test_each_method_lowers_the_forget_answer_probability(toy_target, answer_prob, request, name):
    model, tok, forget, retain, _, _ = toy_target
    f0, r0 = answer_prob(model, tok, forget), answer_prob(model, tok, retain)
    assert f0 > 0.5 and r0 > 0.5, f"the target must know the toy facts ({f0:.3f}, {r0:.3f})"
    if name == "npo":
        res = request.getfixturevalue("npo_one_device")
    else:
        spec = {"name": name, "strengthen_learning_rate": 1e-2} if name == "rkld" else name
        res = runner.unlearn_model(model, tok, forget, retain, spec, _train(), seed=0,
                                   max_len=64)
    f1, r1 = answer_prob(res.model, tok, forget), answer_prob(res.model, tok, retain)
    print(f"\n{name}: forget prob {f0:.3f} -> {f1:.3f} ({f1 / f0:.2f}x), "
          f"retain prob {r0:.3f} -> {r1:.3f} ({r1 / r0:.2f}x)")
    assert f1 < f0
    assert len(res.history) == 5 and {"loss", "forget_prob", "retain_prob"} <= set(res.history[0])
    assert answer_prob(model, tok, forget) == f0, "the target itself must be left untouched"
    if name in ("grad_diff", "npo", "simnpo", "rkld"):
        assert r1 / r0 > f1 / f0, "retain answers must suffer less than forget answers"
        assert r1 > r0 / RETAIN_FACTOR


# ------------------------------------------------------------------------------ same run


def _host_model(model):
    """``model`` with its weights gathered onto one device (as if trained there)."""
    graphdef, params = nnx.split(model, nnx.Param)
    return nnx.merge(graphdef, jax.device_put(jax.device_get(params)))


@functools.partial(jax.jit, static_argnums=0)
def _prob_gradient(graphdef, params, b):
    """``d answer_prob / d theta`` (the conftest quantity, in jnp float32)."""

    def prob(p):
        logp = jax.nn.log_softmax(nnx.merge(graphdef, p)(b.input_ids, b.attention_mask), -1)
        tok_lp = jnp.take_along_axis(logp, b.labels[..., None], -1)[..., 0]
        return jnp.mean(jnp.exp((tok_lp * b.loss_mask).sum(-1) / b.loss_mask.sum(-1)))

    return jax.grad(prob)(params)


def _answer_prob_sensitivity(model, tok, records):
    """``|d answer_prob / d theta|`` per weight."""
    b = batch_lib.collate(batch_lib.encode_qa_records(tok, records), 32, tok.pad_token_id)
    graphdef, params = nnx.split(model, nnx.Param)
    return jax.tree.map(jnp.abs, _prob_gradient(graphdef, params, b))


def _assert_same_run(got, expected, tok, forget, retain, answer_prob):
    """Histories equal to 1e-5 (relative); final answer probabilities within what the two
    models' weight differences can move them.

    Both models are evaluated on one device, so the evaluation itself rounds alike; the
    weights differ at float32 rounding level (sums reduced in another order), by
    ``d theta``, and the answer probability then by at most ``sum_i |dp/dtheta_i| |d theta_i|``
    to first order (doubled for the second-order remainder), plus float32 rounding of
    the forward pass at the two weight vectors (``2 eps_32`` relative).
    """
    for key in ("loss", "forget_prob", "retain_prob", "grad_norm"):
        np.testing.assert_allclose([h[key] for h in got.history],
                                   [h[key] for h in expected.history], rtol=1e-5, atol=1e-5)
    a, b = _host_model(got.model), _host_model(expected.model)
    delta = jax.tree.map(lambda x, y: jnp.abs(x - y), nnx.state(a, nnx.Param),
                         nnx.state(b, nnx.Param))
    for records in (forget, retain):
        sens = _answer_prob_sensitivity(b, tok, records)
        first_order = sum(float(jnp.sum(s * d)) for s, d in zip(jax.tree.leaves(sens),
                                                                 jax.tree.leaves(delta)))
        p = answer_prob(b, tok, records)
        bound = 2.0 * first_order + 2.0 * np.finfo(np.float32).eps * p
        assert abs(answer_prob(a, tok, records) - p) <= bound, (answer_prob(a, tok, records), p,
                                                                 bound)


def test_one_device_equals_eight_simulated_devices(toy_target, npo_one_device, answer_prob):
    model, tok, forget, retain, _, _ = toy_target
    one = npo_one_device
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    eight = runner.unlearn_model(model, tok, forget, retain, NPO_SPEC, _train(), seed=0,
                                 max_len=64, mesh=mesh)
    _assert_same_run(eight, one, tok, forget, retain, answer_prob)
    # Adam divides each element's step by its own gradient scale (sqrt of its second
    # moment), so an element whose gradient sits at rounding level takes a step of up to
    # one learning rate in a direction the rounding decides: such elements may differ by
    # up to one step; they are rare (at most 0.1 %), every other weight agrees to a
    # twentieth of a step.
    lr = _train().optimizer.learning_rate
    p1, p8 = nnx.state(one.model, nnx.Param), nnx.state(eight.model, nnx.Param)
    diff = np.concatenate([np.abs(np.asarray(b) - np.asarray(a)).ravel()
                           for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8))])
    assert diff.max() <= lr
    assert np.mean(diff > 0.05 * lr) <= 1e-3
    assert any(x.sharding.spec and "fsdp" in x.sharding.spec for x in jax.tree.leaves(p8))


def test_padding_free_equals_padded(toy_target, npo_one_device, answer_prob):
    """``train.padding_free`` (the default) changes the arithmetic, not the run."""
    model, tok, forget, retain, _, _ = toy_target
    padded = runner.unlearn_model(model, tok, forget, retain, NPO_SPEC,
                                  _train(padding_free=False), seed=0, max_len=64)
    _assert_same_run(npo_one_device, padded, tok, forget, retain, answer_prob)


def test_grad_accum_equals_one_batch_of_the_same_rows(toy_target, answer_prob):
    """Issue 18's measurement as a test: 3 SGD updates of 8 rows as 1 x 8 and as 4 x 2
    micro-batches (PIN answers are shorter than city answers: unequal token counts)."""
    model, tok, forget, retain, _, _ = toy_target
    sgd = OptimizerConfig(optimizer="sgd", learning_rate=0.05, schedule="constant",
                          weight_decay=0.0, clip_norm=None)
    runs = {}
    for rows, accum in ((8, 1), (2, 4)):
        train = TrainConfig(steps=3, batch_size=rows, grad_accum=accum, optimizer=sgd)
        runs[accum] = runner.unlearn_model(model, tok, forget, retain, "grad_diff", train,
                                           seed=0, max_len=64)
    for accum in (4,):
        _assert_same_run(runs[accum], runs[1], tok, forget, retain, answer_prob)
        # SGD: the update is the gradient times the rate; compare it with its own scale.
        base = nnx.state(model, nnx.Param)
        u1 = [np.asarray(w) - np.asarray(w0) for w, w0 in
              zip(jax.tree.leaves(nnx.state(runs[1].model, nnx.Param)), jax.tree.leaves(base))]
        uk = [np.asarray(w) - np.asarray(w0) for w, w0 in
              zip(jax.tree.leaves(nnx.state(runs[accum].model, nnx.Param)),
                  jax.tree.leaves(base))]
        scale = max(float(np.abs(u).max()) for u in u1)
        for a, b in zip(uk, u1):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("micro_rows,groups,accum", [(4, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_run_compactions_cover_every_micro_batch_of_the_run(toy_target, micro_rows, groups,
                                                            accum):
    model, tok, forget, retain, _, _ = toy_target
    data = prepare_data(tok, forget, retain, views=("answer", "idk"), max_len=64)
    sched = PairedSchedule(n_forget=len(forget), n_retain=len(retain), rows=micro_rows * accum,
                           seed=3)
    plans, retain_plan = runner.run_compactions(data, sched, 2, micro_rows=micro_rows,
                                                groups=groups)
    assert set(plans) == {"answer", "idk"}
    # Independently: collate every micro-batch and count its masks per row block.
    need = {}
    for epoch in range(2):
        for f_idx, r_idx in zip(sched.forget_rows(epoch), sched.retain_rows(epoch)):
            for a in range(accum):
                part = slice(a * micro_rows, (a + 1) * micro_rows)
                views = {v: [enc[i] for i in f_idx[part]] for v, enc in data.forget.items()}
                views["retain"] = [data.retain[i] for i in r_idx[part]]
                for v, seqs in views.items():
                    b = batch_lib.collate(seqs, 64, 0)
                    for field, mask in (("tokens", b.attention_mask), ("labels", b.loss_mask)):
                        counts = mask.reshape(groups, -1).sum(axis=1)
                        need[v, field] = max(need.get((v, field), 0), int(counts.max()))
    for v, plan in {**plans, "retain": retain_plan}.items():
        assert plan.groups == groups
        for field in ("tokens", "labels"):
            assert getattr(plan, field) == -(-need[v, field] // 8) * 8, (v, field)


# ------------------------------------------------------------------------------ the cache


def _cache(method, s):
    rows = np.arange(8)
    c = runner.build_cache(method, s["graphdef"], s["ref"], s["config"], s["data"], rows,
                           batch_size=8,
                           strengthened=s["policy"] if method.name == "rkld" else None)
    return c.rows(rows, rows)


def _logits(s, params, batch):
    return nnx.merge(s["graphdef"], params)(batch.input_ids, batch.attention_mask)


def test_cached_reference_equals_live_reference_value_and_grads(method_setup):
    s = method_setup
    m = methods.get_method({"name": "npo", "beta": 0.2, "retain_loss": "kl", "ref_top_k": 0})
    cache = _cache(m, s)
    batch = {"forget": s["forget"], "retain": s["retain"], "cache": cache}
    objective = m.objective(s["graphdef"], s["config"])
    cached = jax.value_and_grad(lambda p: objective_value(objective, p, batch)[0])(s["policy"])
    fb, retain = s["forget"]["answer"], s["retain"]

    def seq_logp(p):
        return losses.sequence_logprob(_logits(s, p, fb), fb.labels, fb.loss_mask)

    def live(p):  # the reference model kept in memory and run at every step
        ref = jax.lax.stop_gradient(s["ref"])
        return (losses.npo(seq_logp(p), seq_logp(ref), 0.2)
                + losses.forward_kl(_logits(s, p, retain), _logits(s, ref, retain),
                                    retain.loss_mask))

    want = jax.value_and_grad(live)(s["policy"])
    np.testing.assert_allclose(float(cached[0]), float(want[0]), rtol=1e-6)
    # The policy's log-probs come from the fused head here and from logits there: equal
    # up to float32 rounding of each gradient leaf's largest entries.
    for a, b in zip(jax.tree.leaves(cached[1]), jax.tree.leaves(want[1])):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-5 * np.abs(b).max())
    # The reference really differs from the policy (the log-ratio is not zero).
    lp = np.asarray(seq_logp(s["policy"]))
    assert np.abs(lp - cache["ref_logp"]["answer"]).min() > 1e-3


def test_rkld_teacher_only_lowers_tokens_the_strengthened_model_raised(method_setup):
    s = method_setup
    alpha = 1.5
    m = methods.get_method({"name": "rkld", "teacher_alpha": alpha, "ref_top_k": 0})
    teacher = np.asarray(_cache(m, s)["forget_dist"].logp, np.float64)
    fb = s["forget"]["answer"]
    orig = np.asarray(_logits(s, s["ref"], fb), np.float64)
    raised = np.asarray(_logits(s, s["policy"], fb), np.float64) - orig
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


def test_rkld_top_k_teacher_keeps_the_original_top_tokens(method_setup):
    s = method_setup
    m = methods.get_method({"name": "rkld", "teacher_alpha": 5.0, "ref_top_k": 4})
    dist = _cache(m, s)["forget_dist"]
    fb = s["forget"]["answer"]
    top1 = np.asarray(_logits(s, s["ref"], fb)).argmax(-1)
    assert np.all((np.asarray(dist.index) == top1[..., None]).any(-1))
    assert np.all((np.asarray(dist.index) == fb.labels[..., None]).any(-1))
    total = np.exp(np.asarray(dist.logp)).sum(-1) + np.exp(np.asarray(dist.tail))
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
