"""Unlearning updates: one (damped) Newton step that removes the forget set.

- :func:`newton_update`: ``θ ← θ + η (C_R + λI)⁻¹ ∇loss(θ, F)`` with CG or LiSSA on a
  curvature product (influence functions, certified removal);
- :func:`fisher_removal_update`, :func:`fisher_forgetting_update`: the same step with the
  damped empirical Fisher, inverted exactly, plus Fisher-shaped noise for the latter
  (Gu et al. 2024);
- :func:`unlearn_in_rounds`: sequential deletion requests, one update per chunk.

The sign, the step size ``η`` and the costs are in the ``jaxunlearn.secondorder``
package docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxunlearn.secondorder.fisher import diagonal_fisher_noise, fisher_noise, per_example_grads
from jaxunlearn.secondorder.products import CurvatureFn, LossFn, PyTree, hessian_curvature
from jaxunlearn.solvers import (SolveResult, conjugate_gradient, lissa, tree_axpy, tree_norm,
                                woodbury_inverse_fisher)

__all__ = ["UnlearnInfo", "fisher_forgetting_update", "fisher_removal_update", "newton_update",
           "unlearn_in_rounds"]


class UnlearnInfo(NamedTuple):
    """Diagnostics of one unlearning update (scalars).

    Attributes:
      forget_loss: ``loss(θ, F)`` before the update.
      forget_grad_norm: ``‖∇loss(θ, F)‖``.
      step_norm: ``‖η·(C + λI)⁻¹∇loss(θ, F)‖``, the deterministic part of the move.
      noise_norm: norm of the added noise (0 without noise).
      solver_iterations: curvature products spent (0 for the direct Woodbury solve).
      solver_residual_norm: ``‖∇loss(θ, F) − (C + λI)·solution‖``.
      solver_converged: CG/LiSSA reached ``tol``; for Woodbury: the step is finite.
    """

    forget_loss: jax.Array
    forget_grad_norm: jax.Array
    step_norm: jax.Array
    noise_norm: jax.Array
    solver_iterations: jax.Array
    solver_residual_norm: jax.Array
    solver_converged: jax.Array


def _apply_step(params, lr, solve: SolveResult, forget_loss, grad, noise=None):
    new_params = tree_axpy(lr, solve.solution, params)
    noise_norm = jnp.zeros((), solve.residual_norm.dtype)
    if noise is not None:
        new_params = jax.tree.map(lambda p, n: (p + n).astype(p.dtype), new_params, noise)
        noise_norm = tree_norm(noise)
    info = UnlearnInfo(forget_loss, tree_norm(grad), jnp.abs(lr) * tree_norm(solve.solution), noise_norm,
                       solve.iterations, solve.residual_norm, solve.converged)
    return new_params, info


def newton_update(
    loss_fn: LossFn,
    params: PyTree,
    forget_batch: Any,
    retain_batch: Any,
    *,
    lr: float,
    damping: float,
    curvature: CurvatureFn | None = None,
    solver: str = "cg",
    max_iters: int = 100,
    tol: float = 1e-6,
    lissa_scale: float | None = None,
) -> tuple[PyTree, UnlearnInfo]:
    """Influence-function removal: ``θ ← θ + η (C_R + λI)⁻¹ ∇loss(θ, F)``.

    ``C_R`` is the curvature of the retain objective at ``θ``: the exact Hessian of
    ``loss_fn(·, retain_batch)`` by default (Koh & Liang 2017; Guo et al. 2020), or any
    :data:`CurvatureFn` such as :func:`gauss_newton_curvature`. See the module docstring
    for the sign and for ``η = n_forget / n_retain`` with mean losses.

    Args:
      loss_fn: ``(params, batch) -> scalar`` mean loss (regulariser included, if any).
      params: pytree (the trained model).
      forget_batch: data to remove, passed to ``loss_fn`` as is.
      retain_batch: data the curvature is measured on (a sample of the retain set).
      lr: ``η``, see above.
      damping: ``λ >= 0`` added to the curvature (needed when it is indefinite/singular).
      curvature: ``(params, batch, v) -> C v``; None = exact Hessian of ``loss_fn``.
      solver: ``"cg"`` (:func:`conjugate_gradient`) or ``"lissa"`` (:func:`lissa`).
      max_iters: CG iterations / LiSSA steps.
      tol: relative residual tolerance of the solver (LiSSA: 0 runs all steps).
      lissa_scale: LiSSA's ``scale`` (> largest eigenvalue of ``C + λI``); required for LiSSA.

    Returns:
      ``(new_params, UnlearnInfo)``.
    """
    if solver not in ("cg", "lissa"):
        raise ValueError(f"solver must be 'cg' or 'lissa', got {solver!r}")
    if solver == "lissa" and lissa_scale is None:
        raise ValueError("lissa_scale must be given when solver='lissa'")
    curvature = curvature if curvature is not None else hessian_curvature(loss_fn)
    forget_loss, grad = jax.value_and_grad(loss_fn)(params, forget_batch)

    def matvec(v):
        return curvature(params, retain_batch, v)

    if solver == "cg":
        solve = conjugate_gradient(matvec, grad, damping=damping, tol=tol, max_iters=max_iters)
    else:
        solve = lissa(matvec, grad, damping=damping, scale=lissa_scale, num_iters=max_iters, tol=tol)
    return _apply_step(params, lr, solve, forget_loss, grad)


def _fisher_solve(loss_fn, params, forget_batch, retain_examples, damping, chunk_size):
    forget_loss, grad = jax.value_and_grad(loss_fn)(params, forget_batch)
    grads = per_example_grads(loss_fn, params, retain_examples, chunk_size)
    inverse = woodbury_inverse_fisher(grads, damping)
    step = inverse(grad)
    residual = tree_norm(jax.tree.map(jnp.subtract, grad, inverse.fisher_matvec(step)))
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(s)) for s in jax.tree.leaves(step)]))
    solve = SolveResult(step, jnp.zeros((), jnp.int32), residual, finite)
    return forget_loss, grad, grads, solve


def fisher_removal_update(
    loss_fn: LossFn,
    params: PyTree,
    forget_batch: Any,
    retain_examples: Any,
    *,
    lr: float,
    damping: float,
    chunk_size: int | None = None,
) -> tuple[PyTree, UnlearnInfo]:
    """Fisher Removal (Gu et al. 2024): ``θ ← θ + η F⁻¹ ∇loss(θ, F)``.

    ``F = λI + (1/m) Σᵢ gᵢgᵢᵀ`` is the damped empirical Fisher of the ``m`` retain examples
    (``gᵢ`` from :func:`per_example_grads`), standing in for the retain Hessian of
    :func:`newton_update` and applied exactly by :func:`woodbury_inverse_fisher`.

    Args:
      loss_fn: ``(params, batch) -> scalar`` mean loss.
      params: pytree.
      forget_batch: data to remove.
      retain_examples: ``m`` retain examples (leaves ``[m, ...]``), e.g. a ``Batch``.
      lr: ``η`` (``n_forget / n_retain`` is the Newton value, Gu et al. tune it).
      damping: ``λ > 0``.
      chunk_size: examples per vectorised per-example-gradient chunk.

    Returns:
      ``(new_params, UnlearnInfo)``.
    """
    forget_loss, grad, _, solve = _fisher_solve(loss_fn, params, forget_batch, retain_examples, damping, chunk_size)
    return _apply_step(params, lr, solve, forget_loss, grad)


def fisher_forgetting_update(
    loss_fn: LossFn,
    params: PyTree,
    forget_batch: Any,
    retain_examples: Any,
    *,
    key: jax.Array,
    lr: float,
    damping: float,
    mu: float,
    sigma: float,
    noise_shape: str = "fisher",
    chunk_size: int | None = None,
) -> tuple[PyTree, UnlearnInfo]:
    """Fisher Forgetting (Gu et al. 2024): Fisher Removal plus Fisher-shaped Gaussian noise.

    ``θ ← θ + η F⁻¹ ∇loss(θ, F) + (μσ²)^{1/4} S n``, ``n ~ N(0, I)``, where ``S`` is
    ``F^{-1/4}`` for the same damped empirical Fisher ``F`` (``noise_shape="fisher"``,
    the paper's ``H^{-1/4}``, :func:`fisher_noise`) or ``(diag F + λ)^{-1/4}``
    (``"diagonal"``, :func:`diagonal_fisher_noise`); both come from the same ``m``
    gradients, no extra pass. ``μσ²`` is the privacy knob: the noise masks what the
    Newton step leaves of the forget data (its approximation error, large for a
    non-convex LLM), so the result is harder to tell from a retrained model — larger
    ``μσ²`` means more indistinguishability and less utility; ``μ = 0`` or ``σ = 0``
    gives exactly :func:`fisher_removal_update`.

    Args:
      key: PRNG key for ``n``.
      mu: ``μ >= 0``, Golatkar et al.'s ``λ`` (weight of residual information vs. utility).
      sigma: ``σ >= 0``, their ``σ_h``, the scale of the noise the reference
        (retrained) model is compared under.
      noise_shape: ``"fisher"`` or ``"diagonal"``.
      Other arguments as for :func:`fisher_removal_update`.

    Returns:
      ``(new_params, UnlearnInfo)`` with ``noise_norm`` set.
    """
    if noise_shape not in ("fisher", "diagonal"):
        raise ValueError(f"noise_shape must be 'fisher' or 'diagonal', got {noise_shape!r}")
    forget_loss, grad, grads, solve = _fisher_solve(loss_fn, params, forget_batch, retain_examples, damping, chunk_size)
    if noise_shape == "fisher":
        noise = fisher_noise(key, grads, damping=damping, mu=mu, sigma=sigma)
    else:
        diag = jax.tree.map(lambda g: jnp.mean(jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32))), 0), grads)
        noise = diagonal_fisher_noise(key, diag, damping=damping, mu=mu, sigma=sigma)
    return _apply_step(params, lr, solve, forget_loss, grad, noise)


def unlearn_in_rounds(
    update: Callable[..., tuple[PyTree, UnlearnInfo]],
    params: PyTree,
    forget_chunks: Sequence[Any],
    *,
    key: jax.Array | None = None,
) -> tuple[PyTree, tuple[UnlearnInfo, ...]]:
    """Sequential deletion requests: each chunk is removed from the latest model.

    ``params ← update(params, chunk)`` (or ``update(params, chunk, key_j)`` with
    ``key_j = fold_in(key, j)`` when ``key`` is given), for ``j, chunk`` in order. A chunk
    is passed through untouched, so it can carry the round's forget batch together with
    what changes per round (the retain set still containing later chunks, ``η``, ...).

    Returns:
      ``(final_params, infos)`` with one :class:`UnlearnInfo` per round.
    """
    if len(forget_chunks) == 0:
        raise ValueError("forget_chunks must hold at least one chunk")
    infos = []
    for j, chunk in enumerate(forget_chunks):
        if key is None:
            params, info = update(params, chunk)
        else:
            params, info = update(params, chunk, jax.random.fold_in(key, j))
        infos.append(info)
    return params, tuple(infos)
