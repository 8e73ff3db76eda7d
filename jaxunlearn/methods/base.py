"""The two kinds of method, what a gradient method caches from the frozen reference, and
what a procedure receives.

* :class:`GradientMethod`: the shared loop (``methods.runner``) minimises
  ``gamma * forget + alpha * retain`` over forget batches, each paired with a retain
  batch. A method writes its terms from ``jaxunlearn.losses`` as per-sequence ``[B]`` or
  per-token ``[B, T]`` values of one forward pass (``models.outputs.ModelOutput``);
  :meth:`GradientMethod.objective` reduces them as ``(sum, count)`` so that the train
  step divides once per update (``train.step``): ``grad_accum`` never changes a result.
  The retain term is ``retain_loss = "nll"`` (token NLL on retain answers) or ``"kl"``
  (KL(reference || model) on retain answers; RMU also has ``"activation"``).
* :class:`ProcedureMethod`: a method with its own procedure (Newton / Fisher updates,
  task vectors, ...) implements ``run(context) -> UnlearnResult``; the context carries
  the shared gradient loop (injected by the runner), so no method imports the runner.

Reference caching. Every reference here is frozen (the target model before unlearning,
or RKLD's teacher), so what a method needs from it is computed ONCE before training
and kept in host memory, per example (:class:`CacheSpec` says what):

* per-sequence reference log-probs ``[N]`` (NPO, IdkDPO; memorisation weights): 4 bytes
  per example;
* reference distributions at every position (KL retain term, UNDIAL's and RKLD's teachers)
  as :class:`RefDist`: the exact log-probs over the whole vocabulary (``[N, T, V]``
  float32, ``4 T V`` bytes per example) or the ``K`` most likely tokens under the frozen
  model (the label always included) plus the log-mass of all other tokens (``[N, T, K]``
  log-probs and int32 ids, ``[N, T]`` tail): ``T * (8K + 4)`` bytes per example. KL and
  cross-entropy are then taken between the two distributions coarsened to those ``K + 1``
  outcomes, a lower bound of the full KL (data-processing inequality) and exact when
  ``K >= V``; UNDIAL's, RKLD's and the KL term's gradients are then approximate, the
  more so the more mass the tail holds. ``ref_top_k = None`` (the default) chooses: the
  exact full-vocabulary cache whenever it fits in half of the host memory available
  (``methods.runner.choose_top_k``), else ``AUTO_TOP_K`` tokens; ``0`` forces the full
  cache, ``K > 0`` forces top-K. ``unlearn.json`` records the choice and, when
  truncated, the teacher's tail mass on the loss tokens (``reference_cache``);
* RMU's reference activations ``[N, T, D]`` at the steered layer.

So only the model being unlearned lives on the device during the loop. A live
reference would keep a second copy of the weights there for the whole run (2.5 GB
for Llama-3.2-1B in bf16, 16 GB for Llama-3.1-8B) plus one more forward pass per step;
the cache costs e.g. 1.6 KB for NPO on TOFU forget10 (400 answers) and, for a KL retain
term with K = 64 at T = 256, 130 KB per retain row actually used (host memory); the full
vocabulary at T = 256 costs 1 MB per row and thousand tokens of vocabulary (Llama-3's
128k: 134 MB per row, so TOFU forget10's 400 answers need 54 GB and get truncated on
most hosts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import losses
from jaxunlearn.methods.registry import MethodConfig
from jaxunlearn.models.outputs import ModelOutput, forward
from jaxunlearn.train.step import Objective

__all__ = ["AUTO_TOP_K", "RefDist", "compress_logprobs", "model_on_support", "ref_on_support",
           "labels_on_support", "CacheSpec", "UnlearnResult", "UnlearnContext",
           "ProcedureMethod", "GradientMethod", "term_weights"]


# ------------------------------------------------------------------------------ cached references

# Tokens kept per position when ``ref_top_k = None`` and the full vocabulary does not fit.
AUTO_TOP_K = 64


class RefDist(NamedTuple):
    """A frozen model's next-token distribution at every position of ``N`` sequences.

    Attributes:
      logp: ``[N, T, V]`` float32 log-probs (full) or ``[N, T, K]`` at ``index``.
      index: ``[N, T, K]`` int32 token ids kept, or None for the full vocabulary.
      tail: ``[N, T]`` float32 log of the probability of all tokens not in ``index``
        (None when full).
    """

    logp: Any
    index: Any = None
    tail: Any = None


def _tail_logmass(logp: jax.Array, index: jax.Array) -> jax.Array:
    """``log sum_{v not in index} exp(logp_v)``: ``[B, T, V], [B, T, K] -> [B, T]``.

    Computed by a logsumexp over the unselected entries, not ``log(1 - sum p_top)``, whose
    cancellation loses all precision when the tail holds less than ~1e-7 of the mass.
    """
    selected = jnp.put_along_axis(jnp.zeros(logp.shape, bool), index, True, axis=-1,
                                  inplace=False)
    return jax.nn.logsumexp(jnp.where(selected, -jnp.inf, logp), axis=-1)


def compress_logprobs(logp: jax.Array, labels: jax.Array, top_k: int, *,
                      order_by: jax.Array | None = None) -> RefDist:
    """Keep the ``top_k`` most likely tokens per position, the label always among them.

    Args:
      logp: ``[B, T, V]`` normalised log-probs to store.
      labels: ``[B, T]`` int; each label is forced into the kept set so label-based losses
        (UNDIAL, the forget answer under RKLD's teacher) stay exact.
      top_k: ``K``; ``0`` or ``K >= V`` keeps the full distribution.
      order_by: ``[B, T, V]`` scores choosing the kept tokens (default ``logp``). RKLD
        orders by the original model, so the tokens its teacher lowers stay in the set.
    Returns:
      :class:`RefDist` with ``[B, T, K]`` entries (or the full ``logp``).
    """
    vocab = logp.shape[-1]
    if top_k == 0 or top_k >= vocab:
        return RefDist(logp=logp)
    scores = logp if order_by is None else order_by
    is_label = jax.nn.one_hot(labels, vocab, dtype=bool)
    _, index = jax.lax.top_k(jnp.where(is_label, jnp.inf, scores), top_k)
    picked = jnp.take_along_axis(logp, index, axis=-1)
    return RefDist(logp=picked, index=index.astype(jnp.int32), tail=_tail_logmass(logp, index))


def model_on_support(logits: jax.Array, dist: RefDist) -> jax.Array:
    """The model's log-probs on ``dist``'s outcomes: ``[B, T, V]`` or ``[B, T, K + 1]``.

    Outcome ``k < K`` is token ``dist.index[..., k]``; outcome ``K`` is "any other token".
    """
    # float32 before log_softmax: bf16 logsumexp over a large vocabulary is too coarse.
    logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)
    if dist.index is None:
        return logp
    picked = jnp.take_along_axis(logp, dist.index, axis=-1)
    return jnp.concatenate([picked, _tail_logmass(logp, dist.index)[..., None]], axis=-1)


def ref_on_support(dist: RefDist) -> jax.Array:
    """The cached reference on the same outcomes as :func:`model_on_support`."""
    if dist.index is None:
        return dist.logp
    # A tail of exactly zero mass would be -inf and give 0 * inf = NaN in a KL.
    tail = jnp.maximum(dist.tail, jnp.finfo(jnp.float32).min / 2)
    return jnp.concatenate([dist.logp, tail[..., None]], axis=-1)


def labels_on_support(labels: jax.Array, dist: RefDist) -> jax.Array:
    """Labels as outcome numbers of ``dist`` (the label is always kept: see ``compress_logprobs``)."""
    if dist.index is None:
        return labels
    return jnp.argmax(dist.index == labels[..., None], axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CacheSpec:
    """What a gradient method needs precomputed from the frozen reference (the target).

    Attributes:
      ref_logp_views: forget views whose per-sequence reference log-probs are cached
        (``cache["ref_logp"][view]``, ``[B]``).
      forget_dist: ``None``, ``"reference"`` (the target's distribution on forget answers,
        UNDIAL) or ``"rkld_teacher"`` (RKLD's teacher); cached as ``cache["forget_dist"]``.
      retain_dist: cache the target's distribution on retain rows (KL retain term).
      hidden_layer: cache the target's residual stream after this block on retain rows
        (``cache["retain_hidden"]``, RMU) and a control vector (``cache["control"]``).
      top_k: ``K`` for cached distributions (0 = full vocabulary; None = the full
        vocabulary when it fits in memory, else ``AUTO_TOP_K``: ``runner.choose_top_k``).
    Every method also gets ``cache["weight"]`` ``[B]``, its per-sequence forget weights.
    """

    ref_logp_views: tuple[str, ...] = ()
    forget_dist: str | None = None
    retain_dist: bool = False
    hidden_layer: int | None = None
    top_k: int | None = None


# ------------------------------------------------------------------------------ procedures


class UnlearnResult(NamedTuple):
    """The unlearned model, one metrics dict per step (``step``, ``loss``, ...) and what the
    run wants recorded beside them in ``unlearn.json`` (``reference_cache``: how the frozen
    reference was cached, ``methods.runner.build_cache``)."""

    model: Any
    history: list[dict[str, float]]
    info: Mapping[str, Any] = {}


GradientRunner = Callable[["GradientMethod", Sequence[Mapping], Sequence[Mapping]], UnlearnResult]


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnlearnContext:
    """Everything a method's procedure may use.

    Attributes:
      model: the target, never modified in place; train: the run's ``TrainConfig``;
      mesh: a ``("data", "fsdp")`` mesh or None on one device.
      never_seen_records: sequences of the forget set's kind that the target never saw
        (holdout people, heldout canaries): memorisation-aware methods stop at their
        memorisation level.
      run_gradient: ``(gradient method, forget records, retain records) -> UnlearnResult``,
        the shared gradient loop on this context's model, training settings, mesh and
        seed (injected by ``methods.runner``).
    """

    model: Any
    tokenizer: Any
    forget_records: tuple[Mapping, ...]
    retain_records: tuple[Mapping, ...]
    train: Any
    run_gradient: GradientRunner
    mesh: Any = None
    seed: int = 0
    max_len: int = 256
    truncate: bool = False
    never_seen_records: tuple[Mapping, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcedureMethod(MethodConfig):
    """A method that runs its own procedure instead of the shared gradient loop."""

    kind: ClassVar[str] = "procedure"
    # True when the procedure is the shared gradient loop on its own data (ReLearn), so
    # LoRA adapters (``model.lora``) train it as they train a gradient method.
    trains_lora: ClassVar[bool] = False

    def run(self, context: UnlearnContext) -> UnlearnResult:
        raise NotImplementedError(f"{type(self).__name__}.run")


# ------------------------------------------------------------------------------ gradient methods


def term_weights(mask: jax.Array, weight: jax.Array) -> dict[str, jax.Array]:
    """The weights a term's values are averaged with, by the values' rank.

    ``"rows"`` (per-sequence values ``[B]``): the sequence weights ``w_b``; ``"tokens"``
    (per-token values ``[B, T]``): ``mask[b, t] * w_b``, i.e. each loss token of row ``b``
    weighted by ``w_b`` (for uniform weights, the token mean).
    """
    weight = jnp.asarray(weight, jnp.float32)
    return {"rows": weight, "tokens": jnp.asarray(mask, jnp.float32) * weight[:, None]}


def _term_parts(values: jax.Array, weights: Mapping[str, jax.Array]) -> tuple[str, losses.Mean]:
    kind = {1: "rows", 2: "tokens"}.get(jnp.ndim(values))
    if kind is None:
        raise TypeError(f"a method term must return [B] per-sequence or [B, T] per-token "
                        f"values, got shape {jnp.shape(values)}")
    return kind, losses.mean_parts(values, weights[kind])


def _counts(weights: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {kind: jnp.sum(w) for kind, w in weights.items()}


def _prob(output: ModelOutput) -> losses.Mean:
    """TOFU's per-token answer probability, averaged over the rows (progress metric)."""
    prob = jax.lax.stop_gradient(output.token_prob())
    return losses.Mean(jnp.sum(prob), jnp.asarray(prob.shape[0], jnp.float32))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradientMethod(MethodConfig):
    """``gamma * forget_term + alpha * retain_term``, minimised by the shared loop.

    A term returns per-sequence values ``[B]`` (averaged over the rows, weighted by
    ``cache["weight"]``) or per-token values ``[B, T]`` (averaged over the loss tokens,
    each row's weighted by its ``cache["weight"]``; the retain rows are unweighted).

    Attributes:
      gamma: weight of the forget term, >= 0.
      alpha: weight of the retain term, >= 0.
      retain_loss: ``"nll"`` (retain answers' token NLL) or ``"kl"`` (KL(target || model)
        on retain answers, from the cached target distribution).
      ref_top_k: ``K`` of cached distributions: None (default) = the exact full vocabulary
        when it fits in memory, else ``AUTO_TOP_K``; 0 = always the full vocabulary;
        ``K > 0`` = always top-K. See the module doc.
    """

    kind: ClassVar[str] = "gradient"
    forget_views: ClassVar[tuple[str, ...]] = ("answer",)
    retain_losses: ClassVar[tuple[str, ...]] = ("nll", "kl")

    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"
    ref_top_k: int | None = None

    def validate(self) -> None:
        self._at_least("gamma", 0.0)
        self._at_least("alpha", 0.0)
        if self.ref_top_k is not None:
            self._at_least("ref_top_k", 0)
        self._one_of("retain_loss", self.retain_losses)

    def cache_spec(self, model_config: Any) -> CacheSpec:
        return CacheSpec(retain_dist=self.alpha > 0 and self.retain_loss == "kl",
                         top_k=self.ref_top_k)

    def sequence_weights(self, ref_logp: np.ndarray, num_tokens: np.ndarray) -> np.ndarray:
        """Per-sequence forget weights ``[N]`` from the target's log-probs; uniform by default."""
        return np.ones_like(ref_logp, dtype=np.float32)

    def hidden_layer(self, model_config: Any) -> int | None:
        """Block whose residual stream the objective needs (None: logits only)."""
        return None

    def forget_term(self, outputs: Mapping[str, ModelOutput], forget: Mapping,
                    cache: Mapping) -> jax.Array:
        """The forget loss's ``[B]`` or ``[B, T]`` values from the forget views' outputs."""
        raise NotImplementedError(f"{type(self).__name__}.forget_term")

    def retain_term(self, output: ModelOutput, retain: Any, cache: Mapping) -> jax.Array:
        """The retain loss's ``[B, T]`` values: token NLL, or KL(target || model)."""
        if self.retain_loss == "nll":
            return -output.label_logprobs
        dist = cache["retain_dist"]
        return losses.forward_kl_per_token(model_on_support(output.logits, dist),
                                           ref_on_support(dist), retain.loss_mask)

    def objective(self, graphdef: nnx.GraphDef, model_config: Any) -> Objective:
        """The :class:`~jaxunlearn.train.step.Objective` of ``gamma * forget + alpha * retain``.

        Batches (leaves ``[B, ...]``):
          ``forget``: ``{view: Batch [B, T_f]}``; view ``"answer"`` holds the forget answers,
          ``"idk"`` (IdkDPO) the same questions with the refusal answer.
          ``retain``: ``Batch [B, T_r]`` of retain answers, paired with the forget rows.
          ``cache``: the rows' cached reference values (see :class:`CacheSpec`).
        Metrics (whole-update means): ``forget_loss``, ``retain_loss`` (the unweighted
        terms), ``forget_prob``, ``retain_prob`` (TOFU's per-token answer probability).
        """
        return self._objective(graphdef, model_config, with_retain=True)

    def forget_objective(self, graphdef: nnx.GraphDef, model_config: Any) -> Objective:
        """``gamma * forget`` alone, on batches ``{"forget": ..., "cache": ...}`` (no retain)."""
        return self._objective(graphdef, model_config, with_retain=False)

    def _objective(self, graphdef, model_config, *, with_retain: bool) -> Objective:
        self.check_model(model_config)
        layer = self.hidden_layer(model_config)
        gamma, alpha = self.gamma, self.alpha if with_retain else 0.0

        def weights(batch) -> dict[str, dict[str, jax.Array]]:
            out = {"forget": term_weights(batch["forget"]["answer"].loss_mask,
                                          batch["cache"]["weight"])}
            if with_retain:
                mask = batch["retain"].loss_mask
                out["retain"] = term_weights(mask, jnp.ones(mask.shape[0], jnp.float32))
            return out

        def counts(batch):
            return {part: _counts(w) for part, w in weights(batch).items()}

        def loss(params, batch, key, totals):
            del key  # the objectives are deterministic
            forget, cache, w = batch["forget"], batch["cache"], weights(batch)
            outs = {v: forward(graphdef, params, forget[v], layer) for v in self.forget_views}
            kind, f = _term_parts(self.forget_term(outs, forget, cache), w["forget"])
            share = gamma * f.total / jnp.maximum(totals["forget"][kind], losses.EPS)
            metrics = {"forget_loss": f, "forget_prob": _prob(outs["answer"])}
            if with_retain:
                retain = batch["retain"]
                # With alpha = 0 the retain pass only feeds the progress metrics.
                r_params = params if alpha > 0 else jax.lax.stop_gradient(params)
                r_out = forward(graphdef, r_params, retain, layer)
                kind, r = _term_parts(self.retain_term(r_out, retain, cache), w["retain"])
                if alpha > 0:
                    share = share + alpha * r.total / jnp.maximum(totals["retain"][kind],
                                                                  losses.EPS)
                metrics.update(retain_loss=r, retain_prob=_prob(r_out))
            return share, metrics

        return Objective(counts=counts, loss=loss)
