"""Registry entries newton / fisher_removal / fisher_forgetting (jaxunlearn.methods.secondorder).

Configs and their validation; the answer NLL against NumPy and micro-batched = whole batch;
one round of each update on a micro Llama against the dense NumPy solve built from the
model's Jacobian; and on a tiny model trained on synthetic people, Newton and Fisher
Removal (through ``methods.runner.unlearn_model``, as the CLI and the demo call them) lower the
forget answers' probability while the retain answers' stays within a stated factor.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.flatten_util import ravel_pytree

from _training import train_nll
from jaxunlearn import methods
from jaxunlearn.methods import curvature, runner
from jaxunlearn.methods import secondorder as so
from jaxunlearn.config import TrainConfig
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data import synthetic
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.models import Llama, LlamaConfig

MICRO = dict(vocab_size=11, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=2,
             num_kv_heads=1, max_position_embeddings=16, tie_word_embeddings=True)


# ------------------------------------------------------------------------------ configs


def test_registry_entries_and_defaults():
    names = methods.method_names()
    assert {"newton", "fisher_removal", "fisher_forgetting"} <= set(names)
    newton = methods.get_method("newton")
    assert isinstance(newton, so.Newton) and newton.kind == "procedure"
    assert (newton.curvature, newton.solver, newton.damping, newton.lr, newton.lr_scale) == (
        "gauss_newton", "cg", 0.01, None, 1.0)
    fr = methods.get_method({"name": "fisher_removal", "damping": 1, "retain_samples": 8})
    assert isinstance(fr, so.FisherRemoval) and fr.damping == 1.0 and fr.retain_samples == 8
    ff = methods.get_method({"name": "fisher_forgetting", "mu": 0, "noise_shape": "diagonal"})
    assert isinstance(ff, so.FisherForgetting) and ff.mu == 0.0 and ff.noise_shape == "diagonal"
    # The YAML form round-trips.
    for cfg in (newton, fr, ff):
        assert methods.get_method(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        newton.damping = 1.0


@pytest.mark.parametrize("spec, field", [
    ({"name": "newton", "damping": 0.0}, "method.damping"),
    ({"name": "newton", "lr": -0.1}, "method.lr"),
    ({"name": "newton", "lr_scale": 0}, "method.lr_scale"),
    ({"name": "newton", "retain_samples": 0}, "method.retain_samples"),
    ({"name": "newton", "rounds": 0}, "method.rounds"),
    ({"name": "newton", "passes": 0}, "method.passes"),
    ({"name": "newton", "micro_batch": 0}, "method.micro_batch"),
    ({"name": "newton", "curvature": "fisher"}, "method.curvature"),
    ({"name": "newton", "solver": "adam"}, "method.solver"),
    ({"name": "newton", "iterations": 0}, "method.iterations"),
    ({"name": "newton", "iterations": 2.5}, "method.iterations"),
    ({"name": "newton", "tol": -1e-3}, "method.tol"),
    ({"name": "newton", "lissa_scale": 0.0}, "method.lissa_scale"),
    ({"name": "fisher_removal", "curvature": "hessian"}, "method.curvature"),
    ({"name": "fisher_removal", "damping": "big"}, "method.damping"),
    ({"name": "fisher_forgetting", "mu": -1.0}, "method.mu"),
    ({"name": "fisher_forgetting", "sigma": -1.0}, "method.sigma"),
    ({"name": "fisher_forgetting", "noise_shape": "full"}, "method.noise_shape"),
])
def test_bad_hyper_parameters_name_the_field(spec, field):
    with pytest.raises(methods.MethodError, match=field.replace(".", r"\.")):
        methods.get_method(spec)


# ------------------------------------------------------------------------------ dense reference


def random_batch(rows, real, T, vocab, seed):
    """``rows`` rows of which the first ``real`` hold a prompt (masked) and an answer."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, T + 1)).astype(np.int32)
    mask = np.zeros((rows, T), np.float32)
    att = np.zeros((rows, T), np.int32)
    for r in range(real):
        n = int(rng.integers(T // 2, T + 1))
        att[r, :n] = 1
        mask[r, 2:n] = 1.0
    return batch_lib.Batch(ids[:, :-1], ids[:, 1:], mask, att)


def as_micro(b, c):
    return jax.tree.map(lambda x: x.reshape(-1, c, x.shape[-1]), b)


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def dense():
    """A micro Llama (P = 688), a forget batch (3 rows + 1 empty) and a retain batch (4 rows),
    and NumPy float64 pieces of the token-mean NLL built from the model's Jacobian ``J``:
    the forget gradient ``[P]``, per-example retain gradients ``[4, P]`` (each row's own
    token-mean NLL) and the retain Gauss-Newton matrix ``Jᵀ H_out J`` ``[P, P]`` with
    ``H_out = diag(w)(diag p − p pᵀ)`` per position."""
    graphdef, params = nnx.split(Llama(LlamaConfig(**MICRO), rngs=nnx.Rngs(3)), nnx.Param)
    forget = random_batch(4, 3, 6, 11, seed=1)  # row 3 is an empty padding row
    retain = random_batch(4, 4, 6, 11, seed=2)
    both = jax.tree.map(lambda f, r: np.concatenate([f, r]), forget, retain)
    flat, unravel = ravel_pytree(params)
    logits_fn = lambda f: nnx.merge(graphdef, unravel(f))(both.input_ids,  # noqa: E731
                                                          both.attention_mask)
    z = np.asarray(logits_fn(flat), np.float64)  # [8, T, V]
    jac = np.asarray(jax.jit(jax.jacfwd(logits_fn))(flat), np.float64)  # [8, T, V, P]
    prob = np.exp(np_log_softmax(z))
    resid = prob - np.eye(z.shape[-1])[both.labels]  # d(−log p_label)/dz
    mask = both.loss_mask
    f_mask, r_mask = mask * (np.arange(8) < 4)[:, None], mask * (np.arange(8) >= 4)[:, None]
    g_forget = np.einsum("bt,btv,btvp->p", f_mask / f_mask.sum(), resid, jac)
    w_ex = mask / np.maximum(mask.sum(-1), 1)[:, None]
    per_example = np.einsum("bt,btv,btvp->bp", w_ex, resid, jac)[4:]
    h_out = (np.einsum("btv,vu->btvu", prob, np.eye(z.shape[-1]))
             - np.einsum("btv,btu->btvu", prob, prob))
    h_jac = np.einsum("btvu,btup->btvp", h_out, jac)
    gn = np.einsum("bt,btvp,btvq->pq", r_mask / r_mask.sum(), jac, h_jac, optimize=True)
    lp = np.take_along_axis(np_log_softmax(z), both.labels[..., None], -1)[..., 0]
    nll_forget = -(lp * f_mask).sum() / f_mask.sum()
    return dict(graphdef=graphdef, params=params, forget=forget, retain=retain,
                theta=np.asarray(flat, np.float64), g_forget=g_forget, per_example=per_example,
                gn=gn, nll_forget=nll_forget)


def test_answer_nll_and_gauss_newton_on_micro_batches_match_numpy(dense):
    graphdef, params, forget, retain = (dense[k] for k in ("graphdef", "params", "forget",
                                                            "retain"))
    loss = curvature.answer_nll(graphdef)
    # [B, T] and [K, C, T] (the empty row in a micro-batch of its own) give the same NLL.
    assert float(loss(params, forget)) == pytest.approx(dense["nll_forget"], rel=1e-5)
    assert float(loss(params, as_micro(forget, 2))) == pytest.approx(dense["nll_forget"], rel=1e-5)
    grad = ravel_pytree(jax.jit(jax.grad(loss))(params, as_micro(forget, 2)))[0]
    np.testing.assert_allclose(grad, dense["g_forget"], rtol=0,
                               atol=1e-5 * np.abs(dense["g_forget"]).max())
    v = jax.tree.map(lambda x: jnp.ones_like(x) / 10, params)
    v_flat = np.asarray(ravel_pytree(v)[0], np.float64)
    gv = ravel_pytree(jax.jit(curvature.curvature_product(graphdef, "gauss_newton"))(
        params, as_micro(retain, 2), v))[0]
    want = dense["gn"] @ v_flat
    np.testing.assert_allclose(gv, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_power_iteration_estimates_the_largest_eigenvalue(dense):
    lam = 0.05
    top = np.linalg.eigvalsh(dense["gn"]).max() + lam
    gn = jnp.asarray(dense["gn"], jnp.float32)
    est = float(curvature.largest_eigenvalue(lambda v: {"x": gn @ v["x"]},
                                       {"x": jnp.zeros(gn.shape[0], jnp.float32)}, lam))
    # A Rayleigh quotient never exceeds λ_max; LiSSA's scale 2·est must exceed λ_max / 2.
    assert 0.5 * top < est <= top * (1 + 1e-5)


def run_update(method, dense, retain, lr, seed=0):
    fn = jax.jit(method.update_fn(dense["graphdef"]))
    new, info = fn(dense["params"], as_micro(dense["forget"], 2), retain, jax.random.key(seed),
                   jnp.float32(lr))
    return ravel_pytree(new)[0], info


def test_one_round_equals_the_dense_numpy_solve(dense):
    theta, g_forget, per_example = dense["theta"], dense["g_forget"], dense["per_example"]
    lr, lam = 0.3, 0.05
    eye = np.eye(theta.size)

    # newton (Gauss-Newton, CG to convergence): θ + η (G_R + λI)⁻¹ ∇loss(θ, F)
    newton = so.Newton(damping=lam, iterations=400, tol=1e-7, micro_batch=2)
    got, info = run_update(newton, dense, as_micro(dense["retain"], 2), lr)
    want = theta + lr * np.linalg.solve(dense["gn"] + lam * eye, g_forget)
    assert bool(info.solver_converged)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * np.abs(want - theta).max())
    assert float(info.forget_grad_norm) == pytest.approx(np.linalg.norm(g_forget), rel=1e-4)
    assert float(info.forget_loss) == pytest.approx(dense["nll_forget"], rel=1e-5)

    # LiSSA with its scale estimated by power iteration (λ large enough for 80 steps).
    lissa = so.Newton(solver="lissa", damping=2.0, iterations=80, tol=0.0, micro_batch=2)
    got_l, info_l = run_update(lissa, dense, as_micro(dense["retain"], 2), lr)
    want_l = theta + lr * np.linalg.solve(dense["gn"] + 2.0 * eye, g_forget)
    assert int(info_l.solver_iterations) == 80
    np.testing.assert_allclose(got_l, want_l, rtol=0, atol=1e-3 * np.abs(want_l - theta).max())

    # fisher_removal: θ + η (λI + (1/m) GᵀG)⁻¹ ∇loss(θ, F), G the per-example gradients
    fisher = so.FisherRemoval(damping=lam, micro_batch=2)
    got_fr, _ = run_update(fisher, dense, dense["retain"], lr)
    fim = lam * eye + per_example.T @ per_example / per_example.shape[0]
    want_fr = theta + lr * np.linalg.solve(fim, g_forget)
    np.testing.assert_allclose(got_fr, want_fr, rtol=0,
                               atol=2e-4 * np.abs(want_fr - theta).max())

    # fisher_forgetting with mu = 0 is fisher_removal (the noise is tested in
    # test_secondorder.py: covariance (μσ²)^{1/2} F^{-1/2}).
    quiet = so.FisherForgetting(damping=lam, micro_batch=2, mu=0.0, sigma=1.0)
    got_q, info_q = run_update(quiet, dense, dense["retain"], lr, seed=5)
    np.testing.assert_allclose(got_q, got_fr, rtol=1e-6, atol=1e-7)
    assert float(info_q.noise_norm) == 0.0


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def trained():
    """A 1-layer model trained on 4 synthetic people x 6 QA; forget = one person (6 QA)."""
    bench = synthetic.generate(synthetic.SyntheticConfig(
        num_people=4, num_holdout_people=1, qa_per_person=6, num_world_facts=1,
        canary_repetitions=(1,), canaries_per_repetition=1))
    forget, retain = list(bench.splits["forget10"]), list(bench.splits["retain90"])
    records = forget + retain
    tok = tok_lib.train_tokenizer([r["question"] + " " + r["answer"] for r in records] * 2,
                                  vocab_size=1500)
    model = Llama(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                              num_layers=1, num_heads=4, num_kv_heads=2,
                              max_position_embeddings=128, tie_word_embeddings=True),
                  rngs=nnx.Rngs(0))
    encoded = batch_lib.encode_qa_records(tok, records)
    model = train_nll(model, encoded, steps=150, learning_rate=3e-3, warmup_steps=10,
                      batch_size=8, seq_len=64)
    return model, tok, forget, retain


def answer_probs(model, tok, records):
    """Per-token answer probability ``exp(log p(y|x) / |y|)`` per record, in NumPy."""
    enc = batch_lib.encode_qa_records(tok, records)
    b = batch_lib.collate(enc, 64, 2)
    lp = np_log_softmax(model(b.input_ids, b.attention_mask))
    tok_lp = np.take_along_axis(lp, b.labels[..., None], -1)[..., 0] * b.loss_mask
    return np.exp(tok_lp.sum(-1) / b.loss_mask.sum(-1)), b.loss_mask.sum(-1)


def test_newton_and_fisher_removal_forget_and_keep_the_retain_set(trained):
    model, tok, forget, retain = trained
    p_forget, f_tokens = answer_probs(model, tok, forget)
    p_retain, r_tokens = answer_probs(model, tok, retain)
    before = {"forget": p_forget.mean(), "retain": p_retain.mean()}
    target = [np.asarray(x).copy() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
    # Hyper-parameters for this 1-layer, 24-record model (the defaults are tuned on the
    # benchmark's `small` model): more damping, as its forget/retain token ratio is ~1/3.
    specs = {"newton": {"name": "newton", "damping": 0.3, "rounds": 2},
             "fisher_removal": {"name": "fisher_removal", "damping": 0.3, "retain_samples": 16}}
    figures, histories = {"before": before}, {}
    for name, spec in specs.items():
        out = runner.unlearn_model(model, tok, forget, retain, spec, TrainConfig())
        after = {"forget": answer_probs(out.model, tok, forget)[0].mean(),
                 "retain": answer_probs(out.model, tok, retain)[0].mean()}
        figures[name], histories[name] = after, out.history
        assert out.history[-1]["forget_prob"] == pytest.approx(after["forget"], rel=1e-4)
    print("\nanswer probability (forget, retain):",
          {k: (round(float(v["forget"]), 3), round(float(v["retain"]), 3))
           for k, v in figures.items()})
    for name in specs:
        after = figures[name]
        assert after["forget"] < 0.7 * before["forget"], name
        assert after["retain"] > 0.85 * before["retain"], name  # the stated factor
        # Selective: the forget answers lose relatively more than the retain answers.
        assert after["forget"] / before["forget"] < after["retain"] / before["retain"], name
    # The target is untouched.
    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), target):
        np.testing.assert_array_equal(np.asarray(a), b)
    # Newton's two rounds remove chunk j (array_split: 3 + 3 records) with the
    # influence-function step η_j = N_tok(F_j) / N_tok(R ∪ F_{>j}) (lr_scale = 1).
    hist = histories["newton"]
    first, second = f_tokens[:3].sum(), f_tokens[3:].sum()
    assert [h["round"] for h in hist] == [0, 1]
    assert hist[0]["lr"] == pytest.approx(first / (r_tokens.sum() + second), rel=1e-6)
    assert hist[1]["lr"] == pytest.approx(second / r_tokens.sum(), rel=1e-6)
    assert hist[1]["forget_prob"] < hist[0]["forget_prob"] < before["forget"]
    assert histories["fisher_removal"][0]["solver_converged"] == 1.0  # finite Woodbury step


def test_more_rounds_than_forget_records_is_a_user_error(trained):
    model, tok, forget, retain = trained
    with pytest.raises(methods.MethodError, match=r"method\.rounds"):
        runner.unlearn_model(model, tok, forget, retain, {"name": "newton", "rounds": 7},
                             TrainConfig())
