"""Solvers for damped curvature systems ``(C + λI) x = b`` on parameter pytrees.

``C`` is never formed: it is a function ``v -> C v`` on pytrees shaped like the
parameters (an exact Hessian-vector product, a Gauss-Newton product, ...), so every
solver here works for any pytree of arrays, sharded or not, and traces once under
``jax.jit``. Only ``jax.tree`` maps and ``jnp`` reductions touch the parameters;
nothing is copied to the host and nothing is flattened into one vector (which would
gather a sharded model onto one device).

- :func:`conjugate_gradient`: Hestenes & Stiefel (1952), for symmetric positive
  definite ``C + λI``; stops early on non-positive curvature (indefinite Hessians).
- :func:`lissa`: the Neumann-series recursion of Agarwal, Bullins & Hazan (2017) in
  the form Koh & Liang (2017) use for influence functions.
- :func:`woodbury_inverse_fisher`: the exact inverse of a damped low-rank empirical
  Fisher ``λI + (1/m) Σᵢ gᵢgᵢᵀ`` through the Woodbury identity (Woodbury 1950), the
  closed form of the recursive rank-one inverse-Fisher updates of WoodFisher
  (Singh & Alistarh 2020) and M-FAC (Frantar et al. 2021).

Axis legend: ``m`` per-example gradients, ``P`` parameters (all leaves together).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any
MatVec = Callable[[PyTree], PyTree]


# ---------------------------------------------------------------- pytree algebra
def _acc_dtype(x: jax.Array) -> jnp.dtype:
    # Reductions accumulate in at least float32 even for bf16 parameters.
    return jnp.promote_types(x.dtype, jnp.float32)


def tree_vdot(x: PyTree, y: PyTree) -> jax.Array:
    """``Σ_leaves Σ_elements x·y`` as one scalar, accumulated in >= float32."""
    parts = jax.tree.map(lambda a, b: jnp.sum(a.astype(_acc_dtype(a)) * b.astype(_acc_dtype(b))), x, y)
    return jax.tree.reduce(jnp.add, parts, initializer=jnp.zeros((), jnp.float32))


def tree_norm(x: PyTree) -> jax.Array:
    """Euclidean norm of all leaves of ``x`` taken together."""
    return jnp.sqrt(tree_vdot(x, x))


def tree_axpy(a: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """``a·x + y`` leafwise, keeping the dtype of ``y``."""
    return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def tree_scale(a: jax.Array, x: PyTree) -> PyTree:
    """``a·x`` leafwise, keeping the dtype of ``x``."""
    return jax.tree.map(lambda xi: (a * xi).astype(xi.dtype), x)


def _check_number(name: str, value: Any, *, minimum: float, strict: bool) -> None:
    """Validate a Python number; traced values (inside ``jit``) are left to the caller."""
    if isinstance(value, Real):
        ok = value > minimum if strict else value >= minimum
        if not ok:
            op = ">" if strict else ">="
            raise ValueError(f"{name} must be {op} {minimum}, got {value!r}")


def _check_iters(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


class SolveResult(NamedTuple):
    """Outcome of an iterative (or direct) solve of ``(C + λI) x = b``.

    Attributes:
      solution: pytree shaped like ``b``.
      iterations: int32 scalar, curvature products spent (0 for a direct solve).
      residual_norm: ``‖b − (C + λI) x‖`` (CG: the recursive residual, equal to the true
        one in exact arithmetic).
      converged: bool scalar, ``residual_norm <= tol·‖b‖`` was reached.
    """

    solution: PyTree
    iterations: jax.Array
    residual_norm: jax.Array
    converged: jax.Array


# ------------------------------------------------------------ conjugate gradient
def conjugate_gradient(
    matvec: MatVec, b: PyTree, *, damping: float = 0.0, tol: float = 1e-6, max_iters: int = 100
) -> SolveResult:
    """Solve ``(C + λI) x = b`` by conjugate gradients, starting from ``x = 0``.

    Iteration (Hestenes & Stiefel 1952; Nocedal & Wright, Alg. 5.2) with ``A = C + λI``::

        α = rᵀr / pᵀAp;  x += α p;  r −= α Ap;  β = r'ᵀr' / rᵀr;  p = r' + β p

    Stops when ``‖r‖ <= tol·‖b‖``, after ``max_iters`` products, or as soon as
    ``pᵀAp <= 0`` (a non-convex Hessian: the step along ``p`` would be meaningless, so the
    last iterate is kept and ``converged`` is False — add damping).

    Args:
      matvec: ``v -> C v`` on pytrees shaped like ``b``; ``C`` symmetric.
      b: right-hand side pytree (e.g. a gradient, leaves of any shape ``[...]``).
      damping: ``λ >= 0`` added to the diagonal.
      tol: relative residual tolerance.
      max_iters: at most this many products with ``C`` (each ≈ 2 gradients for an HVP).

    Returns:
      :class:`SolveResult` with ``solution`` shaped like ``b``.
    """
    _check_number("damping", damping, minimum=0.0, strict=False)
    _check_number("tol", tol, minimum=0.0, strict=False)
    _check_iters("max_iters", max_iters)

    def damped(v):
        return tree_axpy(damping, v, matvec(v))

    b_norm = tree_norm(b)
    threshold = tol * b_norm
    x0 = jax.tree.map(jnp.zeros_like, b)
    rs0 = tree_vdot(b, b)

    def cond(state):
        k, _, _, _, rs, breakdown = state
        return (k < max_iters) & (jnp.sqrt(rs) > threshold) & ~breakdown

    def body(state):
        k, x, r, p, rs, _ = state
        ap = damped(p)
        curvature = tree_vdot(p, ap)
        breakdown = ~(curvature > 0)  # also catches NaN
        alpha = jnp.where(breakdown, 0.0, rs / jnp.where(breakdown, 1.0, curvature))
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        rs_new = jnp.where(breakdown, rs, tree_vdot(r, r))
        p = tree_axpy(rs_new / rs, p, r)
        return k + 1, x, r, p, rs_new, breakdown

    init = (jnp.zeros((), jnp.int32), x0, b, b, rs0, jnp.zeros((), bool))
    k, x, _, _, rs, _ = jax.lax.while_loop(cond, body, init)
    residual = jnp.sqrt(rs)
    return SolveResult(x, k, residual, residual <= threshold)


# -------------------------------------------------------------------------- LiSSA
def lissa(
    matvec: MatVec,
    b: PyTree,
    *,
    damping: float = 0.0,
    scale: float,
    num_iters: int = 100,
    tol: float = 0.0,
) -> SolveResult:
    """Solve ``(C + λI) x = b`` with the LiSSA / truncated Neumann series recursion.

    Koh & Liang (2017, §3) after Agarwal et al. (2017), with ``A = C + λI`` and ``s = scale``::

        x₀ = b,   xⱼ = b + (I − A/s) xⱼ₋₁,   solution = xⱼ / s

    ``xⱼ/s = Σ_{i<=j} (I − A/s)ⁱ b / s → A⁻¹ b`` when ``0 < A < 2s``, i.e. ``scale`` must
    exceed half the largest eigenvalue of ``C + λI`` (take it above the largest to be
    safe); the error shrinks by ``1 − λ_min(A)/s`` per step. Written as
    ``xⱼ = xⱼ₋₁ + rⱼ₋₁`` with ``rⱼ = b − A xⱼ/s``, so the residual of the returned
    solution is known exactly at no extra cost and equals the next LiSSA change
    ``xⱼ₊₁ − xⱼ``: the "relative change below tol" test is ``‖r‖ <= tol·‖b‖``.

    Args:
      matvec: ``v -> C v`` on pytrees shaped like ``b``.
      b: right-hand side pytree.
      damping: ``λ >= 0``.
      scale: ``s > 0``, see above.
      num_iters: at most this many products with ``C``.
      tol: stop early when ``‖r‖ <= tol·‖b‖``; 0 runs exactly ``num_iters`` steps.

    Returns:
      :class:`SolveResult`; ``residual_norm`` is ``‖b − (C + λI)·solution‖``.
    """
    _check_number("damping", damping, minimum=0.0, strict=False)
    _check_number("scale", scale, minimum=0.0, strict=True)
    _check_number("tol", tol, minimum=0.0, strict=False)
    _check_iters("num_iters", num_iters)

    threshold = tol * tree_norm(b)

    def cond(state):
        k, _, _, r_norm = state
        return (k < num_iters) & (r_norm > threshold)

    def body(state):
        k, x, r, _ = state
        x = jax.tree.map(jnp.add, x, r)
        ax = tree_axpy(damping, x, matvec(x))
        r = tree_axpy(-1.0 / scale, ax, b)
        return k + 1, x, r, tree_norm(r)

    x0 = jax.tree.map(jnp.zeros_like, b)  # so that the first step gives x₀ = b
    init = (jnp.zeros((), jnp.int32), x0, b, tree_norm(b))
    k, x, _, r_norm = jax.lax.while_loop(cond, body, init)
    return SolveResult(tree_scale(1.0 / scale, x), k, r_norm, r_norm <= threshold)


# ------------------------------------------------------ Woodbury inverse Fisher
def _num_examples(grads: PyTree) -> int:
    leaves = jax.tree.leaves(grads)
    if not leaves:
        raise ValueError("per_example_grads is an empty pytree")
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"per_example_grads leaves must share a leading example axis [m, ...]; got leading sizes {sorted(map(str, sizes))}"
        )
    m = sizes.pop()
    if m < 1:
        raise ValueError("per_example_grads holds no examples (m = 0)")
    return m


def _contract(g: jax.Array, v: jax.Array) -> jax.Array:
    """``[m, ...] x [...] -> [m]``: the ``G v`` part of one leaf."""
    dtype = jnp.promote_types(_acc_dtype(g), _acc_dtype(v))
    axes = (tuple(range(1, g.ndim)), tuple(range(v.ndim)))
    return jnp.tensordot(g.astype(dtype), v.astype(dtype), axes=axes, precision=jax.lax.Precision.HIGHEST)


def _gram(g: jax.Array) -> jax.Array:
    """``[m, ...] -> [m, m]``: the ``G Gᵀ`` part of one leaf."""
    g = g.astype(_acc_dtype(g))
    axes = (tuple(range(1, g.ndim)), tuple(range(1, g.ndim)))
    return jnp.tensordot(g, g, axes=axes, precision=jax.lax.Precision.HIGHEST)


def _expand(g: jax.Array, c: jax.Array) -> jax.Array:
    """``[m, ...] x [m] -> [...]``: the ``Gᵀ c`` part of one leaf, in the leaf's dtype."""
    out = jnp.tensordot(c, g.astype(c.dtype), axes=(0, 0), precision=jax.lax.Precision.HIGHEST)
    return out.astype(g.dtype)


class InverseFisher(NamedTuple):
    """``v -> F⁻¹ v`` for ``F = λI + (1/m) GᵀG`` (a pytree, so it can cross ``jit``).

    Attributes:
      grads: per-example gradients, leaves ``[m, ...]`` (``G`` is ``[m, P]`` flattened).
      cholesky: ``[m, m]`` lower Cholesky factor of ``mλI + G Gᵀ``.
      damping: ``λ > 0``.
    """

    grads: PyTree
    cholesky: jax.Array
    damping: jax.Array

    def _gv(self, v: PyTree) -> jax.Array:
        parts = jax.tree.map(_contract, self.grads, v)
        return jax.tree.reduce(jnp.add, parts)

    def __call__(self, v: PyTree) -> PyTree:
        """``F⁻¹ v = (v − Gᵀ (mλI + G Gᵀ)⁻¹ G v) / λ``; ``v`` shaped like the parameters."""
        gv = self._gv(v)  # [m]
        c = jax.scipy.linalg.cho_solve((self.cholesky, True), gv.astype(self.cholesky.dtype))
        correction = jax.tree.map(lambda g: _expand(g, c), self.grads)
        return jax.tree.map(lambda vi, ci: ((vi - ci) / self.damping).astype(vi.dtype), v, correction)

    def fisher_matvec(self, v: PyTree) -> PyTree:
        """``F v = λv + (1/m) Gᵀ(G v)`` (the forward product, for residual checks)."""
        m = self.cholesky.shape[0]
        c = self._gv(v) / m
        return jax.tree.map(lambda g, vi: (self.damping * vi + _expand(g, c)).astype(vi.dtype), self.grads, v)


def woodbury_inverse_fisher(per_example_grads: PyTree, damping: float) -> InverseFisher:
    """Exact inverse of the damped empirical Fisher of ``m`` per-example gradients.

    With ``G`` the ``[m, P]`` matrix whose rows are the flattened gradients ``gᵢ``::

        F = λI + (1/m) Σᵢ gᵢgᵢᵀ = λI + (1/m) GᵀG
        F⁻¹ v = (v − Gᵀ (mλI + G Gᵀ)⁻¹ G v) / λ          (Woodbury identity)

    The ``m x m`` matrix ``mλI + G Gᵀ`` is formed and Cholesky-factored once here; each
    application then costs two passes over ``G`` (``O(mP)``) and an ``m x m``
    triangular solve. This equals, in exact arithmetic, the recursive rank-one
    (Sherman-Morrison) inverse-Fisher estimate of WoodFisher / M-FAC that Gu et al.
    (2024, arXiv:2403.10557) use for Fisher Removal, with ``F̂₀⁻¹ = λ⁻¹I``.

    Args:
      per_example_grads: pytree with leaves ``[m, ...]``, e.g. from
        :func:`jaxunlearn.secondorder.per_example_grads`.
      damping: ``λ > 0`` (the identity term; without it ``F`` has rank ``<= m < P``).

    Returns:
      :class:`InverseFisher`, callable as ``v -> F⁻¹ v`` on parameter-shaped pytrees.
    """
    _check_number("damping", damping, minimum=0.0, strict=True)
    m = _num_examples(per_example_grads)
    gram = jax.tree.reduce(jnp.add, jax.tree.map(_gram, per_example_grads))  # [m, m]
    system = gram + (m * damping) * jnp.eye(m, dtype=gram.dtype)
    cholesky = jnp.linalg.cholesky(system)
    return InverseFisher(per_example_grads, cholesky, jnp.asarray(damping, gram.dtype))


class FisherPower(NamedTuple):
    """``v -> Fᵃ v`` for ``F = λI + (1/m) GᵀG``, any real power ``a`` (a pytree).

    Attributes:
      grads: per-example gradients, leaves ``[m, ...]``.
      eigvecs: ``[m, m]`` eigenvectors ``U`` of the scaled Gram ``K = G Gᵀ / m``.
      coeffs: ``[m]`` per-eigenvector coefficients, see :func:`fisher_power`.
      base: ``λᵃ``.
    """

    grads: PyTree
    eigvecs: jax.Array
    coeffs: jax.Array
    base: jax.Array

    def __call__(self, v: PyTree) -> PyTree:
        gv = jax.tree.reduce(jnp.add, jax.tree.map(_contract, self.grads, v))  # [m]
        c = self.eigvecs @ (self.coeffs * (self.eigvecs.T @ gv.astype(self.eigvecs.dtype)))
        return jax.tree.map(lambda vi, g: (self.base * vi + _expand(g, c)).astype(vi.dtype), v, self.grads)


def fisher_power(per_example_grads: PyTree, damping: float, power: float) -> FisherPower:
    """Exact matrix power ``Fᵃ`` of the damped low-rank empirical Fisher.

    ``F = λI + (1/m) GᵀG`` has eigenvalue ``λ`` off the row space of ``G`` and
    ``λ + sₖ`` on it, where ``K = G Gᵀ/m = U diag(s) Uᵀ`` (the directions are
    ``Gᵀuₖ / sqrt(m sₖ)``). Hence::

        Fᵃ v = λᵃ v + Gᵀ U diag(cₖ) Uᵀ G v,   cₖ = ((λ + sₖ)ᵃ − λᵃ) / (m sₖ)

    with ``cₖ`` evaluated as ``λᵃ expm1(a log1p(sₖ/λ)) / (m sₖ)`` (no cancellation) and
    its limit ``a λ^{a−1} / m`` at ``sₖ = 0``. ``a = −1`` is the Woodbury inverse;
    ``a = −1/4`` shapes the Fisher Forgetting noise (Gu et al. 2024, ``H^{-1/4}``).
    Cost as for :func:`woodbury_inverse_fisher`, with an ``m x m`` eigendecomposition.

    Args:
      per_example_grads: pytree with leaves ``[m, ...]``.
      damping: ``λ > 0``.
      power: the exponent ``a`` (a Python number).

    Returns:
      :class:`FisherPower`, callable as ``v -> Fᵃ v`` on parameter-shaped pytrees.
    """
    _check_number("damping", damping, minimum=0.0, strict=True)
    m = _num_examples(per_example_grads)
    gram = jax.tree.reduce(jnp.add, jax.tree.map(_gram, per_example_grads)) / m
    s, u = jnp.linalg.eigh(gram)
    s = jnp.maximum(s, 0.0)  # round-off can make a zero eigenvalue slightly negative
    lam = jnp.asarray(damping, gram.dtype)
    base = lam**power
    tiny = s <= jnp.finfo(gram.dtype).eps * lam
    safe = jnp.where(tiny, 1.0, s)
    coeffs = jnp.where(tiny, power * lam ** (power - 1), base * jnp.expm1(power * jnp.log1p(safe / lam)) / safe) / m
    return FisherPower(per_example_grads, u, coeffs, base)
