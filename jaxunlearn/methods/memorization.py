"""Memorisation-aware unlearning: Selective Gradient Ascent (SGA) and TAU.

Barbulescu & Triantafillou, ICML 2024, "To Each (Textual Sequence) Its Own: Improving
Memorized-Data Unlearning in Large Language Models" (code:
GeorgeOctavian/selective_unlearning, ``gpt_neo_pl.Neo`` and ``gpt_neo_av.NeoAV``).
Plain gradient ascent treats every forget sequence alike, so lightly memorised ones are
driven far below what a model that never saw them would score (itself a membership
signal) while the most memorised ones are still extractable. Both methods here act per
sequence, on its memorisation accuracy ``MA_n`` (``eval.sequence_memorization``), re-measured on the
whole forget set after every epoch:

* **SGA** (``sga``). Each update ascends only on the rows of its batch with
  ``MA_b >= threshold`` (0.70) plus the batch's most memorised row: gradient ascent's
  forget term (``methods.gradient.GradAscent``) with row weights ``w_b = 1[MA_b >= tau
  or b = argmax MA]`` (an unselected row adds exactly zero gradient), i.e. the
  token-mean log-likelihood of the selected rows, minimised. Training stops once the
  forget set's mean MA falls below the stop level. ``threshold=0`` is plain gradient
  ascent (every row selected).
* **TAU** (``tau``). SGA until mean MA < ``switch_ma`` (0.50) gives ``theta_s``; then
  gradient *descent* on every forget sequence (no selection; same optimiser state, as
  their code) gives ``theta``, and after each epoch the edited model
  ``theta_s + coef * (theta - theta_s)`` (``coef = -1``) is scored; it is returned once
  its mean MA is below the stop level. ``switch_ma=None`` skips the ascent phase: the
  classic task-arithmetic baseline ``theta_0 - lambda (theta_ft - theta_0)`` (Ilharco et
  al. 2023) with ``coef = -lambda``; their "TA" run is ``threshold=0, switch_ma=0.9,
  coef=-3``.

Stop level: by default the mean MA of *never-seen* sequences of the same kind measured
on the model before unlearning (heldout canaries for canaries, holdout people's QA for
people), i.e. forget until the forget set looks like data the model never saw;
``stop_ma`` fixes it instead (their code: 0.33), and without never-seen sequences 0.33
is used.

Memorisation weighting for the ascent objectives (``weighting``): ``select`` (SGA's 0/1),
``ma`` (``w_b = MA_b``) or ``prob`` (``w_b = exp(log p(y_b|x_b) / |y_b|)``, from the
per-sequence loss), re-measured each epoch, for ``objective`` ``ga``, ``npo`` or
``simnpo``: the forget terms of ``GradAscent``, ``NPO`` and ``SimNPO`` themselves
(``GradientMethod.forget_objective``), with these row weights. TAU's fine-tuning phase
minimises the one NLL objective (``train.nll.nll_objective``).

Neither method has a retain term (their code has none); retain records are unused.
Shapes: N forget sequences, B rows per update, T positions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.eval import scoring
from jaxunlearn.eval import sequence_memorization as memscore
from jaxunlearn.methods.base import (GradientMethod, ProcedureMethod, UnlearnContext,
                                     UnlearnResult)
from jaxunlearn.methods.gradient import NPO, GradAscent, SimNPO
from jaxunlearn.methods.registry import MethodError, register
from jaxunlearn.train import loop as loop_lib
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train import step as step_lib
from jaxunlearn.train.nll import nll_objective

__all__ = ["DEFAULT_STOP_MA", "sga_weights", "memorization_weights", "task_arithmetic",
           "ascent_objective", "MemUnlearnOutput", "memorization_unlearn", "SGA", "TAU"]

DEFAULT_STOP_MA = 0.33  # their ``ma_threshold``, used when no never-seen data is given
_DEFAULT_BETA = {"npo": 0.1, "simnpo": 4.5}


def sga_weights(ma: jax.Array, threshold: float) -> jax.Array:
    """SGA's selection ``w_b = 1[MA_b >= threshold  or  b = argmax_b' MA_b']``: ``[B] -> [B]``.

    Ties for the maximum go to the first row, as their ``cur_mem > max_cur_mem`` loop.
    Returns float32 0/1 row weights (``cache["weight"]`` of :func:`ascent_objective`).
    """
    ma = jnp.asarray(ma, jnp.float32)
    top = jnp.arange(ma.shape[0]) == jnp.argmax(ma)
    return ((ma >= threshold) | top).astype(jnp.float32)


def memorization_weights(weighting: str, ma: jax.Array, mean_logprob: jax.Array,
                         threshold: float) -> jax.Array:
    """Per-row forget weights ``[B]`` from the rows' latest MA and mean log-prob ``[B]``.

    ``select``: :func:`sga_weights`; ``ma``: ``MA_b``; ``prob``: ``exp(mean log p_b)``
    (per-token probability, a soft version of selecting by per-sequence loss);
    ``uniform``: ones (plain ascent / the fine-tuning phase of TAU).
    """
    if weighting == "select":
        return sga_weights(ma, threshold)
    if weighting == "ma":
        return jnp.asarray(ma, jnp.float32)
    if weighting == "prob":
        return jnp.exp(jnp.asarray(mean_logprob, jnp.float32))
    if weighting == "uniform":
        return jnp.ones(jnp.shape(ma), jnp.float32)
    raise ValueError(f"weighting: expected select, ma, prob or uniform, got {weighting!r}")


@jax.jit
def task_arithmetic(anchor: Any, finetuned: Any, coef: float) -> Any:
    """``anchor + coef * (finetuned - anchor)`` leaf by leaf (Ilharco et al. 2023, eq. 1).

    TAU: ``anchor = theta_s`` (after SGA), ``coef = -1``; classic task negation:
    ``anchor = theta_0``, ``coef = -lambda``. Any matching pytrees (``nnx.State``).
    """
    return jax.tree.map(lambda a, f: a + jnp.asarray(coef, a.dtype) * (f - a), anchor, finetuned)


# ------------------------------------------------------------------------------ the loop


class MemUnlearnOutput(NamedTuple):
    """Result of :func:`memorization_unlearn`.

    Attributes:
      model: the unlearned model (a new ``Llama``).
      history: one record per update (``step``, ``epoch``, ``phase`` 0 ascent / 1
        fine-tune, ``loss``, ``grad_norm``, ``selected``, ...); the last update of each
        epoch also has ``ma/mean``, ``ma/max``, ``ma/extractable``, ``ma/over_unlearned``
        of the model the epoch ends with (TAU: the edited model), and ``stop_ma``.
      ma_before, ma_after: ``[N]`` per-sequence MA of the target and the result.
      never_seen_ma: ``[M]`` MA of the never-seen sequences on the target (or None).
      stop_ma: the stop level used; stop_source: ``never_seen``, ``fixed`` or ``default``.
      stopped: ``stop level`` (reached) or ``budget`` (epochs/steps ran out first).
      anchor, finetuned: TAU's ``theta_s`` and ``theta`` parameters (None for SGA).
    """

    model: Any
    history: list[dict]
    ma_before: np.ndarray
    ma_after: np.ndarray
    never_seen_ma: np.ndarray | None
    stop_ma: float
    stop_source: str
    stopped: str
    anchor: Any = None
    finetuned: Any = None


def ascent_objective(method: "SGA", graphdef: nnx.GraphDef, model_config: Any
                     ) -> step_lib.Objective:
    """SGA's update: the forget term of ``method.ascent_method()`` with per-row weights.

    Batches: ``{"forget": {"answer": Batch [B, T]}, "cache": {"weight": [B], "ref_logp":
    {"answer": [B]}}}`` (``ref_logp``: the target's per-sequence log-probs, read by
    ``npo`` only). With ``objective="ga"`` the loss is ``sum_b w_b log p(y_b|x_b) / sum_b
    w_b |y_b|`` (their SGA loss, ``-CrossEntropy`` of the selected rows), minimised.

    Metrics: those of ``GradientMethod.forget_objective`` (``forget_loss``, ``forget_prob``
    of every row) and ``selected`` (rows with ``w_b > 0`` in the update).
    """
    base = method.ascent_method().forget_objective(graphdef, model_config)

    def loss(params, batch, key, totals):
        share, metrics = base.loss(params, batch, key, totals)
        selected = jnp.sum(batch["cache"]["weight"] > 0).astype(jnp.float32)
        return share, {**metrics, "selected": selected}

    return step_lib.Objective(counts=base.counts, loss=loss)


def _ma_record(ma: np.ndarray, stop: float) -> dict[str, float]:
    s = memscore.summarize_ma(ma)
    return {"ma/mean": s.mean, "ma/max": s.max, "ma/extractable": float(s.extractable),
            "ma/over_unlearned": float(s.over_unlearned), "stop_ma": float(stop)}


def _stop_level(method, tokenizer, never_seen_records, target, *, pad, max_len, truncate):
    """``(stop MA, source, never-seen MA [M] or None)``: ``method.stop_ma`` if set, else the
    target's mean MA on never-seen records if any, else ``DEFAULT_STOP_MA``."""
    if method.stop_ma is not None:
        return float(method.stop_ma), "fixed", None
    if not never_seen_records:
        return DEFAULT_STOP_MA, "default", None
    seen = memscore.encode_targets(tokenizer, never_seen_records, max_len=max_len,
                                   truncate=truncate, split="never-seen")
    ma = memscore.memorization_scores(target, seen, pad_id=pad,
                                      batch_size=method.eval_batch_size).ma
    return float(ma.mean()), "never_seen", ma


def memorization_unlearn(model, tokenizer, forget_records: Sequence[Mapping], method: "SGA",
                         train, *, never_seen_records: Sequence[Mapping] = (), mesh=None,
                         seed: int = 0, max_len: int = 256, truncate: bool = False
                         ) -> MemUnlearnOutput:
    """Runs SGA (``method`` an :class:`SGA`) or TAU (a :class:`TAU`) on ``forget_records``.

    Args:
      model: the target ``Llama``; left untouched.
      forget_records: QA records, canaries (``prefix``/``secret``) or documents (``text``).
      method: the method config (hyper-parameters, see the classes).
      train: ``config.TrainConfig``: ``batch_size`` x ``grad_accum`` rows per update,
        at most ``epochs`` passes over the forget set (or ``steps`` updates), and the
        optimiser (their code: Adam, constant lr 5e-5, betas (0.9, 0.98)).
      never_seen_records: sequences of the same kind the target never saw; their mean MA
        on the target is the default stop level.
      mesh: a ``("data", "fsdp")`` mesh or None.
    Returns:
      :class:`MemUnlearnOutput`.
    """
    if mesh is not None:
        mesh_lib.check_batch_divides(train.batch_size, mesh, "train.batch_size")
    targets = memscore.encode_targets(tokenizer, forget_records, max_len=max_len,
                                      truncate=truncate, split="forget")
    pad = batch_lib.pad_id(tokenizer)
    graphdef, params0 = nnx.split(model, nnx.Param)
    if mesh is not None:
        params0 = jax.device_put(params0, mesh_lib.param_shardings(params0, mesh))
    eval_bs = method.eval_batch_size

    def measure(params) -> memscore.MemScores:
        return memscore.memorization_scores(nnx.merge(graphdef, params), targets, pad_id=pad,
                                            batch_size=eval_bs)

    before = measure(params0)
    stop, source, never_seen_ma = _stop_level(method, tokenizer, never_seen_records,
                                              nnx.merge(graphdef, params0), pad=pad,
                                              max_len=max_len, truncate=truncate)
    ref_logp = np.zeros(len(targets.train), np.float32)
    if method.objective == "npo":
        ref_logp = scoring.score_sequences(model, targets.train, pad_id=pad,
                                           batch_size=eval_bs).seq_logprob.astype(np.float32)

    n = len(targets.train)
    rows = train.batch_size * train.grad_accum
    spe = batch_lib.steps_per_epoch(n, rows)
    total = train.steps if train.steps is not None else train.epochs * spe
    seq_len = batch_lib.bucket_length(max(e.length for e in targets.train))
    optimizer = step_lib.make_optimizer(train.optimizer, max(total, 1))
    state = step_lib.init_train_state(step_lib.copy_params(params0, mesh), optimizer,
                                      jax.random.key(seed), mesh)
    shardings = step_lib.state_shardings(state)

    def make_step(objective):
        return step_lib.make_train_step(objective, optimizer, mesh=mesh, state_sharding=shardings,
                                        grad_accum=train.grad_accum)

    ascend = make_step(ascent_objective(method, graphdef, model.config))
    descend = None  # compiled only if TAU reaches its fine-tuning phase
    place = loop_lib.batch_placer(mesh, train.grad_accum)
    switch = getattr(method, "switch_ma", None)
    is_tau = isinstance(method, TAU)
    ma, mean_lp = before.ma, before.mean_logprob
    anchor = edited = None
    phase = "ascent"
    if is_tau and (switch is None or ma.mean() < switch):
        anchor, phase = step_lib.copy_params(params0, mesh), "finetune"
    history: list[dict] = []
    stopped = "budget"
    step_count = 0
    if ma.mean() < stop:  # nothing to forget: the target already looks unseen
        stopped = "stop level"
        history.append({"step": 0, "epoch": 0, **_ma_record(ma, stop)})
    epoch = 0
    while stopped == "budget" and step_count < total:
        for idx in batch_lib.epoch_rows(n, rows, seed=seed, epoch=epoch):
            rows_batch = batch_lib.collate([targets.train[i] for i in idx], seq_len, pad)
            if phase == "ascent":
                w = np.asarray(memorization_weights(method.weighting, ma[idx], mean_lp[idx],
                                                    method.threshold))
                step_fn = ascend
                batch = {"forget": {"answer": rows_batch},
                         "cache": {"weight": w, "ref_logp": {"answer": ref_logp[idx]}}}
            else:
                descend = descend or make_step(nll_objective(graphdef))
                step_fn, batch = descend, rows_batch
            state, metrics = step_fn(state, place(batch))
            m = {k: float(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
            if m.pop("finite") == 0.0:
                raise loop_lib.NonFiniteError(
                    f"{method.name}: update {step_count + 1} gave a non-finite loss "
                    f"({m.get('loss')}) or gradient; lower train.optimizer.learning_rate",
                    state=state, history=history, checkpoint=None, step=step_count + 1)
            step_count += 1
            history.append({"step": step_count, "epoch": epoch,
                            "phase": float(phase == "finetune"), **m})
            if step_count >= total:
                break
        epoch += 1
        # Re-measure every forget sequence (their per-epoch validation); for TAU in its
        # second phase, the edited model is what is measured and returned.
        if phase == "ascent":
            scores = measure(state.params)
            ma, mean_lp = scores.ma, scores.mean_logprob
            if ma.mean() < stop:
                stopped = "stop level"
            elif is_tau and ma.mean() < switch:
                anchor, phase = step_lib.copy_params(state.params, mesh), "finetune"
        else:
            edited = task_arithmetic(anchor, state.params, method.coef)
            ma = measure(edited).ma
            if ma.mean() < stop:
                stopped = "stop level"
        history[-1].update(_ma_record(ma, stop))
    finetuned = None
    if phase == "finetune":
        finetuned = state.params
        output = edited if edited is not None else task_arithmetic(anchor, finetuned, method.coef)
    else:
        output = state.params  # a copy of the target's when no update ran
    # ``ma`` was measured on ``output`` (the target's when nothing ran).
    return MemUnlearnOutput(model=nnx.merge(graphdef, output), history=history,
                            ma_before=before.ma, ma_after=np.asarray(ma),
                            never_seen_ma=never_seen_ma, stop_ma=float(stop), stop_source=source,
                            stopped=stopped, anchor=anchor if is_tau else None,
                            finetuned=finetuned)


# ------------------------------------------------------------------------------ registry


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class SGA(ProcedureMethod):
    """Selective Gradient Ascent (Barbulescu & Triantafillou 2024; see the module doc).

    Attributes:
      threshold: MA at or above which a row is ascended on (their ``mem_threshold``);
        0 = plain gradient ascent.
      weighting: ``select`` (SGA), ``ma`` or ``prob`` (soft, memorisation-weighted).
      objective: ``ga`` (their loss), ``npo`` or ``simnpo``; ``beta`` defaults to 0.1 /
        4.5, ``delta`` is SimNPO's margin.
      stop_ma: fixed stop level; None = never-seen MA (else 0.33).
      eval_batch_size: rows per MA scoring batch.
    """

    name: ClassVar[str] = "sga"
    reference: ClassVar[str] = ("Barbulescu & Triantafillou 2024, 'To Each (Textual Sequence) "
                                "Its Own: Improving Memorized-Data Unlearning in LLMs'")
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 5e-5, "epochs": 150}
    weightings: ClassVar[tuple[str, ...]] = ("select", "ma", "prob")
    objectives: ClassVar[tuple[str, ...]] = ("ga", "npo", "simnpo")

    threshold: float = 0.70
    weighting: str = "select"
    objective: str = "ga"
    beta: float | None = None
    delta: float = 0.0
    stop_ma: float | None = None
    eval_batch_size: int = 32

    def validate(self) -> None:
        self._unit("threshold")
        self._one_of("weighting", self.weightings)
        self._one_of("objective", self.objectives)
        if self.beta is not None:
            self._at_least("beta", 0.0, strict=True)
        self._at_least("delta", 0.0)
        if self.stop_ma is not None:
            self._unit("stop_ma")
        self._at_least("eval_batch_size", 1)

    def _unit(self, field: str) -> None:
        value = getattr(self, field)
        if not 0.0 <= value <= 1.0:
            raise MethodError(f"method.{field}: must lie in [0, 1] for {self.name!r} "
                                      f"(a memorisation accuracy), got {value!r}")

    @property
    def resolved_beta(self) -> float:
        return self.beta if self.beta is not None else _DEFAULT_BETA.get(self.objective, 0.1)

    def ascent_method(self) -> GradientMethod:
        """The gradient method whose forget term SGA ascends with (``gamma = 1``, no retain)."""
        if self.objective == "npo":
            return NPO(beta=self.resolved_beta, gamma=1.0, alpha=0.0)
        if self.objective == "simnpo":
            return SimNPO(beta=self.resolved_beta, delta=self.delta, gamma=1.0, alpha=0.0)
        return GradAscent(gamma=1.0, alpha=0.0)

    def run(self, context: UnlearnContext) -> UnlearnResult:
        out = memorization_unlearn(
            context.model, context.tokenizer, context.forget_records, self, context.train,
            never_seen_records=context.never_seen_records, mesh=context.mesh,
            seed=context.seed, max_len=context.max_len, truncate=context.truncate)
        return UnlearnResult(out.model, out.history)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class TAU(SGA):
    """SGA, then task arithmetic from ``theta_s`` (their ``NeoAV``; see the module doc).

    Attributes:
      switch_ma: mean MA below which the ascent stops and fine-tuning starts (their
        ``first_threshold``, 0.50); None = classic task arithmetic from the target.
      coef: the task-vector coefficient (their ``first_coef``), < 0.
    """

    name: ClassVar[str] = "tau"
    switch_ma: float | None = 0.5
    coef: float = -1.0

    def validate(self) -> None:
        super().validate()
        if self.switch_ma is not None:
            self._unit("switch_ma")
        if not self.coef < 0:
            raise MethodError(f"method.coef: must be < 0 for {self.name!r} (the "
                                      f"fine-tuning direction is negated), got {self.coef!r}")
