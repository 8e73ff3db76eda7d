"""Second-order unlearning in the method registry: ``newton``, ``fisher_removal``, ``fisher_forgetting``.

Each round removes one chunk ``F_j`` of the forget set from the current model with a
preconditioned *ascent* step on the answer NLL (``jaxunlearn.secondorder``; see its
package docstring for the sign and normalisation)::

    θ ← θ + η_j (C_R(θ) + λI)⁻¹ ∇loss(θ, F_j)   [+ (μσ²)^{1/4} F^{-1/4} n]

``loss`` is the token-mean answer NLL the target was trained with
(``methods.curvature.answer_nll``, the one NLL objective of ``train.nll``), ``C_R``
the retain curvature measured on ``m`` retain examples drawn afresh each round:

- ``newton``: the Gauss-Newton matrix ``Jᵀ H_out J`` (default: PSD, so CG is well posed
  on a non-convex LLM) or the exact Hessian, solved by CG or LiSSA with Hessian-free
  products (Koh & Liang 2017; Guo et al. 2020);
- ``fisher_removal``: the damped empirical Fisher ``λI + (1/m) Σ gᵢgᵢᵀ`` of the ``m``
  per-example retain gradients, inverted exactly by Woodbury (Gu, Rashid, Sultana &
  Mehnaz 2024, "Second-Order Information Matters", arXiv 2403.10557);
- ``fisher_forgetting``: the same plus Fisher-shaped Gaussian noise (their Fisher
  Forgetting, after Golatkar et al. 2020); ``mu = 0`` or ``sigma = 0`` is Fisher Removal.

The rounds, the step size ``η_j`` and the memory layout are those of the shared
procedure, ``methods.secondorder_rounds`` (:class:`SecondOrderMethod`,
``second_order_unlearn``); this module holds the three registered methods.

Defaults: chosen on the embedded benchmark's ``small`` model (2 layers, 0.66M
parameters, 10 people: forget10 = 20 QA, retain90 = 180 QA, all recalled; η = 0.109),
measuring the mean per-token answer probability of the forget / retain sets (target
0.947 / 0.944), one round, one pass:

  ===========================================  =============  =============
  setting                                       forget prob    retain prob
  ===========================================  =============  =============
  newton GN, CG 20, m 32, λ 1.0                 0.941          0.934 (m)
  newton GN, CG 20, m 32, λ 0.1                 0.877          0.933 (m)
  newton GN, CG 20, m 32, λ 0.03                0.672          0.930 (m)
  newton GN, CG 20, m 32, λ 0.01  (default)     0.302          0.886
  newton GN, CG 60, m 32, λ 0.01                0.303          0.909 (m)
  newton GN, m 32, λ 0.1, 3 passes              0.008          0.504 (m)
  fisher_removal m 32, λ 0.1                    0.839          0.925 (m)
  fisher_removal m 32, λ 0.03                   0.501          0.834 (m)
  fisher_removal m 64, λ 0.02  (default)        0.307          0.802
  fisher_removal m 128, λ 0.02                  0.316          0.809
  fisher_removal m 128, λ 0.01                  0.053          0.479 (m)
  fisher_forgetting default (μ 1e-6, σ 1e-4)    0.306          0.802
  ===========================================  =============  =============

(retain prob over all 180 retain answers; (m): over the round's m-sample only.) So the
textbook step size is kept (``lr_scale = 1``) and ``λ`` is the knob: off the span of the
retain curvature the step is ``η ∇loss(F)/λ``, plain gradient ascent, and with
``λ → 0`` it grows without bound (λ 1e-3 wipes both sets). The Gauss-Newton curvature of
32 answers (every token and vocabulary direction) covers far more of the parameter
space than 64 rank-one Fisher terms, hence Newton's better retain probability at the
same forget probability. ``fisher_forgetting``'s default noise is small: off the
gradients' span its per-weight standard deviation is ``(μσ²/λ)^{1/4} ≈ 8e-4`` (weights
are ~2e-2); ``μσ² = 1e-6`` would give 0.08 and destroy the model.

Cost of one update, P parameters, ``k`` CG iterations, ``m`` retain answers, ``|F_j|``
forget answers; measured on CPU (2 cores shared with other jobs, so times are ±30%),
T = 64, |F_j| = 16, micro_batch 8, compiled ``update_fn`` (``memory_analysis()`` temp
bytes, in parameter copies; gradient of 16 rows for comparison)::

                               tiny (125k params)         small (656k params)
  gradient, 16 rows            0.07 s    12 MiB (26 P)    0.24 s    32 MiB (13 P)
  newton  k 10, m 32           1.6 s     14 MiB (29 P)    5.2 s     35 MiB (14 P)
  newton  k 20, m 32           3.1 s     14 MiB           10.8 s    35 MiB
  newton  k 40, m 32           6.3 s     14 MiB           19.7 s    35 MiB
  newton  k 20, m 16 / 64      1.6 / 8.4 s   14 MiB       5.2 / 14.3 s  35 MiB
  one GN / Hessian product, 32 rows                       0.41 / 0.78 s  27 / 58 MiB
  fisher_removal m 16/32/64    0.10/0.13/0.57 s  20/31/62 MiB   0.67/1.0/1.7 s  82/162/323 MiB
  fisher_forgetting m 32       0.14 s    32 MiB           0.69 s    167 MiB

  - ``newton``: time ∝ ``|F_j| + k·m`` (one GN product ≈ 0.85 gradients of the same rows,
    a Hessian product ≈ 1.6); memory independent of ``k`` and ``m``: CG's 4 vectors plus
    one micro-batch's product activations, i.e. ~6 parameter-sized vectors with the
    parameters and the gradient (Llama-3.2-1B in float32: ~30 GB); ``k·m`` sets the time
    (k 20, m 32: about 17 gradient evaluations of a 32-answer batch).
  - ``fisher_removal``: time ∝ ``|F_j| + m`` (per-example gradients), memory ≈ ``2·m·P``
    floats (the gradients and a stacked copy; measured 2.0·m copies), the limit on large
    models: Llama-3.2-1B in float32 needs ~10 GB per unit of m (m 8: 80 GB).
  - ``fisher_forgetting``: as ``fisher_removal`` plus one Gaussian draw and an ``m x m``
    eigendecomposition (negligible).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from jaxunlearn import secondorder
from jaxunlearn.methods import curvature
from jaxunlearn.methods.registry import register
from jaxunlearn.methods.secondorder_rounds import SecondOrderMethod

__all__ = ["SecondOrderMethod", "Newton", "FisherRemoval", "FisherForgetting"]


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Newton(SecondOrderMethod):
    """Influence-function removal ``θ ← θ + η (C_R + λI)⁻¹ ∇loss(θ, F_j)`` solved iteratively.

    Attributes:
      curvature: ``gauss_newton`` (PSD; default) or ``hessian`` (exact, indefinite away
        from a minimum: CG stops at the first negative curvature, so damp it).
      solver: ``cg`` or ``lissa``.
      iterations: CG iterations / LiSSA steps (curvature products) per round.
      tol: relative residual at which the solver stops (LiSSA: 0 runs every step).
      lissa_scale: LiSSA's ``s`` (above the largest eigenvalue of ``C + λI``); None =
        twice a 20-product power-iteration estimate of it.
    """

    name: ClassVar[str] = "newton"
    reference: ClassVar[str] = ("Koh & Liang 2017, 'Understanding Black-box Predictions via "
                                "Influence Functions'; Guo et al. 2020, 'Certified Data Removal'")
    curvatures: ClassVar[tuple[str, ...]] = ("gauss_newton", "hessian")
    solvers: ClassVar[tuple[str, ...]] = ("cg", "lissa")

    curvature: str = "gauss_newton"
    solver: str = "cg"
    iterations: int = 20
    tol: float = 1e-3
    lissa_scale: float | None = None

    def validate(self) -> None:
        super().validate()
        self._one_of("curvature", self.curvatures)
        self._one_of("solver", self.solvers)
        self._at_least("iterations", 1)
        self._at_least("tol", 0.0)
        if self.lissa_scale is not None:
            self._at_least("lissa_scale", 0.0, strict=True)

    def update_fn(self, graphdef):
        loss_fn = curvature.answer_nll(graphdef)
        curv = curvature.curvature_product(graphdef, self.curvature)

        def update(params, forget, retain, key, lr):
            del key  # deterministic
            scale = self.lissa_scale
            if self.solver == "lissa" and scale is None:
                scale = 2.0 * curvature.largest_eigenvalue(lambda v: curv(params, retain, v), params,
                                                  self.damping)
            return secondorder.newton_update(
                loss_fn, params, forget, retain, lr=lr, damping=self.damping, curvature=curv,
                solver=self.solver, max_iters=self.iterations, tol=self.tol, lissa_scale=scale)

        return update


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class FisherRemoval(SecondOrderMethod):
    """Fisher Removal (Gu et al. 2024): ``θ ← θ + η (λI + (1/m) GᵀG)⁻¹ ∇loss(θ, F_j)``.

    ``G`` holds the ``m = retain_samples`` per-example retain gradients; the inverse is
    exact (Woodbury), so there is no solver to tune, only ``λ`` and ``m``.
    """

    name: ClassVar[str] = "fisher_removal"
    reference: ClassVar[str] = ("Gu, Rashid, Sultana & Mehnaz 2024, 'Second-Order Information "
                                "Matters: Revisiting Machine Unlearning for Large Language Models'")

    damping: float = 0.02
    retain_samples: int = 64

    def retain_layout(self) -> str:
        return "examples"

    def update_fn(self, graphdef):
        loss_fn = curvature.answer_nll(graphdef)

        def update(params, forget, retain, key, lr):
            del key
            return secondorder.fisher_removal_update(loss_fn, params, forget, retain, lr=lr,
                                                     damping=self.damping,
                                                     chunk_size=self.micro_batch)

        return update


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class FisherForgetting(FisherRemoval):
    """Fisher Forgetting (Gu et al. 2024): Fisher Removal ``+ (μσ²)^{1/4} S n``, ``n ~ N(0, I)``.

    Attributes:
      mu, sigma: ``>= 0``; the noise amplitude is ``(μσ²)^{1/4}`` (``0`` = Fisher Removal).
      noise_shape: ``fisher`` (``S = F^{-1/4}`` of the damped empirical Fisher, the
        paper's ``H^{-1/4}``) or ``diagonal`` (``S = (diag F + λ)^{-1/4}``).
    """

    name: ClassVar[str] = "fisher_forgetting"
    noise_shapes: ClassVar[tuple[str, ...]] = ("fisher", "diagonal")

    mu: float = 1e-6
    sigma: float = 1e-4
    noise_shape: str = "fisher"

    def validate(self) -> None:
        super().validate()
        self._at_least("mu", 0.0)
        self._at_least("sigma", 0.0)
        self._one_of("noise_shape", self.noise_shapes)

    def update_fn(self, graphdef):
        loss_fn = curvature.answer_nll(graphdef)

        def update(params, forget, retain, key, lr):
            return secondorder.fisher_forgetting_update(
                loss_fn, params, forget, retain, key=key, lr=lr, damping=self.damping,
                mu=self.mu, sigma=self.sigma, noise_shape=self.noise_shape,
                chunk_size=self.micro_batch)

        return update
