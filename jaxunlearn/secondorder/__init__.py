"""Second-order unlearning: curvature products, Fisher estimates and Newton-style removal.

Removing the forget set ``F`` from a model trained on ``D = R ∪ F`` (``R`` retained).
With a *sum*-form objective ``L = L_R + L_F``, the trained optimum has
``∇L_R(θ*) = −∇L_F(θ*)``; the model retrained on ``R`` solves ``∇L_R(θ_R) = 0``, and one
Newton step on ``L_R`` from ``θ*`` is the influence-function / certified-removal update
(Koh & Liang 2017, Eq. 2; Guo et al. 2020, Eq. 3)::

    θ_R ≈ θ* − H_R⁻¹ ∇L_R(θ*) = θ* + H_R⁻¹ ∇L_F(θ*)

It *adds* the preconditioned forget gradient: the loss on ``F`` goes up along directions
the retain curvature calls cheap. jaxunlearn losses are per-example *means* with any L2
term inside, ``loss(θ, B) = mean_{i∈B} ℓᵢ(θ) + (c/2)‖θ‖²`` (training minimises
``loss(·, D)``, retraining ``loss(·, R)``). Then ``n_D·loss(·, D) = n_R·loss(·, R) +
n_F·loss(·, F)`` exactly, so ``L_R = n_R·loss(·, R)``, ``L_F = n_F·loss(·, F)`` and::

    θ ← θ + η (H̄_R + λI)⁻¹ ∇loss(θ, F),   η = n_F / n_R  (dataset sizes, λ = 0)

with ``H̄_R`` the Hessian of ``loss(·, R)`` (``η = 1`` for sum-form losses; other values
are a step size, which Gu et al. tune). :func:`newton_update` solves the system by CG or
LiSSA on exact Hessian (or Gauss-Newton) products. Gu, Rashid, Sultana & Mehnaz (2024,
arXiv:2403.10557) replace ``H̄_R`` by the damped empirical Fisher of ``m`` retain
examples, inverted exactly by Woodbury ("Fisher Removal", :func:`fisher_removal_update`),
and add Gaussian noise ``(μσ²)^{1/4} F^{-1/4} n`` after Golatkar et al. (2020, Eq. 9)
("Fisher Forgetting", :func:`fisher_forgetting_update`). Sequential deletion requests
are folded with :func:`unlearn_in_rounds`.

Cost (P parameters, one "gradient" = one forward + backward on the batch):
  - ``hvp``: forward-over-reverse, ≈ 2–3 gradients of time (2.6x measured, jitted, CPU,
    3-layer MLP, batch 128) and ≈ 2x a gradient's activation memory.
  - ``gnvp``: one linearisation + ``J v`` + ``Jᵀ u`` ≈ 1.5–2 gradients (1.7x measured).
  - ``newton_update`` with CG/LiSSA, ``k`` iterations: 1 gradient + ``k`` curvature
    products ≈ ``2k–3k`` gradients of time; memory ≈ 4 extra parameter-sized vectors
    (CG's ``x, r, p, Ap``) plus one HVP's activations.
  - ``fisher_removal_update``: ``m`` per-example gradients (time ≈ ``m`` batch-of-one
    gradients, ``chunk_size`` at a time), memory ``m x P`` floats for ``G`` (the
    dominant term: ``m = 32`` on a 1B model is 32 extra model copies); the ``m x m``
    Gram and Cholesky are ``O(m²P + m³)`` and negligible next to it.
  - ``fisher_forgetting_update``: the same plus one Gaussian draw and one more
    ``O(mP)`` pass (``F^{-1/4}`` via an ``m x m`` eigendecomposition).

Every function is pure and jit-able, works on any pytree of arrays (sharded ones
included: only ``jax.tree`` maps and ``jnp`` ops touch the parameters).

Modules: ``products`` (``hvp``, ``gnvp``, curvature functions), ``fisher``
(per-example gradients, Fisher diagonal and noise), ``updates`` (Newton and Fisher
updates, rounds); the solvers they use (``conjugate_gradient``, ``lissa``,
``woodbury_inverse_fisher``, ``fisher_power``) are re-exported from ``jaxunlearn.solvers``.
"""

from jaxunlearn.secondorder.fisher import (diagonal_fisher, diagonal_fisher_noise, fisher_noise,
                                           inverse_fourth_root_diag_fisher, per_example_grads)
from jaxunlearn.secondorder.products import (CurvatureFn, gauss_newton_curvature, gnvp, hessian_curvature,
                                             hvp, softmax_cross_entropy_hvp)
from jaxunlearn.secondorder.updates import (UnlearnInfo, fisher_forgetting_update, fisher_removal_update,
                                            newton_update, unlearn_in_rounds)
from jaxunlearn.solvers import (FisherPower, InverseFisher, SolveResult, conjugate_gradient, fisher_power,
                                lissa, woodbury_inverse_fisher)

__all__ = [
    "CurvatureFn", "FisherPower", "InverseFisher", "SolveResult", "UnlearnInfo", "conjugate_gradient",
    "diagonal_fisher", "diagonal_fisher_noise", "fisher_forgetting_update", "fisher_noise", "fisher_power",
    "fisher_removal_update",
    "gauss_newton_curvature", "gnvp", "hessian_curvature", "hvp", "inverse_fourth_root_diag_fisher",
    "lissa", "newton_update", "per_example_grads", "softmax_cross_entropy_hvp", "unlearn_in_rounds",
    "woodbury_inverse_fisher",
]
