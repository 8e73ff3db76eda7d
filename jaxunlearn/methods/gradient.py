"""The gradient methods GA, GradDiff, NPO, SimNPO, IdkDPO, RMU, UNDIAL, WGA and RKLD.

Each is a frozen config whose ``forget_term`` composes ``jaxunlearn.losses`` on one
forward pass of the forget views (``models.outputs.ModelOutput``) and returns the
per-sequence ``[B]`` or per-token ``[B, T]`` values that ``GradientMethod.objective``
reduces exactly over an update (``methods.base``).

Defaults follow open-unlearning's ``configs/trainer/*.yaml`` (Dorna et al. 2025) and the
papers cited per method; ``paper_train`` records the learning rate and epochs they use
on TOFU (models fine-tuned from Llama 2/3 checkpoints, not the small from-scratch
models of the synthetic benchmark, which need larger rates: see ``experiments/``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import losses
from jaxunlearn.methods.base import (GradientMethod, labels_on_support, model_on_support,
                                     ref_on_support)
from jaxunlearn.methods.registry import MethodError, register

__all__ = ["GradAscent", "GradDiff", "NPO", "SimNPO", "IdkDPO", "RMU", "UNDIAL", "WGA", "RKLD",
           "answer_inputs"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Weighted(GradientMethod):
    """Ascent-style methods with per-sequence forget weights (memorisation weighting).

    ``weighting="memorization"`` weights forget answer ``b`` by its per-token probability
    under the target, ``w_b = exp(log p(y_b|x_b) / |y_b|)`` in (0, 1]: sequences the target
    reproduces best are pushed hardest, ones it barely knows are left mostly alone.
    """

    weightings: ClassVar[tuple[str, ...]] = ("uniform", "memorization")
    weighting: str = "uniform"

    def validate(self) -> None:
        super().validate()
        self._one_of("weighting", self.weightings)

    def sequence_weights(self, ref_logp: np.ndarray, num_tokens: np.ndarray) -> np.ndarray:
        if self.weighting == "uniform":
            return super().sequence_weights(ref_logp, num_tokens)
        return np.exp(ref_logp / np.maximum(num_tokens, 1.0)).astype(np.float32)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class GradAscent(_Weighted):
    """Gradient ascent on forget answers (Jang et al. 2023); no retain term by default.

    ``forget_term`` = the answer tokens' ``log p`` ``[B, T]``, averaged with token weights
    ``mask * w_b``: ``sum_b w_b log p(y_b|x_b) / sum_b w_b |y_b|``, which for uniform ``w``
    is ``losses.gradient_ascent`` (the token mean of log p, minimised).
    """

    name: ClassVar[str] = "grad_ascent"
    reference: ClassVar[str] = "Jang et al. 2023, 'Knowledge Unlearning for Mitigating Privacy Risks'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    alpha: float = 0.0

    def forget_term(self, outputs, forget, cache):
        return outputs["answer"].label_logprobs


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class GradDiff(GradAscent):
    """Gradient difference: ascent on forget plus descent on retain (Liu et al. 2022; TOFU)."""

    name: ClassVar[str] = "grad_diff"
    reference: ClassVar[str] = "Liu, Liu & Stone 2022, 'Continual Learning and Private Unlearning'; Maini et al. 2024 (TOFU)"
    alpha: float = 1.0


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class NPO(_Weighted):
    """Negative Preference Optimization (Zhang et al. 2024), ``2/beta`` scale kept.

    ``forget_term = npo_per_sequence(log p(y_b|x_b), log p_ref(y_b|x_b), beta)`` ``[B]``,
    averaged with weights ``w_b``, the reference log-probs cached from the target.
    """

    name: ClassVar[str] = "npo"
    reference: ClassVar[str] = "Zhang, Lin, Bai & Mei 2024, 'Negative Preference Optimization'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    beta: float = 0.1

    def validate(self) -> None:
        super().validate()
        self._at_least("beta", 0.0, strict=True)

    def cache_spec(self, model_config):
        return dataclasses.replace(super().cache_spec(model_config), ref_logp_views=("answer",))

    def forget_term(self, outputs, forget, cache):
        return losses.npo_per_sequence(outputs["answer"].sequence_logprob(),
                                       cache["ref_logp"]["answer"], self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class SimNPO(_Weighted):
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO; nothing to cache.

    ``forget_term = simnpo_per_sequence(log p(y_b|x_b), |y_b|, beta, delta)`` ``[B]``,
    averaged with weights ``w_b``; defaults
    beta 4.5, delta 0, gamma 0.125 as open-unlearning's TOFU config.
    """

    name: ClassVar[str] = "simnpo"
    reference: ClassVar[str] = "Fan et al. 2024, 'Simplicity Prevails: Rethinking Negative Preference Optimization'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    gamma: float = 0.125
    beta: float = 4.5
    delta: float = 0.0

    def validate(self) -> None:
        super().validate()
        self._at_least("beta", 0.0, strict=True)
        self._at_least("delta", 0.0)

    def forget_term(self, outputs, forget, cache):
        out = outputs["answer"]
        return losses.simnpo_per_sequence(out.sequence_logprob(), out.token_counts(), self.beta,
                                          self.delta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class IdkDPO(GradientMethod):
    """DPO with the refusal ("I don't know") answer preferred over the true one (TOFU).

    ``forget_term = dpo_per_sequence(log p(idk), log p(answer), ref(idk), ref(answer), beta)``
    ``[B]``; records without ``idk_answer`` get a fixed refusal (``data.forget_retain``).
    """

    name: ClassVar[str] = "idk_dpo"
    reference: ClassVar[str] = "Rafailov et al. 2023 (DPO); Maini et al. 2024 (TOFU); Zhang et al. 2024"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    forget_views: ClassVar[tuple[str, ...]] = ("answer", "idk")
    beta: float = 0.1

    def validate(self) -> None:
        super().validate()
        self._at_least("beta", 0.0, strict=True)

    def cache_spec(self, model_config):
        return dataclasses.replace(super().cache_spec(model_config),
                                   ref_logp_views=("answer", "idk"))

    def forget_term(self, outputs, forget, cache):
        ref = cache["ref_logp"]
        return losses.dpo_per_sequence(outputs["idk"].sequence_logprob(),
                                       outputs["answer"].sequence_logprob(), ref["idk"],
                                       ref["answer"], self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class RMU(GradientMethod):
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP), as open-unlearning.

    ``forget_term = rmu_forget_per_sequence(h_l(forget), c * u/|u|, m)``, ``retain_term =
    rmu_retain_per_sequence(h_l(retain), h_l^target(retain), m)`` (``retain_loss=
    "activation"``, the target's cached): each averaged over a sequence's answer
    positions, then over the sequences (``[B]`` terms, open-unlearning's
    ``compute_activation_loss``). ``h_l`` is the residual stream after block ``layer``;
    ``m`` marks the positions whose *input* token is an answer token (open-unlearning's
    ``labels != -100`` before the shift; our loss mask shifted right by one).

    ``layer=None``: block 7, open-unlearning's fixed ``module_regex: model\\.layers\\.7``
    (whatever the depth), when the model has more than 7 blocks; a shallower model has no
    block 7 and gets block ``num_layers // 2 - 1`` (at least 0), the relative depth block 7
    has in Llama-3.2-1B's 16 (the synthetic benchmark's small models take this branch).
    ``steering_coeff`` 2 is open-unlearning's TOFU value (WMDP used 6.5-20 on 7B models).
    All parameters are trained, as open-unlearning does.
    """

    name: ClassVar[str] = "rmu"
    reference: ClassVar[str] = "Li et al. 2024, 'The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    retain_losses: ClassVar[tuple[str, ...]] = ("activation", "nll", "kl")
    # open-unlearning's configs/trainer/RMU.yaml: module_regex model\.layers\.7
    REFERENCE_LAYER: ClassVar[int] = 7
    retain_loss: str = "activation"
    steering_coeff: float = 2.0
    layer: int | None = None

    def validate(self) -> None:
        super().validate()
        self._at_least("steering_coeff", 0.0, strict=True)
        if self.layer is not None:
            self._at_least("layer", 0)

    def hidden_layer(self, model_config) -> int:
        if self.layer is not None:
            return self.layer
        depth = model_config.num_layers
        return self.REFERENCE_LAYER if depth > self.REFERENCE_LAYER else max(depth // 2 - 1, 0)

    def check_model(self, model_config) -> None:
        if self.hidden_layer(model_config) >= model_config.num_layers:
            raise MethodError(f"method.layer: {self.layer} is out of range for a model with "
                              f"{model_config.num_layers} layers")

    def cache_spec(self, model_config):
        spec = super().cache_spec(model_config)
        return dataclasses.replace(spec, hidden_layer=self.hidden_layer(model_config))

    def forget_term(self, outputs, forget, cache):
        batch = forget["answer"]
        return losses.rmu_forget_per_sequence(outputs["answer"].hidden, cache["control"][0],
                                              answer_inputs(batch.loss_mask))

    def retain_term(self, output, retain, cache):
        if self.retain_loss != "activation":
            return super().retain_term(output, retain, cache)
        return losses.rmu_retain_per_sequence(output.hidden, cache["retain_hidden"],
                                              answer_inputs(retain.loss_mask))


def answer_inputs(loss_mask: jax.Array) -> jax.Array:
    """``[B, T]``: 1 where the *input* token is an answer token. ``loss_mask[t]`` marks
    label ``t`` = input ``t + 1``, so this is ``loss_mask`` shifted right by one."""
    return jnp.pad(loss_mask[:, :-1], ((0, 0), (1, 0)))


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UNDIAL(GradientMethod):
    """UNDIAL self-distillation (Dong et al. 2024): match the target with the label logit lowered.

    ``forget_term = undial_per_token(logits, target, labels, mask, beta)`` on the cached target
    distribution's support; defaults (beta 10, no retain term, lr 1e-4) are open-unlearning's.
    """

    name: ClassVar[str] = "undial"
    reference: ClassVar[str] = "Dong et al. 2024, 'UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-4, "epochs": 10}
    alpha: float = 0.0
    beta: float = 10.0

    def validate(self) -> None:
        super().validate()
        self._at_least("beta", 0.0)

    def cache_spec(self, model_config):
        return dataclasses.replace(super().cache_spec(model_config), forget_dist="reference")

    def forget_term(self, outputs, forget, cache):
        batch, dist = forget["answer"], cache["forget_dist"]
        return losses.undial_per_token(model_on_support(outputs["answer"].logits, dist),
                                       ref_on_support(dist), labels_on_support(batch.labels, dist),
                                       batch.loss_mask, self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class WGA(GradientMethod):
    """Weighted gradient ascent (Wang et al. 2025): tokens weighted by ``p(label)^beta``.

    ``forget_term = wga_per_token(logits, labels, mask, beta)`` ``[B, T]``.
    """

    name: ClassVar[str] = "wga"
    reference: ClassVar[str] = "Wang et al. 2025, 'Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 5}
    beta: float = 1.0

    def validate(self) -> None:
        super().validate()
        self._at_least("beta", 0.0)

    def forget_term(self, outputs, forget, cache):
        batch = forget["answer"]
        return losses.wga_per_token(outputs["answer"].logits, batch.labels, batch.loss_mask,
                                    self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class RKLD(GradientMethod):
    """RKLD (Wang et al. 2024, arXiv 2406.01983): reverse-KL distillation from an unlearning teacher.

    Before the loop, a copy of the target is fine-tuned further on the forget answers
    (``strengthen_epochs`` of token NLL at ``strengthen_learning_rate``, default the run's
    rate) into a *strengthened* model; the teacher is
    ``rkld_teacher(target_logits, strengthened_logits, teacher_alpha)``, which lowers exactly
    the tokens the strengthening raised, and is cached once (both models are never on the
    device during the loop). ``forget_term = reverse_kl_per_token(student, teacher)`` on forget
    answers.

    ``teacher_alpha`` is named apart from ``alpha``, the retain weight of every method.
    """

    name: ClassVar[str] = "rkld"
    reference: ClassVar[str] = "Wang, Zi, Sun, Zhao & Qin 2024, 'RKLD: Reverse KL-Divergence-based Knowledge Distillation for Unlearning Personal Information in LLMs'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 5}
    teacher_alpha: float = 1.0
    strengthen_epochs: int = 2
    strengthen_learning_rate: float | None = None

    def validate(self) -> None:
        super().validate()
        self._at_least("teacher_alpha", 0.0)
        self._at_least("strengthen_epochs", 1)
        if self.strengthen_learning_rate is not None:
            self._at_least("strengthen_learning_rate", 0.0, strict=True)

    def cache_spec(self, model_config):
        return dataclasses.replace(super().cache_spec(model_config), forget_dist="rkld_teacher")

    def forget_term(self, outputs, forget, cache):
        batch, dist = forget["answer"], cache["forget_dist"]
        return losses.reverse_kl_per_token(model_on_support(outputs["answer"].logits, dist),
                                           ref_on_support(dist), batch.loss_mask)
