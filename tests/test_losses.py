"""Tests for jaxunlearn.losses against independent NumPy / SciPy / PyTorch references.

Every batch is padded: prompt and padding positions (mask 0) hold garbage logits of
magnitude ~1e4 (and sometimes inf/NaN) and labels of -100, which must change nothing.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import torch
import torch.nn.functional as F
from jax.test_util import check_grads

from jaxunlearn import losses as L

B, T, V, D = 3, 6, 11, 8


# ---------------------------------------------------------------------------- fixtures


def make_batch(seed: int, garbage: float = 1e4):
    """logits [B,T,V] f32, labels [B,T] int32, mask [B,T] f32 with prompt + right padding."""
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(B, T, V))).astype(np.float32)
    labels = rng.integers(0, V, size=(B, T)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    mask[0, 1:5] = 1.0  # prompt of 1, answer of 4, 1 pad
    mask[1, 2:6] = 1.0  # prompt of 2, answer runs to the end
    mask[2, 0:2] = 1.0  # short answer, 4 pads
    pad = mask == 0
    logits[pad] = (garbage * rng.normal(size=(int(pad.sum()), V))).astype(np.float32)
    labels[2, 2:] = -100  # HF ignore index on padding
    return logits, labels, mask


def masked_positions(mask):
    return [(b, t) for b in range(mask.shape[0]) for t in range(mask.shape[1]) if mask[b, t]]


def np_log_softmax(x):
    return sps.log_softmax(np.asarray(x, np.float64), axis=-1)


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -np.asarray(x, np.float64))


def np_sequence_logprob(logits, labels, mask):
    out = np.zeros(mask.shape[0])
    for b, t in masked_positions(mask):
        out[b] += np_log_softmax(logits[b, t])[labels[b, t]]
    return out


def np_token_mean(per_token, mask):
    """Mean over masked (b, t) of per_token(b, t)."""
    pos = masked_positions(mask)
    return sum(per_token(b, t) for b, t in pos) / len(pos)


def np_kl(p_logits, q_logits):
    lp, lq = np_log_softmax(p_logits), np_log_softmax(q_logits)
    return float(np.sum(np.exp(lp) * (lp - lq)))


def np_undial_target(teacher, label, beta):
    z = np.asarray(teacher, np.float64).copy()
    z[label] -= beta
    return sps.softmax(z)


# ---------------------------------------------------------------------------- values vs NumPy


def test_token_logprobs_and_sequence_helpers_match_numpy():
    logits, labels, mask = make_batch(0)
    tok = np.asarray(L.token_logprobs(logits, labels))
    for b, t in masked_positions(mask):
        np.testing.assert_allclose(tok[b, t], np_log_softmax(logits[b, t])[labels[b, t]], rtol=1e-5)
    assert np.all(tok[2, 2:] == 0.0)  # -100 labels give 0, not NaN

    np.testing.assert_array_equal(L.sequence_token_counts(mask), [4.0, 4.0, 2.0])
    seq = np_sequence_logprob(logits, labels, mask)
    np.testing.assert_allclose(L.sequence_logprob(logits, labels, mask), seq, rtol=1e-5)
    np.testing.assert_allclose(L.sequence_mean_nll(logits, labels, mask), -seq / [4, 4, 2], rtol=1e-5)


def test_token_nll_and_gradient_ascent_match_numpy():
    logits, labels, mask = make_batch(1)
    ref = np_token_mean(lambda b, t: -np_log_softmax(logits[b, t])[labels[b, t]], mask)
    np.testing.assert_allclose(L.token_nll(logits, labels, mask), ref, rtol=1e-5)
    np.testing.assert_allclose(L.gradient_ascent(logits, labels, mask), -ref, rtol=1e-5)


def test_token_nll_hand_worked_uniform_and_empty_mask():
    labels = jnp.zeros((2, 3), jnp.int32)
    uniform = L.token_nll(jnp.zeros((2, 3, 7)), labels, jnp.ones((2, 3)))
    np.testing.assert_allclose(uniform, math.log(7), rtol=1e-6)
    assert float(L.token_nll(jnp.full((2, 3, 7), jnp.nan), labels, jnp.zeros((2, 3)))) == 0.0


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_npo_simnpo_dpo_match_numpy(beta):
    rng = np.random.default_rng(2)
    lp, ref, lp2, ref2 = (rng.normal(-20.0, 8.0, size=5) for _ in range(4))
    n = np.array([3.0, 7.0, 1.0, 12.0, 5.0])
    npo_ref = -(2 / beta) * np.mean(np_log_sigmoid(-beta * (lp - ref)))
    np.testing.assert_allclose(L.npo(lp, ref, beta), npo_ref, rtol=1e-5)
    sim_ref = -(2 / beta) * np.mean(np_log_sigmoid(beta * (-lp / n - 0.3)))
    np.testing.assert_allclose(L.simnpo(lp, n, beta, 0.3), sim_ref, rtol=1e-5)
    dpo_ref = -(2 / beta) * np.mean(np_log_sigmoid(beta * ((lp - ref) - (lp2 - ref2))))
    np.testing.assert_allclose(L.dpo(lp, lp2, ref, ref2, beta), dpo_ref, rtol=1e-5)


def test_preference_closed_forms():
    x = jnp.array([-3.0, -40.0, -0.5])
    for beta in (0.1, 1.0, 4.5):
        np.testing.assert_allclose(L.npo(x, x, beta), (2 / beta) * math.log(2), rtol=1e-6)
        # equal margins: both log-ratios are 1.7
        equal = L.dpo(x, x - 2.0, x - 1.7, x - 3.7, beta)
        np.testing.assert_allclose(equal, (2 / beta) * math.log(2), rtol=1e-5)
    # simnpo hand-worked: -logp/|y| = 1, beta = 1, delta = 0 -> 2 * log(1 + e^-1)
    hand = 2 * math.log1p(math.exp(-1))
    np.testing.assert_allclose(L.simnpo(jnp.array([-3.0]), jnp.array([3.0]), 1.0), hand, rtol=1e-6)
    # the |y| = 0 guard divides by 1 instead of 0
    assert np.isfinite(float(L.simnpo(jnp.array([0.0]), jnp.array([0.0]))))


def test_npo_is_stable_for_extreme_log_ratios():
    # log_sigmoid(1e5) = 0 and log_sigmoid(-1e5) = -1e5: naive log(sigmoid) would give -inf
    val = L.npo(jnp.array([-1e5, 1e5]), jnp.array([0.0, 0.0]), 1.0)
    np.testing.assert_allclose(val, 1e5, rtol=1e-6)
    grad = jax.grad(lambda lp: L.npo(lp, jnp.zeros(2), 1.0))(jnp.array([-1e5, 1e5]))
    assert np.all(np.isfinite(grad))


def test_kl_losses_match_numpy():
    logits, labels, mask = make_batch(3)
    other, _, _ = make_batch(4)
    fwd = np_token_mean(lambda b, t: np_kl(other[b, t], logits[b, t]), mask)
    rev = np_token_mean(lambda b, t: np_kl(logits[b, t], other[b, t]), mask)
    np.testing.assert_allclose(L.forward_kl(logits, other, mask), fwd, rtol=1e-5)
    np.testing.assert_allclose(L.reverse_kl(logits, other, mask), rev, rtol=1e-5)


def test_kl_of_identical_distributions_is_zero():
    logits, _, mask = make_batch(5)
    shifted = logits + 3.0  # softmax is shift invariant per token
    for fn in (L.forward_kl, L.reverse_kl):
        assert abs(float(fn(logits, logits, mask))) < 1e-6
        assert abs(float(fn(logits, shifted, mask))) < 1e-5


def test_rkld_teacher_matches_numpy_and_only_lowers_strengthened_tokens():
    rng = np.random.default_rng(6)
    orig = rng.normal(size=(B, T, V)).astype(np.float32)
    strong = rng.normal(size=(B, T, V)).astype(np.float32)
    teacher = np.asarray(L.rkld_teacher(orig, strong, 2.0))
    expected = orig - 2.0 * np.maximum(strong.astype(np.float64) - orig, 0.0)
    np.testing.assert_allclose(teacher, expected, rtol=1e-6)
    up = strong > orig
    assert np.all(teacher[up] < orig[up])
    np.testing.assert_array_equal(teacher[~up], orig[~up])  # exactly unchanged


@pytest.mark.parametrize("beta", [0.0, 1.0, 5.0])
def test_undial_matches_numpy(beta):
    logits, labels, mask = make_batch(7)
    teacher, _, _ = make_batch(8)

    def ce(b, t):
        q = np_undial_target(teacher[b, t], labels[b, t], beta)
        return -float(np.sum(q * np_log_softmax(logits[b, t])))

    expected = np_token_mean(ce, mask)
    np.testing.assert_allclose(L.undial(logits, teacher, labels, mask, beta), expected, rtol=1e-5)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_wga_matches_numpy(beta):
    logits, labels, mask = make_batch(9)

    def term(b, t):
        ce = -np_log_softmax(logits[b, t])[labels[b, t]]
        return np.exp(-ce) ** beta * ce

    np.testing.assert_allclose(L.wga(logits, labels, mask, beta), -np_token_mean(term, mask), rtol=1e-5)


def test_wga_with_beta_zero_is_gradient_ascent():
    logits, labels, mask = make_batch(10)
    ga = L.gradient_ascent(logits, labels, mask)
    np.testing.assert_allclose(L.wga(logits, labels, mask, 0.0), ga, rtol=1e-6)


def test_weighted_matches_numpy_and_handles_zero_weights():
    loss = np.array([1.5, -2.0, 0.25, 4.0], np.float32)
    w = np.array([0.5, 0.0, 2.0, 1.0], np.float32)
    np.testing.assert_allclose(L.weighted(loss, w), np.sum(w * loss) / np.sum(w), rtol=1e-6)
    assert float(L.weighted(loss, np.zeros(4))) == 0.0
    # a NaN loss under weight 0 is never read
    nan_loss = loss.copy()
    nan_loss[1] = np.nan
    np.testing.assert_allclose(L.weighted(nan_loss, w), np.sum(w * loss) / np.sum(w), rtol=1e-6)


def test_weighted_zero_weight_gives_exactly_zero_gradient():
    w = jnp.array([1.0, 0.0, 3.0])
    g = jax.grad(L.weighted)(jnp.array([0.3, 7.0, -1.0]), w)
    assert float(g[1]) == 0.0
    np.testing.assert_allclose(g, np.array([1.0, 0.0, 3.0]) / 4.0, rtol=1e-6)
    # through a real per-sequence loss: sequence 1's logits get exactly zero gradient
    logits, labels, mask = make_batch(11)

    def obj(lg):
        return L.weighted(L.sequence_mean_nll(lg, labels, mask), jnp.array([1.0, 0.0, 2.0]))

    glog = np.asarray(jax.grad(obj)(jnp.asarray(logits)))
    assert np.all(glog[1] == 0.0) and np.any(glog[0] != 0.0)
    # weights are constants: no gradient flows into them
    assert np.all(np.asarray(jax.grad(L.weighted, argnums=1)(jnp.ones(3), w)) == 0.0)


def test_rmu_control_vector_and_losses_match_numpy():
    key = jax.random.key(0)
    c = np.asarray(L.rmu_control_vector(key, D, 6.5))
    assert c.shape == (D,) and c.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(c), 6.5, rtol=1e-6)
    assert np.all(c >= 0.0)  # u ~ U[0, 1) before normalising
    np.testing.assert_array_equal(c, L.rmu_control_vector(key, D, 6.5))
    assert not np.allclose(c, L.rmu_control_vector(jax.random.key(1), D, 6.5))

    rng = np.random.default_rng(12)
    _, _, mask = make_batch(12)
    act = rng.normal(size=(B, T, D)).astype(np.float32)
    ref = rng.normal(size=(B, T, D)).astype(np.float32)
    act[mask == 0] = 1e6  # garbage on padding
    # open-unlearning's compute_activation_loss: per sequence, the mean over its masked
    # positions of mean_d (a - b)^2; then the mean over the sequences (rows 0-2 of
    # make_batch have 4, 4 and 2 answer tokens: not the token mean).
    def np_rmu(target):
        per_seq = []
        for b in range(B):
            on = mask[b] > 0
            sq = ((act[b].astype(np.float64) - target(b)) ** 2).mean(-1)
            per_seq.append(sq[on].sum() / on.sum())
        return np.asarray(per_seq)

    fgt, ret = np_rmu(lambda b: c.astype(np.float64)), np_rmu(lambda b: ref[b])
    np.testing.assert_allclose(L.rmu_forget_per_sequence(act, c, mask), fgt, rtol=1e-5)
    np.testing.assert_allclose(L.rmu_retain_per_sequence(act, ref, mask), ret, rtol=1e-5)
    np.testing.assert_allclose(L.rmu_forget(act, c, mask), fgt.mean(), rtol=1e-5)
    np.testing.assert_allclose(L.rmu_retain(act, ref, mask), ret.mean(), rtol=1e-5)
    token_mean = np_token_mean(lambda b, t: np.mean((act[b, t].astype(np.float64) - c) ** 2),
                               mask)
    assert abs(fgt.mean() - token_mean) > 1e-3 * fgt.mean()  # the two averages differ here
    # A padding row (no masked position) is left out of the mean over sequences.
    act2 = np.concatenate([act, act[:1]])
    mask2 = np.concatenate([mask, np.zeros_like(mask[:1])])
    np.testing.assert_allclose(L.rmu_forget(act2, c, mask2), fgt.mean(), rtol=1e-5)


# ---------------------------------------------------------------------------- gradients vs torch autograd


def _torch_masked(logits, labels, mask):
    m = torch.as_tensor(mask) > 0
    lg = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    return lg, lg[m], torch.as_tensor(labels).long()[m], m


def _torch_token_losses(name, logits, labels, mask, other, beta):
    """Loss from torch.nn.functional on the masked tokens only; returns (leaf logits, loss)."""
    lg, x, y, m = _torch_masked(logits, labels, mask)
    o = torch.as_tensor(other, dtype=torch.float64)[m]
    if name == "token_nll":
        return lg, F.cross_entropy(x, y)
    if name == "gradient_ascent":
        return lg, -F.cross_entropy(x, y)
    if name == "forward_kl":  # kl_div(input=log q_model, target=log p_ref) = KL(ref || model)
        kl = F.kl_div(F.log_softmax(x, -1), F.log_softmax(o, -1), reduction="sum", log_target=True)
        return lg, kl / len(y)
    if name == "reverse_kl":
        kl = F.kl_div(F.log_softmax(o, -1), F.log_softmax(x, -1), reduction="sum", log_target=True)
        return lg, kl / len(y)
    if name == "undial":
        target = F.softmax(o - beta * F.one_hot(y, V).double(), -1)
        return lg, F.cross_entropy(x, target)
    if name == "wga":
        ce = F.cross_entropy(x, y, reduction="none")
        return lg, -(torch.exp(-ce).detach() ** beta * ce).mean()
    raise AssertionError(name)


def _jax_token_loss(name, other, labels, mask, beta):
    return {
        "token_nll": lambda lg: L.token_nll(lg, labels, mask),
        "gradient_ascent": lambda lg: L.gradient_ascent(lg, labels, mask),
        "forward_kl": lambda lg: L.forward_kl(lg, other, mask),
        "reverse_kl": lambda lg: L.reverse_kl(lg, other, mask),
        "undial": lambda lg: L.undial(lg, other, labels, mask, beta),
        "wga": lambda lg: L.wga(lg, labels, mask, beta),
    }[name]


TOKEN_LOSSES = ["token_nll", "gradient_ascent", "forward_kl", "reverse_kl", "undial", "wga"]


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_token_loss_gradients_match_torch(name):
    logits, labels, mask = make_batch(20)
    other, _, _ = make_batch(21)
    lg, loss_t = _torch_token_losses(name, logits, labels, mask, other, 2.0)
    loss_t.backward()
    fn = _jax_token_loss(name, jnp.asarray(other), jnp.asarray(labels), jnp.asarray(mask), 2.0)
    val, grad = jax.value_and_grad(fn)(jnp.asarray(logits))
    np.testing.assert_allclose(val, loss_t.item(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, lg.grad.numpy(), rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(grad)[mask == 0] == 0.0)  # padding gets exactly no gradient


def test_sequence_logprob_gradient_matches_torch():
    logits, labels, mask = make_batch(22)
    lg, x, y, m = _torch_masked(logits, labels, mask)
    coef = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    rows = torch.nonzero(m)[:, 0]
    (coef[rows] * F.log_softmax(x, -1)[torch.arange(len(y)), y]).sum().backward()
    grad = jax.grad(lambda z: jnp.sum(jnp.array([0.7, -1.3, 2.0]) * L.sequence_logprob(z, labels, mask)))(
        jnp.asarray(logits)
    )
    np.testing.assert_allclose(grad, lg.grad.numpy(), rtol=1e-4, atol=1e-7)


def test_preference_gradients_match_torch():
    rng = np.random.default_rng(23)
    lp, ref, lp2, ref2 = (rng.normal(-10.0, 4.0, size=4) for _ in range(4))
    n = np.array([2.0, 5.0, 9.0, 1.0])
    beta = 0.5
    t = [torch.tensor(a, requires_grad=True) for a in (lp, lp2)]
    npo_t = -(2 / beta) * F.logsigmoid(-beta * (t[0] - torch.tensor(ref))).mean()
    sim_t = -(2 / beta) * F.logsigmoid(beta * (-t[0] / torch.tensor(n) - 0.1)).mean()
    margin = (t[0] - torch.tensor(ref)) - (t[1] - torch.tensor(ref2))
    dpo_t = -(2 / beta) * F.logsigmoid(beta * margin).mean()
    g_npo = torch.autograd.grad(npo_t, t[0])[0].numpy()
    g_sim = torch.autograd.grad(sim_t, t[0])[0].numpy()
    g_dpo = [g.numpy() for g in torch.autograd.grad(dpo_t, t)]
    np.testing.assert_allclose(jax.grad(L.npo)(lp.astype(np.float32), ref, beta), g_npo, rtol=1e-5)
    g_sim_jax = jax.grad(lambda x: L.simnpo(x, n, beta, 0.1))(lp.astype(np.float32))
    np.testing.assert_allclose(g_sim_jax, g_sim, rtol=1e-5)
    g = jax.grad(L.dpo, argnums=(0, 1))(lp.astype(np.float32), lp2.astype(np.float32), ref, ref2, beta)
    np.testing.assert_allclose(g[0], g_dpo[0], rtol=1e-5)
    np.testing.assert_allclose(g[1], g_dpo[1], rtol=1e-5)
    # reference inputs are frozen
    assert np.all(np.asarray(jax.grad(L.npo, argnums=1)(lp, ref, beta)) == 0.0)


def test_check_grads_in_float64():
    with jax.enable_x64(True):
        logits, labels, mask = make_batch(24, garbage=3.0)
        other, _, _ = make_batch(25, garbage=3.0)
        lg, oth = jnp.asarray(logits, jnp.float64), jnp.asarray(other, jnp.float64)
        lab, msk = jnp.asarray(labels), jnp.asarray(mask, jnp.float64)
        kw = dict(order=2, modes=("rev",), eps=1e-4, atol=1e-5, rtol=1e-5)
        check_grads(lambda z: L.token_nll(z, lab, msk), (lg,), **kw)
        check_grads(lambda z: L.reverse_kl(z, oth, msk), (lg,), **kw)
        check_grads(lambda z: L.forward_kl(z, oth, msk), (lg,), **kw)
        check_grads(lambda z: L.undial(z, oth, lab, msk, 3.0), (lg,), **kw)
        check_grads(lambda z: L.sequence_mean_nll(z, lab, msk), (lg,), **kw)
        x, y = jnp.array([-3.0, -7.5, -1.0]), jnp.array([-2.0, -9.0, -1.5])
        check_grads(lambda a: L.npo(a, y, 0.7), (x,), **kw)
        check_grads(lambda a: L.simnpo(a, jnp.array([2.0, 4.0, 1.0]), 2.0, 0.2), (x,), **kw)
        check_grads(lambda a, b: L.dpo(a, b, y, x + 1.0, 0.3), (x, y), **kw)
        act = jnp.asarray(np.random.default_rng(26).normal(size=(B, T, D)))
        check_grads(lambda a: L.rmu_forget(a, jnp.ones(D), msk), (act,), **kw)
        check_grads(lambda a: L.rmu_retain(a, 0.5 * act, msk), (act,), **kw)
        assert L.token_nll(lg, lab, msk).dtype == jnp.float64  # upcast never downcasts


# ---------------------------------------------------------------------------- jit, masking, padding


def _all_losses():
    """(name, fn, args) for every public loss on a padded batch."""
    logits, labels, mask = make_batch(30)
    other, _, _ = make_batch(31)
    act = np.random.default_rng(32).normal(size=(B, T, D)).astype(np.float32)
    lp, ref = np.array([-5.0, -9.0, -2.0], np.float32), np.array([-6.0, -8.0, -2.5], np.float32)
    n = np.array([4.0, 4.0, 2.0], np.float32)
    return [
        ("token_logprobs", L.token_logprobs, (logits, labels)),
        ("sequence_logprob", L.sequence_logprob, (logits, labels, mask)),
        ("sequence_mean_nll", L.sequence_mean_nll, (logits, labels, mask)),
        ("token_nll", L.token_nll, (logits, labels, mask)),
        ("gradient_ascent", L.gradient_ascent, (logits, labels, mask)),
        ("npo", lambda a, b: L.npo(a, b, 0.2), (lp, ref)),
        ("simnpo", lambda a, b: L.simnpo(a, b, 4.5, 0.1), (lp, n)),
        ("dpo", lambda a, b, c, d: L.dpo(a, b, c, d, 0.2), (lp, ref, ref, lp)),
        ("forward_kl", L.forward_kl, (logits, other, mask)),
        ("reverse_kl", L.reverse_kl, (logits, other, mask)),
        ("rkld_teacher", lambda a, b: L.rkld_teacher(a, b, 1.5), (logits, other)),
        ("weighted", L.weighted, (lp, n)),
        ("rmu_forget", L.rmu_forget, (act, np.full(D, 0.3, np.float32), mask)),
        ("rmu_retain", L.rmu_retain, (act, act[::-1], mask)),
        ("undial", lambda a, b, c, d: L.undial(a, b, c, d, 4.0), (logits, other, labels, mask)),
        ("wga", lambda a, b, c: L.wga(a, b, c, 1.5), (logits, labels, mask)),
    ]


@pytest.mark.parametrize("name,fn,args", _all_losses(), ids=lambda x: x if isinstance(x, str) else "")
def test_jit_equals_no_jit(name, fn, args):
    np.testing.assert_allclose(jax.jit(fn)(*args), fn(*args), rtol=1e-6, atol=1e-7)


def _compact(logits, labels, mask, *extra):
    """Only the masked tokens, as one [1, N, ...] sequence with an all-ones mask."""
    keep = mask > 0
    out = [logits[keep][None], labels[keep][None], np.ones((1, int(keep.sum())), np.float32)]
    return out + [e[keep][None] for e in extra]


@pytest.mark.parametrize("name", TOKEN_LOSSES + ["rmu_forget", "rmu_retain"])
def test_masking_equals_slicing_for_token_means(name):
    logits, labels, mask = make_batch(33)
    other, _, _ = make_batch(34)
    if name.startswith("rmu"):
        rng = np.random.default_rng(35)
        act, ref = rng.normal(size=(2, B, T, D)).astype(np.float32)
        act[mask == 0] = 1e8
        fn = (lambda a, r, m: L.rmu_retain(a, r, m)) if name == "rmu_retain" else (
            lambda a, r, m: L.rmu_forget(a, ref[0, 0], m)
        )
        # Per sequence, then over sequences: each row sliced to its masked positions.
        rows = []
        for b in range(B):
            if mask[b].sum() > 0:
                a_c, _, m_c, r_c = _compact(act[b:b + 1], labels[b:b + 1], mask[b:b + 1],
                                            ref[b:b + 1])
                rows.append(float(fn(a_c, r_c, m_c)))
        np.testing.assert_allclose(fn(act, ref, mask), np.mean(rows), rtol=1e-6)
        return
    lg_c, lab_c, m_c, oth_c = _compact(logits, labels, mask, other)
    full = _jax_token_loss(name, other, labels, mask, 1.5)(logits)
    sliced = _jax_token_loss(name, oth_c, lab_c, m_c, 1.5)(lg_c)
    np.testing.assert_allclose(full, sliced, rtol=1e-6)


def test_masking_equals_slicing_per_sequence():
    logits, labels, mask = make_batch(36)
    seq = np.asarray(L.sequence_logprob(logits, labels, mask))
    for b in range(B):
        (idx,) = np.nonzero(mask[b])
        lo, hi = idx[0], idx[-1] + 1
        alone = L.sequence_logprob(logits[b : b + 1, lo:hi], labels[b : b + 1, lo:hi], np.ones((1, hi - lo)))
        np.testing.assert_allclose(seq[b], alone[0], rtol=1e-6)


@pytest.mark.parametrize("name", TOKEN_LOSSES)
def test_nonfinite_logits_on_padding_change_nothing(name):
    logits, labels, mask = make_batch(37, garbage=1.0)
    other, _, _ = make_batch(38, garbage=1.0)
    bad, bad_other = logits.copy(), other.copy()
    pad = mask == 0
    bad[pad], bad_other[pad] = np.inf, np.nan
    bad[0, 0, 3] = -np.inf
    clean_val, clean_grad = jax.value_and_grad(_jax_token_loss(name, other, labels, mask, 1.0))(logits)
    val, grad = jax.value_and_grad(_jax_token_loss(name, bad_other, labels, mask, 1.0))(bad)
    np.testing.assert_allclose(val, clean_val, rtol=1e-6)
    np.testing.assert_allclose(grad, clean_grad, rtol=1e-6)
    assert np.all(np.asarray(grad)[pad] == 0.0)


# ---------------------------------------------------------------------------- gradient directions


def test_forget_objectives_push_forget_logprob_down():
    logp, ref = jnp.array([-4.0, -12.0, -0.3]), jnp.array([-5.0, -10.0, -0.3])
    assert np.all(np.asarray(jax.grad(L.npo)(logp, ref, 0.1)) > 0)
    assert np.all(np.asarray(jax.grad(L.simnpo)(logp, jnp.array([3.0, 6.0, 1.0]))) > 0)
    g_win, g_lose = jax.grad(L.dpo, argnums=(0, 1))(logp, logp - 1.0, ref, ref, 0.1)
    assert np.all(np.asarray(g_win) < 0) and np.all(np.asarray(g_lose) > 0)

    logits, labels, mask = make_batch(40, garbage=1.0)
    before = np.asarray(L.token_logprobs(logits, labels))
    for fn in (L.gradient_ascent, lambda *a: L.wga(*a, 0.5)):
        stepped = logits - 0.5 * np.asarray(jax.grad(fn)(jnp.asarray(logits), labels, mask))
        after = np.asarray(L.token_logprobs(stepped, labels))
        assert np.all(after[mask > 0] < before[mask > 0])


def test_undial_target_lowers_the_label_probability():
    # the model starts at the teacher: the only pull is towards q, whose label mass is smaller
    teacher, labels, mask = make_batch(41, garbage=1.0)
    grad = np.asarray(jax.grad(L.undial)(jnp.asarray(teacher), teacher, labels, mask, 3.0))
    for b, t in masked_positions(mask):
        assert grad[b, t, labels[b, t]] > 0
        q = np_undial_target(teacher[b, t], labels[b, t], 3.0)
        assert q[labels[b, t]] < sps.softmax(teacher[b, t].astype(np.float64))[labels[b, t]]
    before = np.asarray(L.token_logprobs(teacher, labels))
    after = np.asarray(L.token_logprobs(teacher - 1.0 * grad, labels))
    assert np.all(after[mask > 0] < before[mask > 0])
    # teacher is frozen
    g_teacher = jax.grad(L.undial, argnums=1)(jnp.asarray(teacher), jnp.asarray(teacher), labels, mask, 3.0)
    assert np.all(np.asarray(g_teacher) == 0.0)


# ---------------------------------------------------------------------------- dtypes and errors


def test_bf16_inputs_give_float32_results():
    logits, labels, mask = make_batch(42, garbage=1.0)
    other, _, _ = make_batch(43, garbage=1.0)
    lo16, ot16 = jnp.asarray(logits, jnp.bfloat16), jnp.asarray(other, jnp.bfloat16)
    lo32, ot32 = lo16.astype(jnp.float32), ot16.astype(jnp.float32)
    for name in TOKEN_LOSSES:
        v16 = _jax_token_loss(name, ot16, labels, mask, 1.0)(lo16)
        v32 = _jax_token_loss(name, ot32, labels, mask, 1.0)(lo32)
        assert v16.dtype == jnp.float32, name
        np.testing.assert_allclose(v16, v32, rtol=1e-6, err_msg=name)  # upcast before any arithmetic
        full = _jax_token_loss(name, other, labels, mask, 1.0)(logits)
        np.testing.assert_allclose(v16, full, rtol=5e-2, atol=5e-2, err_msg=name)  # only input rounding
    assert L.sequence_logprob(lo16, labels, mask).dtype == jnp.float32
    assert L.rkld_teacher(lo16, ot16, 1.0).dtype == jnp.float32
    lp = jnp.array([-3.0, -5.0], jnp.bfloat16)
    assert L.npo(lp, lp, 0.1).dtype == jnp.float32
    act = jnp.ones((B, T, D), jnp.bfloat16)
    assert L.rmu_forget(act, jnp.zeros(D, jnp.bfloat16), mask).dtype == jnp.float32


@pytest.mark.parametrize(
    "call,field",
    [
        (lambda lg, lab, m: L.token_nll(lg[0], lab, m), "logits"),
        (lambda lg, lab, m: L.token_nll(lg, lab.astype(np.float32), m), "labels"),
        (lambda lg, lab, m: L.token_nll(lg, lab[:, :-1], m), "labels"),
        (lambda lg, lab, m: L.sequence_logprob(lg, lab, m[:, :-1]), "mask"),
        (lambda lg, lab, m: L.forward_kl(lg, lg[..., :-1], m), "ref_logits"),
        (lambda lg, lab, m: L.reverse_kl(lg, lg, m[:1]), "mask"),
        (lambda lg, lab, m: L.undial(lg, lg[:1], lab, m, 1.0), "teacher_logits"),
        (lambda lg, lab, m: L.undial(lg, lg, lab, m, -1.0), "beta"),
        (lambda lg, lab, m: L.wga(lg, lab, m, float("nan")), "beta"),
        (lambda lg, lab, m: L.rkld_teacher(lg, lg, -0.5), "alpha"),
        (lambda lg, lab, m: L.rkld_teacher(lg, lg[0], 1.0), "strengthened_logits"),
        (lambda lg, lab, m: L.npo(np.zeros(3), np.zeros(3), 0.0), "beta"),
        (lambda lg, lab, m: L.npo(np.zeros(3), np.zeros(2)), "ref_logp"),
        (lambda lg, lab, m: L.simnpo(np.zeros(3), np.ones(2)), "num_tokens"),
        (lambda lg, lab, m: L.dpo(np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(4)), "ref_lose"),
        (lambda lg, lab, m: L.weighted(np.zeros(3), np.ones(4)), "weights"),
        (lambda lg, lab, m: L.weighted(np.zeros((3, 1)), np.ones((3, 1))), "per_sequence_loss"),
        (lambda lg, lab, m: L.rmu_forget(np.zeros((B, T, D)), np.zeros(D + 1), m), "control"),
        (lambda lg, lab, m: L.rmu_retain(np.zeros((B, T, D)), np.zeros((B, T, 1)), m), "ref_activations"),
        (lambda lg, lab, m: L.rmu_control_vector(jax.random.key(0), 0, 1.0), "dim"),
        (lambda lg, lab, m: L.rmu_control_vector(jax.random.key(0), 4, 0.0), "scale"),
    ],
)
def test_bad_input_raises_naming_the_field(call, field):
    logits, labels, mask = make_batch(44, garbage=1.0)
    with pytest.raises(L.LossInputError, match=rf"\b{field}\b"):
        call(logits, labels, mask)


# ---------------------------------------------------------------------------- per-example forms


def np_per_token(fn, mask):
    """``[B, T]`` of ``fn(b, t)`` on masked positions, 0 elsewhere."""
    out = np.zeros(mask.shape)
    for b, t in masked_positions(mask):
        out[b, t] = fn(b, t)
    return out


def test_per_token_forms_match_numpy_and_are_zero_off_the_mask():
    """Each ``*_per_token`` against a NumPy value per masked position; garbage (1e4,
    inf, NaN) logits off the mask give exactly 0 there."""
    logits, labels, mask = make_batch(21)
    other, _, _ = make_batch(22)
    logits[0, 0, :] = np.nan  # a masked position
    logits[2, 4, 3] = np.inf
    act = np.random.default_rng(23).normal(size=(B, T, D)).astype(np.float32)
    ref_act = np.random.default_rng(24).normal(size=(B, T, D)).astype(np.float32)
    control = np.random.default_rng(25).normal(size=D).astype(np.float32)

    def ce(b, t):
        return -np_log_softmax(logits[b, t])[labels[b, t]]

    cases = {
        "forward_kl": (L.forward_kl_per_token(logits, other, mask),
                       np_per_token(lambda b, t: np_kl(other[b, t], logits[b, t]), mask)),
        "reverse_kl": (L.reverse_kl_per_token(logits, other, mask),
                       np_per_token(lambda b, t: np_kl(logits[b, t], other[b, t]), mask)),
        "undial": (L.undial_per_token(logits, other, labels, mask, 2.0),
                   np_per_token(lambda b, t: -float(np.sum(
                       np_undial_target(other[b, t], labels[b, t], 2.0)
                       * np_log_softmax(logits[b, t]))), mask)),
        "wga": (L.wga_per_token(logits, labels, mask, 0.5),
                np_per_token(lambda b, t: -np.exp(-ce(b, t)) ** 0.5 * ce(b, t), mask)),
        "rmu_forget": (L.rmu_forget_per_token(act, control, mask),
                       np_per_token(lambda b, t: np.mean((act[b, t].astype(np.float64)
                                                          - control) ** 2), mask)),
        "rmu_retain": (L.rmu_retain_per_token(act, ref_act, mask),
                       np_per_token(lambda b, t: np.mean((act[b, t].astype(np.float64)
                                                          - ref_act[b, t]) ** 2), mask)),
    }
    for name, (got, want) in cases.items():
        got = np.asarray(got)
        assert got.shape == (B, T), name
        assert np.all(got[mask == 0] == 0.0), name
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("beta", [0.1, 2.0])
def test_per_sequence_forms_match_numpy(beta):
    rng = np.random.default_rng(26)
    lp, ref, lp2, ref2 = (rng.normal(-20.0, 8.0, size=5) for _ in range(4))
    n = np.array([3.0, 7.0, 1.0, 12.0, 0.0])  # the last: no tokens, guarded by max(|y|, 1)
    np.testing.assert_allclose(L.npo_per_sequence(lp, ref, beta),
                               -(2 / beta) * np_log_sigmoid(-beta * (lp - ref)), rtol=1e-5)
    np.testing.assert_allclose(L.simnpo_per_sequence(lp, n, beta, 0.3),
                               -(2 / beta) * np_log_sigmoid(beta * (-lp / np.maximum(n, 1) - 0.3)),
                               rtol=1e-5)
    np.testing.assert_allclose(L.dpo_per_sequence(lp, lp2, ref, ref2, beta),
                               -(2 / beta) * np_log_sigmoid(beta * ((lp - ref) - (lp2 - ref2))),
                               rtol=1e-5)


def test_mean_parts_of_disjoint_parts_add_up_to_the_whole():
    """(sum, count) of two micro-batches of unequal token counts give the whole batch's
    token mean; the mean of their means does not."""
    logits, labels, mask = make_batch(27)
    per_token = np.asarray(L.forward_kl_per_token(logits, make_batch(28)[0], mask))
    whole = L.mean_parts(per_token, mask)
    first, rest = L.mean_parts(per_token[:1], mask[:1]), L.mean_parts(per_token[1:], mask[1:])
    added = L.Mean(first.total + rest.total, first.count + rest.count)
    want = (per_token * mask).sum() / mask.sum()  # NumPy
    np.testing.assert_allclose(float(whole.value()), want, rtol=1e-6)
    np.testing.assert_allclose(float(added.value()), want, rtol=1e-6)
    assert float(whole.count) == mask.sum() == 10.0
    assert abs((float(first.value()) + float(rest.value())) / 2 - want) > 1e-3
    # weights: sum w v / sum w, zero weights never read (NaN there), no gradient to them
    v = jnp.array([1.0, jnp.nan, 3.0])
    w = jnp.array([2.0, 0.0, 1.0])
    np.testing.assert_allclose(float(L.mean_parts(v, w).value()), 5.0 / 3.0, rtol=1e-6)
    g = jax.grad(lambda x: L.mean_parts(x, w).total)(jnp.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(np.asarray(g), [2.0, 0.0, 1.0])
    assert float(L.mean_parts(jnp.zeros(3), jnp.zeros(3)).value()) == 0.0
    with pytest.raises(L.LossInputError, match="weights"):
        L.mean_parts(jnp.zeros(3), jnp.zeros(4))


def test_per_example_gradients_in_float64():
    """Finite differences of weighted sums of the per-example forms (WGA's weight is
    stop-gradient'ed, which finite differences do not honour: its gradient is checked
    against torch above through ``wga``)."""
    with jax.enable_x64(True):
        logits, labels, mask = make_batch(29, garbage=3.0)
        other, _, _ = make_batch(30, garbage=3.0)
        lg, oth = jnp.asarray(logits, jnp.float64), jnp.asarray(other, jnp.float64)
        lab, msk = jnp.asarray(labels), jnp.asarray(mask, jnp.float64)
        coef = jnp.arange(B * T, dtype=jnp.float64).reshape(B, T)
        kw = dict(order=2, modes=("rev",), eps=1e-4, atol=1e-5, rtol=1e-5)
        for fn in (lambda z: L.forward_kl_per_token(z, oth, msk),
                   lambda z: L.reverse_kl_per_token(z, oth, msk),
                   lambda z: L.undial_per_token(z, oth, lab, msk, 1.5)):
            check_grads(lambda z, f=fn: jnp.sum(f(z) * coef), (lg,), **kw)
        act = jnp.asarray(np.random.default_rng(33).normal(size=(B, T, D)))
        check_grads(lambda a: jnp.sum(L.rmu_forget_per_token(a, jnp.ones(D), msk) * coef),
                    (act,), **kw)
        x, y = jnp.array([-3.0, -7.5, -1.0]), jnp.array([-2.0, -9.0, -1.5])
        w = jnp.array([0.5, 2.0, 1.0])
        check_grads(lambda a: jnp.sum(L.npo_per_sequence(a, y, 0.7) * w), (x,), **kw)
        check_grads(lambda a: jnp.sum(L.simnpo_per_sequence(a, jnp.array([2.0, 4.0, 1.0]), 2.0,
                                                            0.2) * w), (x,), **kw)
        check_grads(lambda a, b: jnp.sum(L.dpo_per_sequence(a, b, y, x + 1.0, 0.3) * w), (x, y),
                    **kw)
