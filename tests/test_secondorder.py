"""jaxunlearn.secondorder: HVPs, Gauss-Newton products, per-example gradients, Fisher,
the removal updates (the linear solvers themselves: tests/test_solvers.py).

Every quantity is checked against an independent dense computation (NumPy, or
``jax.hessian``/``jax.jacobian`` on a flattened vector) in float64; the removal update
is checked against a model retrained from scratch with a NumPy Newton solver.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxunlearn import secondorder as so


@pytest.fixture(autouse=True)
def x64():
    # float64 only inside these tests: the context manager restores the global flag.
    with jax.enable_x64(True):
        yield


# ------------------------------------------------------------------------ models
def mlp_params(seed=0, d_in=3, hidden=5, classes=4):
    r = np.random.default_rng(seed)
    return {
        "l1": {"w": jnp.asarray(r.normal(size=(d_in, hidden))), "b": jnp.asarray(r.normal(size=hidden) * 0.1)},
        "l2": {"w": jnp.asarray(r.normal(size=(hidden, classes))), "b": jnp.asarray(r.normal(size=classes) * 0.1)},
    }


def mlp_logits(params, x):
    """2-layer tanh MLP: ``[..., d_in] -> [..., classes]``."""
    h = jnp.tanh(x @ params["l1"]["w"] + params["l1"]["b"])
    return h @ params["l2"]["w"] + params["l2"]["b"]


def mlp_loss(params, batch):
    x, y = batch
    logp = jax.nn.log_softmax(mlp_logits(params, x))
    nll = -jnp.take_along_axis(logp, y[..., None], axis=-1)[..., 0]
    return jnp.mean(nll) + 0.01 * sum(jnp.sum(p**2) for p in jax.tree.leaves(params))


def mlp_data(seed=1, n=6, d_in=3, classes=4):
    r = np.random.default_rng(seed)
    return jnp.asarray(r.normal(size=(n, d_in))), jnp.asarray(r.integers(0, classes, size=n))


def dense_gauss_newton(model_flat, theta, weights):
    """NumPy ``Jᵀ H J`` with ``H = blockdiag(w_n (diag p_n − p_n p_nᵀ))`` over output positions."""
    logits = np.asarray(model_flat(theta))
    v = logits.shape[-1]
    jac = np.asarray(jax.jit(jax.jacobian(model_flat))(theta)).reshape(-1, v, theta.size)
    z = logits.reshape(-1, v)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    w = np.asarray(weights).reshape(-1)
    out = np.zeros((theta.size, theta.size))
    for n in range(z.shape[0]):
        h = w[n] * (np.diag(p[n]) - np.outer(p[n], p[n]))
        out += jac[n].T @ h @ jac[n]
    return out


def random_like(params, seed):
    r = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(r.normal(size=x.shape)), params)


# ---------------------------------------------------------------------------- hvp
def test_hvp_matches_dense_hessian_and_finite_differences():
    params, batch = mlp_params(), mlp_data()
    v = random_like(params, 7)
    hv = so.hvp(lambda p: mlp_loss(p, batch), params, v)

    theta, unravel = ravel_pytree(params)
    v_flat = ravel_pytree(v)[0]
    dense = jax.jit(jax.hessian(lambda t: mlp_loss(unravel(t), batch)))(theta)
    np.testing.assert_allclose(ravel_pytree(hv)[0], dense @ v_flat, rtol=1e-10, atol=1e-12)

    eps = 1e-5
    grad = jax.jit(jax.grad(lambda t: mlp_loss(unravel(t), batch)))
    fd = (grad(theta + eps * v_flat) - grad(theta - eps * v_flat)) / (2 * eps)
    np.testing.assert_allclose(ravel_pytree(hv)[0], fd, rtol=1e-6, atol=1e-8)

    jitted = jax.jit(lambda p, u: so.hvp(lambda q: mlp_loss(q, batch), p, u))(params, v)
    np.testing.assert_allclose(ravel_pytree(jitted)[0], ravel_pytree(hv)[0], rtol=1e-12, atol=1e-14)


def test_hvp_and_cg_on_sharded_params():
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = jax.sharding.Mesh(np.array(devices[:8]), ("fsdp",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
    r = np.random.default_rng(3)
    params = {"w": jnp.asarray(r.normal(size=(8, 4)) * 0.5), "b": jnp.asarray(r.normal(size=8))}
    x = jnp.asarray(r.normal(size=(5, 4)))

    def loss(p):
        return jnp.mean(jnp.log1p(jnp.exp(x @ p["w"].T + p["b"]))) + 0.05 * sum(jnp.sum(q**2) for q in jax.tree.leaves(p))

    sharded = jax.device_put(params, shard)
    v = random_like(params, 4)

    @jax.jit
    def solve(p, u):
        return so.conjugate_gradient(lambda t: so.hvp(loss, p, t), u, tol=1e-12, max_iters=60)

    plain, dist = solve(params, v), solve(sharded, jax.device_put(v, shard))
    assert bool(dist.converged)
    np.testing.assert_allclose(ravel_pytree(dist.solution)[0], ravel_pytree(plain.solution)[0], rtol=1e-9)
    hv = jax.jit(functools.partial(so.hvp, loss))
    np.testing.assert_allclose(ravel_pytree(hv(sharded, v))[0], ravel_pytree(hv(params, v))[0], rtol=1e-12)


def test_updates_accept_nnx_state():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    pure = nnx.to_pure_dict(state)
    x, y = mlp_data(seed=8, n=6)

    def loss_state(st, batch):
        logp = jax.nn.log_softmax(nnx.merge(graphdef, st)(batch[0]))
        return -jnp.mean(jnp.take_along_axis(logp, batch[1][:, None], -1)) + 0.05 * sum(
            jnp.sum(q**2) for q in jax.tree.leaves(st))

    def loss_dict(d, batch):
        logp = jax.nn.log_softmax(batch[0] @ d["kernel"] + d["bias"])
        return -jnp.mean(jnp.take_along_axis(logp, batch[1][:, None], -1)) + 0.05 * sum(
            jnp.sum(q**2) for q in jax.tree.leaves(d))

    forget, retain = (x[:2], y[:2]), (x[2:], y[2:])
    update = lambda loss: jax.jit(lambda p: so.newton_update(loss, p, forget, retain, lr=0.5, damping=0.1, tol=1e-12))
    new_state, _ = update(loss_state)(state)
    new_dict, _ = update(loss_dict)(pure)
    np.testing.assert_allclose(ravel_pytree(nnx.to_pure_dict(new_state))[0], ravel_pytree(new_dict)[0], rtol=1e-10)


# --------------------------------------------------------------------------- gnvp
def seq_model(params, x):
    """Per-position toy LM head: ``x [B, T, D] -> logits [B, T, V]``."""
    return jnp.tanh(x @ params["a"]) @ params["b"]


def test_gnvp_matches_dense_jt_h_j_and_is_psd():
    r = np.random.default_rng(5)
    params = {"a": jnp.asarray(r.normal(size=(3, 4))), "b": jnp.asarray(r.normal(size=(4, 5)))}
    x = jnp.asarray(r.normal(size=(2, 3, 3)))
    labels = jnp.asarray(r.integers(0, 5, size=(2, 3)))
    mask = jnp.asarray([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    weights = mask / mask.sum()

    def out_loss(z):
        nll = -jnp.take_along_axis(jax.nn.log_softmax(z), labels[..., None], -1)[..., 0]
        return jnp.sum(nll * weights)

    theta, unravel = ravel_pytree(params)
    dense = dense_gauss_newton(lambda t: seq_model(unravel(t), x), theta, weights)
    model_fn = functools.partial(seq_model, x=x)
    closed = functools.partial(so.softmax_cross_entropy_hvp, weights=weights)
    exact_fn = jax.jit(lambda u: so.gnvp(model_fn, out_loss, params, u))
    fast_fn = jax.jit(lambda u: so.gnvp(model_fn, out_loss, params, u, output_hvp=closed))
    for seed in range(3):
        v = random_like(params, 10 + seed)
        exact, fast = ravel_pytree(exact_fn(v))[0], ravel_pytree(fast_fn(v))[0]
        want = dense @ ravel_pytree(v)[0]
        np.testing.assert_allclose(exact, want, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fast, want, rtol=1e-10, atol=1e-12)
        assert float(ravel_pytree(v)[0] @ fast) >= 0.0
    assert np.linalg.eigvalsh(dense).min() > -1e-12


def test_gnvp_masking_equals_slicing():
    r = np.random.default_rng(6)
    params = {"a": jnp.asarray(r.normal(size=(3, 4))), "b": jnp.asarray(r.normal(size=(4, 5)))}
    x = jnp.asarray(r.normal(size=(2, 4, 3)))
    v = random_like(params, 2)
    mask = jnp.asarray([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    gv = jax.jit(lambda xs, w: so.gnvp(functools.partial(seq_model, x=xs), None, params, v,
                                       output_hvp=functools.partial(so.softmax_cross_entropy_hvp, weights=w)))
    masked = gv(x, mask / mask.sum())
    sliced = gv(x[:, :2], jnp.full((2, 2), 0.25))
    np.testing.assert_allclose(ravel_pytree(masked)[0], ravel_pytree(sliced)[0], rtol=1e-12, atol=1e-14)


def test_cg_and_lissa_on_mlp_damped_gauss_newton():
    params = mlp_params(seed=2)
    x, y = mlp_data(seed=3, n=5)
    theta, unravel = ravel_pytree(params)
    dense = dense_gauss_newton(lambda t: mlp_logits(unravel(t), x), theta, jnp.full(5, 1 / 5))
    lam = 0.05
    b = jax.grad(mlp_loss)(params, (x, y))
    want = np.linalg.solve(dense + lam * np.eye(theta.size), ravel_pytree(b)[0])
    out_loss = lambda z: jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(z), y[:, None], -1))
    matvec = lambda v: so.gnvp(lambda p: mlp_logits(p, x), out_loss, params, v)
    cg = jax.jit(lambda rhs: so.conjugate_gradient(matvec, rhs, damping=lam, tol=1e-11, max_iters=200))(b)
    assert bool(cg.converged)
    np.testing.assert_allclose(ravel_pytree(cg.solution)[0], want, rtol=1e-7, atol=1e-9)
    scale = float(np.linalg.eigvalsh(dense).max() + lam + 0.1)
    ls = jax.jit(lambda rhs: so.lissa(matvec, rhs, damping=lam, scale=scale, num_iters=20000, tol=1e-10))(b)
    assert bool(ls.converged)
    np.testing.assert_allclose(ravel_pytree(ls.solution)[0], want, rtol=1e-6, atol=1e-8)


def np_power(sym, a):
    w, q = np.linalg.eigh(sym)
    return (q * w**a) @ q.T


# ------------------------------------------------ per-example gradients and Fisher
C_REG = 1e-2


def logreg_loss(theta, batch):
    """Mean logistic loss + (c/2)‖θ‖² (the regulariser per batch, see module docstring)."""
    x, y = batch
    z = x @ theta
    return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 0.5 * C_REG * jnp.sum(theta**2)


def np_logreg_grads(theta, x, y):
    """Per-example gradients ``[n, d]`` in NumPy."""
    p = 1.0 / (1.0 + np.exp(-x @ theta))
    return (p - y)[:, None] * x + C_REG * theta[None]


def np_fit(x, y, iters=60):
    """Newton's method to machine precision on ``logreg_loss`` (NumPy, independent of JAX)."""
    theta = np.zeros(x.shape[1])
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-x @ theta))
        grad = x.T @ (p - y) / len(y) + C_REG * theta
        hess = (x.T * (p * (1 - p))) @ x / len(y) + C_REG * np.eye(x.shape[1])
        theta = theta - np.linalg.solve(hess, grad)
    assert np.linalg.norm(grad) < 1e-12
    return theta


def logreg_data(n=200, d=4, seed=0):
    r = np.random.default_rng(seed)
    # Unequal feature scales make the Hessian anisotropic, as in real models.
    x = np.concatenate([r.normal(size=(n, d - 1)) * np.array([3.0, 1.0, 0.3]), np.ones((n, 1))], axis=1)
    w = np.array([1.5, -2.0, 0.7, 0.3])[:d]
    y = (r.uniform(size=n) < 1 / (1 + np.exp(-x @ w))).astype(float)
    return x, y


@pytest.mark.parametrize("chunk_size", [None, 3, 7, 10])
def test_per_example_grads_and_diagonal_fisher(chunk_size):
    x, y = logreg_data(n=7)
    theta = np.array([0.3, -0.2, 0.5, 0.1])
    want = np_logreg_grads(theta, x, y)
    got = so.per_example_grads(logreg_loss, jnp.asarray(theta), (jnp.asarray(x), jnp.asarray(y)), chunk_size)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
    diag = so.diagonal_fisher(logreg_loss, jnp.asarray(theta), (jnp.asarray(x), jnp.asarray(y)), chunk_size)
    np.testing.assert_allclose(np.asarray(diag), np.mean(want**2, 0), rtol=1e-12)


# ------------------------------------------------------------- unlearning updates
def removal_setup():
    x, y = logreg_data()
    theta_full = np_fit(x, y)
    forget = np.array([3, 50, 101, 177])
    keep = np.setdiff1d(np.arange(len(y)), forget)
    theta_retrain = np_fit(x[keep], y[keep])
    as_batch = lambda idx: (jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    return x, y, theta_full, theta_retrain, forget, keep, as_batch


def rel_dist(a, b):
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("solver", ["cg", "lissa"])
def test_newton_update_certifies_removal_on_logistic_regression(solver):
    x, y, theta_full, theta_retrain, forget, keep, as_batch = removal_setup()
    lr = len(forget) / len(keep)
    p = 1 / (1 + np.exp(-x[keep] @ theta_full))
    hess = (x[keep].T * (p * (1 - p))) @ x[keep] / len(keep) + C_REG * np.eye(4)
    new, info = so.newton_update(logreg_loss, jnp.asarray(theta_full), as_batch(forget), as_batch(keep), lr=lr,
                                 damping=0.0, solver=solver, max_iters=3000, tol=1e-12,
                                 lissa_scale=1.1 * float(np.linalg.eigvalsh(hess).max()))
    newton = rel_dist(new, theta_retrain)
    assert bool(info.solver_converged)

    g = np.asarray(jax.grad(logreg_loss)(jnp.asarray(theta_full), as_batch(forget)))
    ga = min(rel_dist(theta_full + eta * g, theta_retrain) for eta in np.logspace(-4, 1, 200))
    before = rel_dist(theta_full, theta_retrain)
    print(f"[{solver}] rel. distance to retrained: before {before:.2e}, newton {newton:.2e}, best grad ascent {ga:.2e}")
    assert newton < 1e-3
    assert newton < ga / 10 and ga < before


def test_sequential_rounds_match_retraining():
    x, y = logreg_data()
    theta = np_fit(x, y)
    chunks = [np.array([3, 50]), np.array([101, 177, 190])]
    keep = np.setdiff1d(np.arange(len(y)), np.concatenate(chunks))
    as_batch = lambda idx: (jnp.asarray(x[idx]), jnp.asarray(y[idx]))
    rounds = []
    for j, chunk in enumerate(chunks):  # round j's retain set still holds the later chunks
        retain = np.setdiff1d(np.arange(len(y)), np.concatenate(chunks[: j + 1]))
        rounds.append((as_batch(chunk), as_batch(retain), len(chunk) / len(retain)))

    def update(params, rnd):
        forget, retain, lr = rnd
        return so.newton_update(logreg_loss, params, forget, retain, lr=lr, damping=0.0, tol=1e-12)

    final, infos = so.unlearn_in_rounds(update, jnp.asarray(theta), rounds)
    assert len(infos) == 2
    assert rel_dist(final, np_fit(x[keep], y[keep])) < 1e-3


def test_unlearn_in_rounds_folds_keys_in_order():
    calls = []

    def update(params, chunk, key):
        calls.append(chunk)
        return params + chunk + jax.random.normal(key), None

    key = jax.random.PRNGKey(9)
    out, _ = so.unlearn_in_rounds(update, jnp.zeros(()), [1.0, 2.0], key=key)
    want = 3.0 + jax.random.normal(jax.random.fold_in(key, 0)) + jax.random.normal(jax.random.fold_in(key, 1))
    assert calls == [1.0, 2.0]
    np.testing.assert_allclose(float(out), float(want), rtol=1e-12)


def test_fisher_removal_update_matches_dense_fisher_step():
    x, y, theta_full, _, forget, keep, as_batch = removal_setup()
    retain = keep[:12]
    lam, lr = 0.05, 0.3
    new, info = so.fisher_removal_update(logreg_loss, jnp.asarray(theta_full), as_batch(forget), as_batch(retain),
                                         lr=lr, damping=lam, chunk_size=5)
    g = np_logreg_grads(theta_full, x[retain], y[retain])
    fisher = lam * np.eye(4) + g.T @ g / len(retain)
    g_forget = np_logreg_grads(theta_full, x[forget], y[forget]).mean(0)
    np.testing.assert_allclose(np.asarray(new), theta_full + lr * np.linalg.solve(fisher, g_forget), rtol=1e-10)
    assert bool(info.solver_converged) and float(info.solver_residual_norm) < 1e-12
    assert float(info.noise_norm) == 0.0


def linear_loss(w, batch):
    """``mean_i aᵢ·w``: per-example gradient ``aᵢ``, so the Fisher is known in closed form."""
    return jnp.mean(batch @ w)


@pytest.mark.parametrize("noise_shape", ["fisher", "diagonal"])
def test_fisher_forgetting_zero_noise_is_fisher_removal(noise_shape):
    x, y, theta_full, _, forget, keep, as_batch = removal_setup()
    common = dict(lr=0.3, damping=0.05, chunk_size=4)
    removal, _ = so.fisher_removal_update(logreg_loss, jnp.asarray(theta_full), as_batch(forget), as_batch(keep[:9]),
                                          **common)
    for mu, sigma in [(0.0, 1.0), (2.0, 0.0)]:
        out, info = so.fisher_forgetting_update(logreg_loss, jnp.asarray(theta_full), as_batch(forget),
                                                as_batch(keep[:9]), key=jax.random.PRNGKey(0), mu=mu, sigma=sigma,
                                                noise_shape=noise_shape, **common)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(removal))
        assert float(info.noise_norm) == 0.0


RETAIN_GRADS = np.array([[2.0, 0.0, 0.5], [0.0, 1.0, 0.5], [2.0, 0.0, -0.5], [0.0, 3.0, 0.5]])


def forgetting_noise_samples(noise_shape, lam, mu, sigma, n=4000):
    """``n`` draws of (Fisher Forgetting − Fisher Removal) on a loss whose per-example grads are RETAIN_GRADS."""
    w0, forget, retain = jnp.asarray([0.1, -0.2, 0.3]), jnp.asarray([[1.0, 1.0, 1.0]]), jnp.asarray(RETAIN_GRADS)
    removal, _ = so.fisher_removal_update(linear_loss, w0, forget, retain, lr=1.0, damping=lam)

    def sample(key):
        return so.fisher_forgetting_update(linear_loss, w0, forget, retain, key=key, lr=1.0, damping=lam, mu=mu,
                                           sigma=sigma, noise_shape=noise_shape)[0]

    keys = jax.random.split(jax.random.PRNGKey(1), n)
    return np.asarray(jax.jit(jax.vmap(sample))(keys)) - np.asarray(removal)


def test_diagonal_fisher_forgetting_noise_has_the_right_scale():
    lam, mu, sigma, n = 0.1, 0.5, 0.3, 4000
    want_std = (mu * sigma**2) ** 0.25 * (np.mean(RETAIN_GRADS**2, 0) + lam) ** -0.25
    noise = forgetting_noise_samples("diagonal", lam, mu, sigma, n)
    np.testing.assert_allclose(noise.std(0), want_std, rtol=0.05)
    assert np.all(np.abs(noise.mean(0)) < 4 * want_std / np.sqrt(n))
    assert np.all(np.abs(np.corrcoef(noise.T) - np.eye(3)) < 0.06)


def test_fisher_forgetting_noise_has_covariance_sqrt_mu_sigma2_times_inverse_sqrt_fisher():
    lam, mu, sigma, n = 0.1, 0.5, 0.3, 4000
    fisher = lam * np.eye(3) + RETAIN_GRADS.T @ RETAIN_GRADS / len(RETAIN_GRADS)
    want = np.sqrt(mu * sigma**2) * np_power(fisher, -0.5)
    noise = forgetting_noise_samples("fisher", lam, mu, sigma, n)
    got = noise.T @ noise / n  # the mean is zero by construction
    std_err = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / n)
    assert np.all(np.abs(got - want) < 4 * std_err), (got, want)
    assert abs(want[1, 2]) > 10 * std_err[1, 2]  # a correlation the diagonal shortcut would miss


# ------------------------------------------------------------------- bad input
def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match="chunk_size"):
        so.per_example_grads(logreg_loss, jnp.ones(4), (jnp.ones((3, 4)), jnp.ones(3)), 0)
    with pytest.raises(ValueError, match="examples"):
        so.per_example_grads(logreg_loss, jnp.ones(4), (jnp.ones((3, 4)), jnp.ones(2)))
    batch = (jnp.ones((3, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match="solver"):
        so.newton_update(logreg_loss, jnp.ones(4), batch, batch, lr=1.0, damping=0.0, solver="newton")
    with pytest.raises(ValueError, match="lissa_scale"):
        so.newton_update(logreg_loss, jnp.ones(4), batch, batch, lr=1.0, damping=0.0, solver="lissa")
    with pytest.raises(ValueError, match="sigma"):
        so.diagonal_fisher_noise(jax.random.PRNGKey(0), jnp.ones(3), damping=0.1, mu=1.0, sigma=-1.0)
    with pytest.raises(ValueError, match="mu"):
        so.fisher_noise(jax.random.PRNGKey(0), jnp.ones((2, 3)), damping=0.1, mu=-1.0, sigma=1.0)
    with pytest.raises(ValueError, match="noise_shape"):
        so.fisher_forgetting_update(logreg_loss, jnp.ones(4), batch, batch, key=jax.random.PRNGKey(0), lr=1.0,
                                    damping=0.1, mu=1.0, sigma=1.0, noise_shape="full")
    with pytest.raises(ValueError, match="forget_chunks"):
        so.unlearn_in_rounds(lambda p, c: (p, None), jnp.ones(2), [])
