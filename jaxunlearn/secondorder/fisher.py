"""Per-example gradients, the empirical Fisher they define, and Fisher-shaped noise.

- :func:`per_example_grads`: ``gᵢ = ∇_θ loss(θ, {xᵢ})`` for ``m`` examples, vectorised
  in chunks; the rows of the damped empirical Fisher ``F = λI + (1/m) Σᵢ gᵢgᵢᵀ``
  (inverted by ``jaxunlearn.solvers.woodbury_inverse_fisher``).
- :func:`diagonal_fisher`, :func:`inverse_fourth_root_diag_fisher`: its diagonal, streamed.
- :func:`fisher_noise`, :func:`diagonal_fisher_noise`: the Gaussian noise
  ``(μσ²)^{1/4} F^{-1/4} n`` of Fisher Forgetting (Golatkar et al. 2020, Eq. 9; Gu et
  al. 2024), exact or diagonal.

Axis legend: ``m`` examples, ``P`` parameters (all leaves together).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxunlearn.secondorder.products import LossFn, PyTree
from jaxunlearn.solvers import _check_number, fisher_power

__all__ = ["diagonal_fisher", "diagonal_fisher_noise", "fisher_noise", "inverse_fourth_root_diag_fisher",
           "per_example_grads"]


def _num_examples(examples: PyTree) -> int:
    sizes = {x.shape[0] if jnp.ndim(x) else None for x in jax.tree.leaves(examples)}
    if len(sizes) != 1 or None in sizes or 0 in sizes:
        raise ValueError(f"examples must be a non-empty pytree of arrays sharing a leading example axis; got {sizes}")
    return sizes.pop()


def _check_chunk(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")


def _example_grad(loss_fn: LossFn, params: PyTree) -> Callable[[PyTree], PyTree]:
    # Each example goes to loss_fn as a batch of one, so batch-level losses work unchanged.
    return lambda ex: jax.grad(loss_fn)(params, jax.tree.map(lambda x: x[None], ex))


def per_example_grads(loss_fn: LossFn, params: PyTree, examples: PyTree, chunk_size: int | None = None) -> PyTree:
    """Gradient of ``loss_fn`` on each example separately: ``gᵢ = ∇_θ loss_fn(θ, {xᵢ})``.

    ``jax.vmap(jax.grad)`` over ``chunk_size`` examples at a time, ``lax.map`` across
    chunks (a remainder chunk is handled), so peak activation memory is that of a batch
    of ``chunk_size``.

    Args:
      loss_fn: ``(params, batch) -> scalar``; called with each example as a batch of one
        (every leaf of the example gets a leading axis of size 1).
      params: pytree.
      examples: pytree whose leaves share a leading axis ``[m, ...]`` (e.g. a ``Batch``).
      chunk_size: examples per vectorised chunk; None = all ``m`` at once.

    Returns:
      Pytree shaped like ``params`` with a leading example axis: leaves ``[m, ...]``.
    """
    _check_chunk(chunk_size)
    m = _num_examples(examples)
    return jax.lax.map(_example_grad(loss_fn, params), examples, batch_size=min(chunk_size or m, m))


def diagonal_fisher(loss_fn: LossFn, params: PyTree, examples: PyTree, chunk_size: int | None = None) -> PyTree:
    """Diagonal empirical Fisher ``(1/m) Σᵢ gᵢ ⊙ gᵢ`` over per-example gradients.

    Streams over chunks (a ``lax.scan`` accumulates the squares), so memory is
    ``chunk_size x P`` rather than the ``m x P`` of :func:`per_example_grads`.

    Args:
      loss_fn, params, examples, chunk_size: as for :func:`per_example_grads`.

    Returns:
      Pytree shaped like ``params``, entries >= 0.
    """
    _check_chunk(chunk_size)
    m = _num_examples(examples)
    c = min(chunk_size or m, m)
    n_full, rest = divmod(m, c)
    grad_fn = jax.vmap(_example_grad(loss_fn, params))

    def sq_sum(chunk):
        return jax.tree.map(lambda g: jnp.sum(jnp.square(g.astype(jnp.promote_types(g.dtype, jnp.float32))), 0),
                            grad_fn(chunk))

    head = jax.tree.map(lambda x: x[: n_full * c].reshape(n_full, c, *x.shape[1:]), examples)
    zeros = jax.eval_shape(sq_sum, jax.tree.map(lambda x: x[0], head))
    total, _ = jax.lax.scan(lambda acc, ch: (jax.tree.map(jnp.add, acc, sq_sum(ch)), None),
                            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros), head)
    if rest:
        total = jax.tree.map(jnp.add, total, sq_sum(jax.tree.map(lambda x: x[n_full * c:], examples)))
    return jax.tree.map(lambda t, p: (t / m).astype(p.dtype), total, params)


def inverse_fourth_root_diag_fisher(diag_fisher: PyTree, damping: float) -> PyTree:
    """``(diag F + λ)^{-1/4}`` elementwise, the noise shaping of diagonal Fisher Forgetting.

    Args:
      diag_fisher: pytree of non-negative Fisher diagonals.
      damping: ``λ > 0`` (keeps parameters with zero Fisher finite).
    """
    _check_number("damping", damping, minimum=0.0, strict=True)
    return jax.tree.map(lambda f: (f + damping) ** -0.25, diag_fisher)


def _standard_normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    dtypes = [jnp.promote_types(x.dtype, jnp.float32) for x in leaves]
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, d) for x, k, d in zip(leaves, keys, dtypes)])


def _noise_amplitude(mu: float, sigma: float):
    _check_number("mu", mu, minimum=0.0, strict=False)
    _check_number("sigma", sigma, minimum=0.0, strict=False)
    return (mu * sigma**2) ** 0.25


def fisher_noise(key: jax.Array, per_example_grads: PyTree, *, damping: float, mu: float, sigma: float) -> PyTree:
    """Gaussian noise ``(μσ²)^{1/4} F^{-1/4} n``, ``n ~ N(0, I)``, ``F = λI + (1/m) GᵀG``.

    The noise term of Gu et al. (2024, noisy Newton update ``θ + H⁻¹Δ + (μσ²)^{1/4} H^{-1/4} n``,
    from Golatkar, Achille & Soatto 2020, Eq. 9, whose ``λ, σ_h`` are our ``μ, σ``) with
    ``H`` the same damped empirical Fisher as Fisher Removal. Its covariance is
    ``(μσ²)^{1/2} F^{-1/2}``: little noise along directions the retain data pin down,
    ``(μσ²/λ)^{1/4}`` off the span of the gradients. ``F^{-1/4}`` is applied exactly
    (:func:`jaxunlearn.solvers.fisher_power`).

    Args:
      key: PRNG key.
      per_example_grads: retain gradients, leaves ``[m, ...]``.
      damping: ``λ > 0``.
      mu, sigma: ``>= 0``, the privacy knob ``μσ²`` (see :func:`fisher_forgetting_update`).

    Returns:
      Pytree shaped like one gradient (leaves ``[...]``), float32 or wider.
    """
    amplitude = _noise_amplitude(mu, sigma)
    n = _standard_normal_like(key, jax.tree.map(lambda g: g[0], per_example_grads))
    grads = jax.tree.map(lambda g, x: g.astype(x.dtype), per_example_grads, n)
    return jax.tree.map(lambda x: amplitude * x, fisher_power(grads, damping, -0.25)(n))


def diagonal_fisher_noise(key: jax.Array, diag_fisher: PyTree, *, damping: float, mu: float, sigma: float) -> PyTree:
    """Gaussian noise ``(μσ²)^{1/4} (diag F + λ)^{-1/4} ⊙ n``, the diagonal shortcut.

    Per coordinate the standard deviation is ``(μσ²)^{1/4} (Fᵢᵢ + λ)^{-1/4}``, as in
    Golatkar et al.'s (2020) diagonal Fisher Forgetting; cheaper than :func:`fisher_noise`
    when ``diag F`` is already at hand (no per-example gradients kept).

    Returns:
      Pytree shaped like ``diag_fisher``, float32 or wider.
    """
    amplitude = _noise_amplitude(mu, sigma)
    shaping = inverse_fourth_root_diag_fisher(diag_fisher, damping)
    n = _standard_normal_like(key, shaping)
    return jax.tree.map(lambda s, x: amplitude * s * x, shaping, n)

