"""jaxunlearn.solvers: CG and LiSSA against NumPy's dense solves and the truncated Neumann
series; the Woodbury inverse and the powers of a damped empirical Fisher against dense
matrix functions. float64 throughout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from jaxunlearn import solvers


@pytest.fixture(autouse=True)
def x64():
    # float64 only inside these tests: the context manager restores the global flag.
    with jax.enable_x64(True):
        yield


def spd_system(n=8, seed=0, low=0.5, high=3.0):
    r = np.random.default_rng(seed)
    q, _ = np.linalg.qr(r.normal(size=(n, n)))
    a = q @ np.diag(np.linspace(low, high, n)) @ q.T
    return a, r.normal(size=n)


def as_tree(vec):
    return {"head": jnp.asarray(vec[:3]), "tail": jnp.asarray(vec[3:]).reshape(-1, 1)}


def from_tree(tree):
    return np.concatenate([np.asarray(tree["head"]), np.asarray(tree["tail"]).reshape(-1)])


def from_tree_jnp(tree):
    return jnp.concatenate([tree["head"], tree["tail"].reshape(-1)])


def test_cg_and_lissa_solve_random_spd_systems():
    lam = 0.1

    def solve(a, b):  # the matrix is an argument, so each jit below compiles once for all seeds
        matvec = lambda t: as_tree(a @ from_tree_jnp(t))
        cg = solvers.conjugate_gradient(matvec, as_tree(b), damping=lam, tol=1e-12, max_iters=50)
        ls = solvers.lissa(matvec, as_tree(b), damping=lam, scale=3.5, num_iters=2000, tol=1e-12)
        return cg, ls

    jitted = jax.jit(solve)
    for seed in range(3):
        a, b = spd_system(seed=seed)
        want = np.linalg.solve(a + lam * np.eye(8), b)
        cg, ls = jitted(jnp.asarray(a), jnp.asarray(b))
        assert bool(cg.converged) and int(cg.iterations) <= 10
        np.testing.assert_allclose(from_tree(cg.solution), want, rtol=1e-9)
        true_res = np.linalg.norm(b - (a + lam * np.eye(8)) @ from_tree(cg.solution))
        assert float(cg.residual_norm) <= 1e-12 * np.linalg.norm(b) and true_res < 1e-10

        assert bool(ls.converged) and int(ls.iterations) < 2000
        np.testing.assert_allclose(from_tree(ls.solution), want, rtol=1e-9)
        assert np.linalg.norm(b - (a + lam * np.eye(8)) @ from_tree(ls.solution)) < 1e-10

    eager_cg, eager_ls = solve(jnp.asarray(a), jnp.asarray(b))  # jit == no-jit
    np.testing.assert_allclose(from_tree(eager_cg.solution), from_tree(cg.solution), rtol=1e-12)
    np.testing.assert_allclose(from_tree(eager_ls.solution), from_tree(ls.solution), rtol=1e-12)


def test_lissa_is_the_truncated_neumann_series():
    a, b = spd_system(seed=4)
    lam, s, k = 0.2, 4.0, 6
    step = np.eye(8) - (a + lam * np.eye(8)) / s
    want = sum(np.linalg.matrix_power(step, i) @ b for i in range(k)) / s
    res = solvers.lissa(lambda t: as_tree(jnp.asarray(a) @ from_tree_jnp(t)), as_tree(b), damping=lam, scale=s, num_iters=k)
    assert int(res.iterations) == k and not bool(res.converged)
    np.testing.assert_allclose(from_tree(res.solution), want, rtol=1e-12)
    true_res = np.linalg.norm(b - (a + lam * np.eye(8)) @ want)
    np.testing.assert_allclose(float(res.residual_norm), true_res, rtol=1e-10)


def test_cg_stops_on_negative_curvature_and_zero_rhs():
    a = jnp.diag(jnp.asarray([1.0, -1.0]))
    res = solvers.conjugate_gradient(lambda v: a @ v, jnp.ones(2), max_iters=10)
    assert int(res.iterations) == 1 and not bool(res.converged)
    np.testing.assert_array_equal(np.asarray(res.solution), np.zeros(2))
    zero = solvers.conjugate_gradient(lambda v: v, jnp.zeros(3), max_iters=10)
    assert int(zero.iterations) == 0 and bool(zero.converged)


@pytest.mark.parametrize("m", [4, 15])
def test_woodbury_inverse_fisher_equals_dense_inverse(m):
    r = np.random.default_rng(m)
    grads = {"w": jnp.asarray(r.normal(size=(m, 3, 2))), "b": jnp.asarray(r.normal(size=(m, 4)))}
    g = np.concatenate([np.asarray(grads["b"]), np.asarray(grads["w"]).reshape(m, -1)], axis=1)  # ravel order
    lam = 0.3
    fisher = lam * np.eye(10) + g.T @ g / m
    v = {"w": jnp.asarray(r.normal(size=(3, 2))), "b": jnp.asarray(r.normal(size=4))}
    inv = solvers.woodbury_inverse_fisher(grads, lam)
    np.testing.assert_allclose(ravel_pytree(inv(v))[0], np.linalg.solve(fisher, ravel_pytree(v)[0]), rtol=1e-10)
    np.testing.assert_allclose(ravel_pytree(inv.fisher_matvec(v))[0], fisher @ ravel_pytree(v)[0], rtol=1e-12)
    jitted = jax.jit(lambda gr, u: solvers.woodbury_inverse_fisher(gr, lam)(u))(grads, v)
    np.testing.assert_allclose(ravel_pytree(jitted)[0], ravel_pytree(inv(v))[0], rtol=1e-12)



def np_power(sym, a):
    w, q = np.linalg.eigh(sym)
    return (q * w**a) @ q.T


@pytest.mark.parametrize("m", [3, 14])
@pytest.mark.parametrize("power", [-1.0, -0.25, 0.5])
def test_fisher_power_equals_dense_matrix_power(m, power):
    r = np.random.default_rng(m)
    grads = {"w": jnp.asarray(r.normal(size=(m, 2, 3))), "b": jnp.asarray(r.normal(size=(m, 4)))}
    g = np.concatenate([np.asarray(grads["b"]), np.asarray(grads["w"]).reshape(m, -1)], axis=1)
    lam = 0.2
    fisher = lam * np.eye(10) + g.T @ g / m  # m = 14 > P = 10: the Gram has zero eigenvalues
    v = {"w": jnp.asarray(r.normal(size=(2, 3))), "b": jnp.asarray(r.normal(size=4))}
    got = ravel_pytree(solvers.fisher_power(grads, lam, power)(v))[0]
    np.testing.assert_allclose(got, np_power(fisher, power) @ ravel_pytree(v)[0], rtol=1e-9, atol=1e-12)


def test_bad_arguments_name_the_field():
    b = jnp.ones(3)
    with pytest.raises(ValueError, match="damping"):
        solvers.conjugate_gradient(lambda v: v, b, damping=-1.0)
    with pytest.raises(ValueError, match="max_iters"):
        solvers.conjugate_gradient(lambda v: v, b, max_iters=0)
    with pytest.raises(ValueError, match="scale"):
        solvers.lissa(lambda v: v, b, scale=0.0)
    with pytest.raises(ValueError, match="damping"):
        solvers.woodbury_inverse_fisher({"w": jnp.ones((2, 3))}, 0.0)
    with pytest.raises(ValueError, match="per_example_grads"):
        solvers.woodbury_inverse_fisher({"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}, 0.1)


def test_tree_norm_is_the_norm_of_all_leaves():
    assert solvers.tree_norm({"a": jnp.asarray([3.0]), "b": jnp.asarray([[4.0]])}) == 5.0
