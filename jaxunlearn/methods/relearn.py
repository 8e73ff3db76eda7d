"""ReLearn: unlearning by learning vague, fact-free answers (Xu et al. 2025).

Xu et al. 2025, "ReLearn: Unlearning via Learning for Large Language Models"
(arXiv 2502.11190; code zjunlp/unlearn, ``baselines/src/iterative_trainer.py``, loss
types ``relearn``, ``relearn_gdr``, ``relearn_klr``, ``relearn_klr_gdr``). Instead of pushing
the forget answers down (gradient ascent and its relatives, which wreck fluency), ReLearn
*fine-tunes* on an augmented forget set: each forget question rephrased, put in context,
typed with noise, reversed, each paired with a vague answer that names no private fact
(``data.augment.augment_forget_set``, whose exact filter drops every item containing a
fact of any forget record). With retain regularisation the loss is

``L = gamma * NLL(augmented forget answers) + alpha * R``,
``R = KL(target || model) + NLL`` on retain answers (``retain_loss="kl+nll"``, their
``relearn_klr_gdr``, the paper's default); ``"kl"`` = ``relearn_klr``; ``"nll"`` =
``relearn_gdr``; ``alpha = 0`` = plain ``relearn``.

Convention: their KL is ``F.kl_div(..., reduction="batchmean")`` over every position of
the retain batch (prompt and padding included) divided by the number of rows; ours is
``losses.forward_kl``, the mean over *answer* tokens, like every other KL retain term
here (a different scale: tune ``alpha`` accordingly). The target's retain distributions
are cached once (``ref_top_k``, see ``methods.base``), so the frozen reference is
never on the device during training. Training is full fine-tuning, or LoRA adapters with
``model.lora`` (their script uses LoRA rank 32, alpha 32, lr 1e-4, 2 epochs).

The optimisation itself is the shared gradient loop (``UnlearnContext.run_gradient``,
injected by ``methods.runner``) over the augmented records, each forget row paired
with a retain row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax

from jaxunlearn import losses
from jaxunlearn.data.augment import TemplateAugmenter, augment_forget_set
from jaxunlearn.errors import DataError
from jaxunlearn.methods.base import (CacheSpec, GradientMethod, ProcedureMethod, UnlearnContext,
                                     UnlearnResult, model_on_support, ref_on_support)
from jaxunlearn.methods.registry import register

__all__ = ["ReLearn", "ReLearnObjective", "augmented_forget_records"]


def augmented_forget_records(forget_records: Sequence[Mapping], *, seed: int,
                             num_typos: int = 2, completions: bool = True) -> list[dict]:
    """ReLearn's training forget set: ``augment_forget_set`` with the default templates.

    Returns ``{"question", "answer", "variant", "source_index", ...}`` records, none of
    which contains a fact of any forget record.

    Raises:
      DataError: when the filter leaves nothing to train on.
    """
    aug = augment_forget_set(forget_records, seed=seed,
                             augmenter=TemplateAugmenter(num_typos=num_typos,
                                                         completions=completions))
    if not aug:
        raise DataError("forget split: ReLearn's augmentation left no record (every variant "
                        "contained a forget fact)")
    return aug


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReLearnObjective(GradientMethod):
    """The gradient objective ReLearn trains with (not registered: :class:`ReLearn` is).

    ``forget_term`` = per-token NLL on the (augmented) forget answers, minimised;
    ``retain_term`` = per-token ``forward_kl`` (cached target) ``+`` NLL on retain answers,
    or one of them (``retain_loss``); both token means.
    """

    name: ClassVar[str] = "relearn"
    retain_losses: ClassVar[tuple[str, ...]] = ("kl+nll", "kl", "nll")
    retain_loss: str = "kl+nll"

    def cache_spec(self, model_config: Any) -> CacheSpec:
        return CacheSpec(retain_dist=self.alpha > 0 and "kl" in self.retain_loss,
                                 top_k=self.ref_top_k)

    def forget_term(self, outputs, forget, cache):
        return -outputs["answer"].label_logprobs

    def retain_term(self, output, retain, cache) -> jax.Array:
        nll = -output.label_logprobs
        if self.retain_loss == "nll":
            return nll
        dist = cache["retain_dist"]
        kl = losses.forward_kl_per_token(model_on_support(output.logits, dist),
                                         ref_on_support(dist), retain.loss_mask)
        return kl if self.retain_loss == "kl" else kl + nll


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class ReLearn(ProcedureMethod):
    """ReLearn (see the module doc): augment the forget set, then fine-tune on it.

    Attributes:
      gamma: weight of the augmented-forget NLL.
      alpha: weight of the retain term; retain_loss: ``kl+nll``, ``kl`` or ``nll``.
      ref_top_k: tokens kept per position of the cached target distribution (None = all
        when they fit in memory, else ``AUTO_TOP_K``; 0 = all; see ``methods.base``).
      num_typos, completions: ``data.augment.TemplateAugmenter`` settings.
    """

    name: ClassVar[str] = "relearn"
    trains_lora: ClassVar[bool] = True
    reference: ClassVar[str] = ("Xu et al. 2025, 'ReLearn: Unlearning via Learning for Large "
                                "Language Models'")
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-4, "epochs": 2}
    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "kl+nll"
    ref_top_k: int | None = None
    num_typos: int = 2
    completions: bool = True

    def validate(self) -> None:
        self.objective_method()  # the shared checks, naming method.<field>
        self._at_least("num_typos", 1)

    def objective_method(self) -> ReLearnObjective:
        """The gradient method the shared loop runs, with this config's weights."""
        return ReLearnObjective(gamma=self.gamma, alpha=self.alpha,
                                retain_loss=self.retain_loss, ref_top_k=self.ref_top_k)

    def run(self, context: UnlearnContext) -> UnlearnResult:
        records = augmented_forget_records(context.forget_records, seed=context.seed,
                                           num_typos=self.num_typos,
                                           completions=self.completions)
        return context.run_gradient(
            self.objective_method(), [{"question": r["question"], "answer": r["answer"]}
                                      for r in records], context.retain_records)
