"""Curvature-vector products on parameter pytrees: exact Hessian and Gauss-Newton.

- :func:`hvp`: ``∇²L(θ) v`` by forward-over-reverse differentiation (Pearlmutter 1994).
- :func:`gnvp`: the generalised Gauss-Newton product ``Jᵀ H_out J v`` (Schraudolph
  2002), with :func:`softmax_cross_entropy_hvp` the closed-form ``H_out u`` of softmax
  cross-entropy.
- :func:`hessian_curvature`, :func:`gauss_newton_curvature`: the same bound to a loss
  on a batch, as the :data:`CurvatureFn` ``(params, batch, v) -> C v`` that the solvers
  of ``jaxunlearn.solvers`` and :func:`jaxunlearn.secondorder.newton_update` consume.

No matrix is ever formed; every function is pure, jit-able and works on any pytree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["CurvatureFn", "LossFn", "PyTree", "gauss_newton_curvature", "gnvp", "hessian_curvature", "hvp",
           "softmax_cross_entropy_hvp"]

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]  # (params, batch) -> scalar mean loss
CurvatureFn = Callable[[PyTree, Any, PyTree], PyTree]  # (params, batch, v) -> C v


def hvp(loss_fn: Callable[[PyTree], jax.Array], params: PyTree, v: PyTree) -> PyTree:
    """Exact Hessian-vector product ``∇²L(θ) v`` by forward-over-reverse differentiation.

    ``jvp(grad L)`` at ``θ`` along ``v`` (Pearlmutter 1994): one gradient evaluation and
    its tangent, no Hessian ever formed.

    Args:
      loss_fn: ``params -> scalar``.
      params: any pytree of arrays.
      v: pytree with the structure, shapes and dtypes of ``params``.

    Returns:
      Pytree shaped like ``params``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def softmax_cross_entropy_hvp(logits: jax.Array, u: jax.Array, weights: jax.Array) -> jax.Array:
    """Closed-form Hessian of weighted softmax cross-entropy w.r.t. the logits, times ``u``.

    For ``L(z) = Σ_{bt} w_{bt}·(−log softmax(z_{bt})[y_{bt}])`` the Hessian is block
    diagonal over positions, ``w_{bt}·(diag(p) − p pᵀ)`` with ``p = softmax(z_{bt})``,
    whatever the labels ``y``, so::

        (H u)_{bt} = w_{bt}·(p ⊙ u_{bt} − p·(pᵀu_{bt}))

    For jaxunlearn's token NLL use ``weights = loss_mask / loss_mask.sum()``.

    Args:
      logits: ``[..., V]`` (e.g. ``[B, T, V]``).
      u: ``[..., V]`` tangent (``J v``).
      weights: ``[...]`` per-position loss weights.

    Returns:
      ``[..., V]`` in the dtype of ``u``.
    """
    # float32 softmax even for bf16 logits: p feeds a difference of two close terms.
    p = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    uf = u.astype(p.dtype)
    hu = p * uf - p * jnp.sum(p * uf, axis=-1, keepdims=True)
    return (weights[..., None].astype(p.dtype) * hu).astype(u.dtype)


def gnvp(
    model_fn: Callable[[PyTree], PyTree],
    out_loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    v: PyTree,
    *,
    output_hvp: Callable[[PyTree, PyTree], PyTree] | None = None,
) -> PyTree:
    """Generalised Gauss-Newton product ``Jᵀ H_out J v`` (Schraudolph 2002).

    ``J = ∂model_fn/∂θ`` at ``params`` and ``H_out = ∇²_z out_loss_fn(z)`` at the outputs
    ``z = model_fn(params)``. PSD whenever the output loss is convex in ``z`` (softmax
    cross-entropy, squared error), and for those it equals the Fisher information. One
    linearisation serves both ``J v`` and its transpose ``Jᵀ u``.

    Args:
      model_fn: ``params -> outputs`` (e.g. logits ``[B, T, V]``).
      out_loss_fn: ``outputs -> scalar``.
      params, v: pytrees of the same structure.
      output_hvp: optional closed form ``(outputs, u) -> H_out u`` (e.g.
        :func:`softmax_cross_entropy_hvp` with the loss weights bound); default: exact,
        by :func:`hvp` on ``out_loss_fn``.

    Returns:
      Pytree shaped like ``params``.
    """
    outputs, jvp_fn = jax.linearize(model_fn, params)
    jv = jvp_fn(v)
    h_jv = output_hvp(outputs, jv) if output_hvp is not None else hvp(out_loss_fn, outputs, jv)
    (jt_h_jv,) = jax.linear_transpose(jvp_fn, params)(h_jv)
    return jt_h_jv


def hessian_curvature(loss_fn: LossFn) -> CurvatureFn:
    """``(params, batch, v) -> ∇²_θ loss_fn(params, batch) v`` (exact, see :func:`hvp`)."""
    return lambda params, batch, v: hvp(lambda p: loss_fn(p, batch), params, v)


def gauss_newton_curvature(
    model_fn: Callable[[PyTree, Any], PyTree],
    out_loss_fn: Callable[[PyTree, Any], jax.Array],
    *,
    output_hvp: Callable[[PyTree, PyTree, Any], PyTree] | None = None,
) -> CurvatureFn:
    """``(params, batch, v) -> Jᵀ H_out J v`` for ``loss = out_loss_fn(model_fn(params, batch), batch)``.

    ``output_hvp(outputs, u, batch)``, if given, is the closed-form output Hessian product.
    """

    def curvature(params, batch, v):
        closed = None if output_hvp is None else (lambda z, u: output_hvp(z, u, batch))
        return gnvp(lambda p: model_fn(p, batch), lambda z: out_loss_fn(z, batch), params, v, output_hvp=closed)

    return curvature

