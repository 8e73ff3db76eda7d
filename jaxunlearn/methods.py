"""Unlearning methods: each a named composition of ``jaxunlearn.losses`` plus its hyper-parameters.

``get_method({"name": "npo", "beta": 0.2})`` turns the plain ``method`` section of a run
config into that method's typed, validated, frozen config. Two kinds of entry:

* :class:`GradientMethod`: an optimisation loop (``jaxunlearn.unlearn``) minimises
  ``objective(params, forget, retain, cache) = gamma * forget_term + alpha * retain_term``
  over forget batches, each paired with a retain batch. The objective does the forward
  passes; the terms come from ``jaxunlearn.losses`` only. The retain term is
  ``retain_loss = "nll"`` (token NLL on retain answers) or ``"kl"`` (KL(reference ||
  model) on retain answers; RMU also has ``"activation"``).
* :class:`ProcedureMethod`: a method with its own procedure (Newton / Fisher updates,
  task vectors, ...) implements ``run(context) -> UnlearnResult``.

Reference caching. Every reference here is frozen (the target model before unlearning,
or RKLD's teacher), so what a method needs from it is computed ONCE before training
and kept in host memory, per example (:class:`CacheSpec` says what):

* per-sequence reference log-probs ``[N]`` (NPO, IdkDPO; memorisation weights): 4 bytes
  per example;
* reference distributions at every position (KL retain term, UNDIAL's and RKLD's teachers)
  as :class:`RefDist`: the exact log-probs over the whole vocabulary (``ref_top_k = 0``,
  ``[N, T, V]`` float32) or the ``K`` most likely tokens under the frozen model (the label
  always included) plus the log-mass of all other tokens (``[N, T, K]`` log-probs and
  int32 ids, ``[N, T]`` tail): ``T * (8K + 4)`` bytes per example. KL and cross-entropy
  are then taken between the two distributions coarsened to those ``K + 1`` outcomes, a
  lower bound of the full KL (data-processing inequality) and exact when ``K >= V``;
* RMU's reference activations ``[N, T, D]`` at the steered layer.

So only the model being unlearned lives on the device during the loop. A live
reference would keep a second copy of the weights there for the whole run (2.5 GB
for Llama-3.2-1B in bf16, 16 GB for Llama-3.1-8B) plus one more forward pass per step;
the cache costs e.g. 1.6 KB for NPO on TOFU forget10 (400 answers) and, for a KL retain
term with K = 64 at T = 256, 130 KB per retain row actually used (host memory).

Defaults follow open-unlearning's ``configs/trainer/*.yaml`` (Dorna et al. 2025) and the
papers cited per method; ``paper_train`` records the learning rate and epochs they use
on TOFU (models fine-tuned from Llama 2/3 checkpoints, not the small from-scratch
models of the synthetic benchmark, which need larger rates: see ``experiments/``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import losses, ops
from jaxunlearn.models import compact
from jaxunlearn.errors import UserError

__all__ = [
    "MethodError", "MethodConfig", "GradientMethod", "ProcedureMethod", "CacheSpec", "RefDist",
    "UnlearnContext", "UnlearnResult", "register", "get_method", "method_names",
    "compress_logprobs", "model_on_support", "ref_on_support", "labels_on_support", "forward",
    "ModelOutput",
    "answer_prob", "GradAscent", "GradDiff", "NPO", "SimNPO", "IdkDPO", "RMU", "UNDIAL", "WGA",
    "RKLD",
]

Objective = Callable[[Any, Mapping, Any, Mapping], tuple[jax.Array, dict[str, jax.Array]]]


class MethodError(UserError):
    """Unknown method, unknown or invalid hyper-parameter; the message names ``method.<field>``."""


# ------------------------------------------------------------------------------ cached references


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
      top_k: ``K`` for cached distributions (0 = full vocabulary).
    Every method also gets ``cache["weight"]`` ``[B]``, its per-sequence forget weights.
    """

    ref_logp_views: tuple[str, ...] = ()
    forget_dist: str | None = None
    retain_dist: bool = False
    hidden_layer: int | None = None
    top_k: int = 0


# ------------------------------------------------------------------------------ model helpers


class ModelOutput:
    """One forward pass of the model on a ``Batch``, seen through what objectives read.

    ``label_logprobs`` (and everything built on it: sequence log-probs, token NLL, answer
    probability) comes from ``jaxunlearn.ops``, fused with the LM head: label-only methods
    (GA, GradDiff, NPO, SimNPO, IdkDPO, ReLearn's NLL) then never form the float32
    ``[B, T, V]`` logits and log-softmax, nor their backward. ``logits`` is formed only
    when read (the KL terms need whole distributions); both are computed at most once.
    Lives inside a traced objective; not a pytree.

    Attributes:
      batch: the ``Batch`` ``[B, T]`` it was run on.
      final: ``[B, T, D]`` final-normed hidden states.
      head: ``[D, V]`` the LM head in the compute dtype.
      hidden: ``[B, T, D]`` residual stream after the requested block, or None.
    """

    def __init__(self, batch: Any, final: jax.Array, head: jax.Array,
                 hidden: jax.Array | None = None):
        self.batch, self.final, self.head, self.hidden = batch, final, head, hidden
        self._logits: jax.Array | None = None
        self._label_logprobs: jax.Array | None = None

    @property
    def logits(self) -> jax.Array:
        """``[B, T, V]`` in the compute dtype, as ``Llama.__call__``."""
        if self._logits is None:
            self._logits = jnp.einsum("BTD,DV->BTV", self.final, self.head)
        return self._logits

    @property
    def label_logprobs(self) -> jax.Array:
        """``[B, T]`` float32 ``log p(labels)``, 0 where ``loss_mask`` is 0."""
        if self._label_logprobs is None:
            b = self.batch
            plan = getattr(b, "compaction", None)
            if plan is None:
                self._label_logprobs = ops.token_logprobs_from_hidden(
                    self.final, self.head, b.labels, mask=b.loss_mask)
            else:
                self._label_logprobs = _compact_label_logprobs(self.final, self.head, b, plan)
        return self._label_logprobs

    def sequence_logprob(self) -> jax.Array:
        """``[B]`` summed answer log-probs: ``losses.sequence_logprob`` of the batch."""
        return jnp.sum(self.label_logprobs, axis=-1)

    def token_nll(self) -> jax.Array:
        """Scalar mean NLL over the masked tokens: ``losses.token_nll`` of the batch."""
        count = jnp.sum(jnp.asarray(self.batch.loss_mask, jnp.float32))
        return -jnp.sum(self.label_logprobs) / jnp.maximum(count, 1.0)

    def answer_prob(self) -> jax.Array:
        """Scalar :func:`answer_prob` of the batch."""
        return _mean_token_prob(self.sequence_logprob(), self.batch.loss_mask)


def _compact_label_logprobs(final, head, batch, plan) -> jax.Array:
    """``[B, T]`` label log-probs with the LM head applied to ``plan.labels`` tokens per group.

    The loss tokens come first in each group's order (``models.compact``); the rest of
    the ``C`` picked are mask-0 tokens, which ``ops`` scores 0 without gradient.
    """
    B, T = batch.labels.shape
    order = compact.token_order(batch.loss_mask, plan.groups, plan.labels)
    picked = ops.token_logprobs_from_hidden(
        compact.gather(final, order), head, compact.gather(batch.labels, order),
        mask=compact.gather(batch.loss_mask, order))
    poison = jnp.where(compact.overflow(batch.loss_mask, plan.groups, plan.labels), jnp.nan, 0.0)
    return compact.scatter(picked, order, B, T) + poison


def forward(graphdef: nnx.GraphDef, params: Any, batch: Any,
            hidden_layer: int | None = None) -> ModelOutput:
    """:class:`ModelOutput` of the model ``(graphdef, params)`` on a ``Batch`` ``[B, T]``.

    A batch with a ``compaction`` runs padding-free (``models.compact``): the trunk on
    its real tokens, the fused LM head on its loss tokens; equal values at those tokens.
    """
    model = nnx.merge(graphdef, params)
    final, hidden = model.trunk(batch.input_ids, batch.attention_mask, hidden_layer=hidden_layer,
                                compaction=getattr(batch, "compaction", None))
    return ModelOutput(batch, final, model.output_head(), hidden)


def answer_prob(logits: jax.Array, batch: Any) -> jax.Array:
    """Mean over sequences of the per-token answer probability ``exp(log p(y|x) / |y|)``.

    TOFU's length-normalised "probability"; shown in progress bars, never optimised.
    """
    return _mean_token_prob(losses.sequence_logprob(logits, batch.labels, batch.loss_mask),
                            batch.loss_mask)


def _mean_token_prob(sequence_logp: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """``mean_b exp(sequence_logp[b] / |y_b|)`` from ``[B]`` log-probs and the ``[B, T]`` mask."""
    count = jnp.maximum(losses.sequence_token_counts(loss_mask), 1.0)
    return jnp.mean(jnp.exp(sequence_logp / count))


# ------------------------------------------------------------------------------ configs


def _coerce(field: str, value: Any, tp: Any) -> Any:
    """Check a hyper-parameter against its annotation; ints are accepted for floats."""
    args = typing.get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
    ok = {
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        bool: isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        raise MethodError(f"method.{field}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):
            raise MethodError(f"method.{field}: must be finite, got {value!r}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class MethodConfig:
    """Base of every method config: typed, frozen, validated on construction."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    paper_train: ClassVar[Mapping[str, float]] = {}

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self.validate()

    def validate(self) -> None:
        """Value checks; subclasses extend. Raise :class:`MethodError` naming the field."""

    def _at_least(self, field: str, low: float, *, strict: bool = False) -> None:
        value = getattr(self, field)
        if value < low or (strict and value == low):
            raise MethodError(f"method.{field}: must be {'>' if strict else '>='} {low} for "
                              f"{self.name!r}, got {value!r}")

    def _one_of(self, field: str, choices: tuple[str, ...]) -> None:
        if getattr(self, field) not in choices:
            raise MethodError(f"method.{field}: must be one of {', '.join(choices)} for "
                              f"{self.name!r}, got {getattr(self, field)!r}")

    def check_model(self, model_config: Any) -> None:
        """Checks against the model to unlearn (e.g. RMU's layer exists); default: nothing."""

    def to_dict(self) -> dict:
        return {"name": self.name, **dataclasses.asdict(self)}


_REGISTRY: dict[str, type[MethodConfig]] = {}
# Modules that register more methods when imported (second-order updates, SGA/TAU,
# ReLearn). They import this module, so they are loaded on first use of the registry.
_PLUGINS = ("jaxunlearn.secondorder_methods", "jaxunlearn.memunlearn",
            "jaxunlearn.relearn_method")
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in _PLUGINS:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the plugin exists but one of its imports is missing: a bug
                raise


def register(cls: type[MethodConfig]) -> type[MethodConfig]:
    """Class decorator adding a method config to the registry under ``cls.name``.

    Other modules register their methods the same way (``@methods.register`` on a frozen
    kw_only dataclass subclassing :class:`GradientMethod` or :class:`ProcedureMethod`).
    """
    if not cls.name or cls.kind not in ("gradient", "procedure"):
        raise TypeError(f"{cls.__name__} needs a name and kind 'gradient' or 'procedure'")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"method {cls.name!r} is already registered by "
                        f"{_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Registered method names, sorted."""
    _load_plugins()
    return tuple(sorted(_REGISTRY))


def get_method(spec: Mapping[str, Any] | str | MethodConfig) -> MethodConfig:
    """The typed config for ``spec`` (``{"name": ..., hyper-parameters...}`` or a bare name).

    Raises:
      MethodError: unknown name (listing the known ones), unknown hyper-parameter
        (naming it), or a value of the wrong type or range (naming ``method.<field>``).
    """
    if isinstance(spec, MethodConfig):
        return spec
    _load_plugins()
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping):
        raise MethodError(f"method: expected a mapping with a 'name', got {spec!r}")
    params = dict(spec)
    name = params.pop("name", None)
    if not isinstance(name, str) or not name:
        raise MethodError(f"method.name: missing; choose one of {', '.join(method_names())}")
    if name not in _REGISTRY:
        raise MethodError(f"method.name: unknown method {name!r}; known: "
                          f"{', '.join(method_names())}")
    cls = _REGISTRY[name]
    known = [f.name for f in dataclasses.fields(cls)]
    for key in params:
        if key not in known:
            raise MethodError(f"method.{key}: unknown hyper-parameter for {name!r} "
                              f"(known: {', '.join(sorted(known))})")
    return cls(**params)


# ------------------------------------------------------------------------------ procedures


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnlearnContext:
    """Everything a method's procedure may use. ``model`` is the target, never modified
    in place; ``train`` is the run's ``TrainConfig``; ``mesh`` is None on one device."""

    model: Any
    tokenizer: Any
    forget_records: tuple[Mapping, ...]
    retain_records: tuple[Mapping, ...]
    train: Any
    mesh: Any = None
    seed: int = 0
    max_len: int = 256
    truncate: bool = False
    # Sequences of the forget set's kind that the target never saw (holdout people,
    # heldout canaries): memorisation-aware methods stop at their memorisation level.
    never_seen_records: tuple[Mapping, ...] = ()
    on_step: Callable[[int, int, Mapping[str, float]], None] | None = None


class UnlearnResult(NamedTuple):
    """The unlearned model and one metrics dict per step (``step``, ``loss``, ...)."""

    model: Any
    history: list[dict[str, float]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcedureMethod(MethodConfig):
    """A method that runs its own procedure instead of the shared gradient loop."""

    kind: ClassVar[str] = "procedure"

    def run(self, context: UnlearnContext) -> UnlearnResult:
        raise NotImplementedError(f"{type(self).__name__}.run")


# ------------------------------------------------------------------------------ gradient methods


@dataclasses.dataclass(frozen=True, kw_only=True)
class GradientMethod(MethodConfig):
    """``gamma * forget_term + alpha * retain_term``, minimised by the shared loop.

    Attributes:
      gamma: weight of the forget term, >= 0.
      alpha: weight of the retain term, >= 0.
      retain_loss: ``"nll"`` (retain answers' token NLL) or ``"kl"`` (KL(target || model)
        on retain answers, from the cached target distribution).
      ref_top_k: ``K`` of cached distributions (0 = full vocabulary); see the module doc.
    """

    kind: ClassVar[str] = "gradient"
    forget_views: ClassVar[tuple[str, ...]] = ("answer",)
    retain_losses: ClassVar[tuple[str, ...]] = ("nll", "kl")

    gamma: float = 1.0
    alpha: float = 1.0
    retain_loss: str = "nll"
    ref_top_k: int = 64

    def validate(self) -> None:
        self._at_least("gamma", 0.0)
        self._at_least("alpha", 0.0)
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

    def forget_term(self, outputs: Mapping, forget: Mapping, cache: Mapping) -> jax.Array:
        """The forget loss from the forget views' :class:`ModelOutput` s; scalar."""
        raise NotImplementedError(f"{type(self).__name__}.forget_term")

    def retain_term(self, output: Any, retain: Any, cache: Mapping) -> jax.Array:
        """The retain loss from the retain batch's :class:`ModelOutput`; scalar."""
        if self.retain_loss == "nll":
            return output.token_nll()
        dist = cache["retain_dist"]
        return losses.forward_kl(model_on_support(output.logits, dist), ref_on_support(dist),
                                 retain.loss_mask)

    def objective(self, graphdef: nnx.GraphDef, model_config: Any) -> Objective:
        """``(params, forget, retain, cache) -> (loss, metrics)``, pure and jit-able.

        Args (of the returned function):
          params: the model's ``nnx.Param`` state.
          forget: ``{view: Batch}`` of ``[B, T_f]`` arrays; view ``"answer"`` holds the forget
            answers, ``"idk"`` (IdkDPO) the same questions with the refusal answer.
          retain: ``Batch`` ``[B, T_r]`` of retain answers, paired with the forget rows.
          cache: the rows' cached reference values (see :class:`CacheSpec`).
        Returns:
          scalar loss and metrics ``forget_loss``, ``retain_loss``, ``forget_prob``,
          ``retain_prob`` (batch means).
        """
        self.check_model(model_config)
        layer = self.hidden_layer(model_config)
        gamma, alpha = self.gamma, self.alpha

        def fn(params, forget, retain, cache):
            outs = {v: forward(graphdef, params, forget[v], layer) for v in self.forget_views}
            forget_loss = self.forget_term(outs, forget, cache)
            # With alpha = 0 the retain pass only feeds the progress metrics.
            r_params = params if alpha > 0 else jax.lax.stop_gradient(params)
            r_out = forward(graphdef, r_params, retain, layer)
            retain_loss = self.retain_term(r_out, retain, cache)
            loss = gamma * forget_loss + (alpha * retain_loss if alpha > 0 else 0.0)
            metrics = {
                "forget_loss": forget_loss,
                "retain_loss": retain_loss,
                "forget_prob": jax.lax.stop_gradient(outs["answer"].answer_prob()),
                "retain_prob": jax.lax.stop_gradient(r_out.answer_prob()),
            }
            return loss, metrics

        return fn


def _per_sequence(loss_fn: Callable[..., jax.Array], *arrays: jax.Array) -> jax.Array:
    """``[B]`` values of a batch-mean loss applied to each sequence alone (for weighting)."""
    return jax.vmap(lambda *xs: loss_fn(*(x[None] for x in xs)))(*arrays)


def _answer_logp(outputs: Mapping, forget: Mapping, view: str = "answer"):
    batch = forget[view]
    logp = outputs[view].sequence_logprob()
    return logp, losses.sequence_token_counts(batch.loss_mask)


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

    ``forget_term = weighted(log p(y_b|x_b) / |y_b|, |y_b| * w_b)``, which for uniform
    ``w`` is ``losses.gradient_ascent`` (the token mean of log p, minimised).
    """

    name: ClassVar[str] = "grad_ascent"
    reference: ClassVar[str] = "Jang et al. 2023, 'Knowledge Unlearning for Mitigating Privacy Risks'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    alpha: float = 0.0

    def forget_term(self, outputs, forget, cache):
        logp, count = _answer_logp(outputs, forget)
        return losses.weighted(logp / jnp.maximum(count, 1.0), count * cache["weight"])


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

    ``forget_term = weighted(npo_b(log p(y_b|x_b), log p_ref(y_b|x_b), beta), w_b)`` with the
    reference log-probs cached from the target.
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
        logp, _ = _answer_logp(outputs, forget)
        per_seq = _per_sequence(lambda a, r: losses.npo(a, r, self.beta), logp,
                                cache["ref_logp"]["answer"])
        return losses.weighted(per_seq, cache["weight"])


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class SimNPO(_Weighted):
    """SimNPO (Fan et al. 2024): reference-free, length-normalised NPO; nothing to cache.

    ``forget_term = weighted(simnpo_b(log p(y_b|x_b), |y_b|, beta, delta), w_b)``; defaults
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
        logp, count = _answer_logp(outputs, forget)
        per_seq = _per_sequence(lambda a, n: losses.simnpo(a, n, self.beta, self.delta),
                                logp, count)
        return losses.weighted(per_seq, cache["weight"])


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class IdkDPO(GradientMethod):
    """DPO with the refusal ("I don't know") answer preferred over the true one (TOFU).

    ``forget_term = dpo(log p(idk), log p(answer), ref(idk), ref(answer), beta)``; records
    without ``idk_answer`` get a fixed refusal (``jaxunlearn.unlearn``).
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
        lose, _ = _answer_logp(outputs, forget, "answer")
        win, _ = _answer_logp(outputs, forget, "idk")
        ref = cache["ref_logp"]
        return losses.dpo(win, lose, ref["idk"], ref["answer"], self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class RMU(GradientMethod):
    """Representation Misdirection for Unlearning (Li et al. 2024, WMDP).

    ``forget_term = rmu_forget(h_l(forget), c * u/|u|)``, ``retain_term =
    rmu_retain(h_l(retain), h_l^target(retain))`` (``retain_loss="activation"``, cached), where
    ``h_l`` is the residual stream after block ``layer``. ``layer=None`` picks block
    ``num_layers // 2 - 1`` (7 of Llama-3.2-1B's 16, open-unlearning's choice);
    ``steering_coeff`` 2 is open-unlearning's TOFU value (WMDP used 6.5-20 on 7B models).
    All parameters are trained, as open-unlearning does.
    """

    name: ClassVar[str] = "rmu"
    reference: ClassVar[str] = "Li et al. 2024, 'The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 10}
    retain_losses: ClassVar[tuple[str, ...]] = ("activation", "nll", "kl")
    retain_loss: str = "activation"
    steering_coeff: float = 2.0
    layer: int | None = None

    def validate(self) -> None:
        super().validate()
        self._at_least("steering_coeff", 0.0, strict=True)
        if self.layer is not None:
            self._at_least("layer", 0)

    def hidden_layer(self, model_config) -> int:
        return max(model_config.num_layers // 2 - 1, 0) if self.layer is None else self.layer

    def check_model(self, model_config) -> None:
        if self.hidden_layer(model_config) >= model_config.num_layers:
            raise MethodError(f"method.layer: {self.layer} is out of range for a model with "
                              f"{model_config.num_layers} layers")

    def cache_spec(self, model_config):
        spec = super().cache_spec(model_config)
        return dataclasses.replace(spec, hidden_layer=self.hidden_layer(model_config))

    def forget_term(self, outputs, forget, cache):
        batch = forget["answer"]
        return losses.rmu_forget(outputs["answer"].hidden, cache["control"][0], batch.loss_mask)

    def retain_term(self, output, retain, cache):
        if self.retain_loss != "activation":
            return super().retain_term(output, retain, cache)
        return losses.rmu_retain(output.hidden, cache["retain_hidden"], retain.loss_mask)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class UNDIAL(GradientMethod):
    """UNDIAL self-distillation (Dong et al. 2024): match the target with the label logit lowered.

    ``forget_term = undial(logits, target, labels, mask, beta)`` on the cached target
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
        return losses.undial(model_on_support(outputs["answer"].logits, dist), ref_on_support(dist),
                             labels_on_support(batch.labels, dist), batch.loss_mask, self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class WGA(GradientMethod):
    """Weighted gradient ascent (Wang et al. 2025): tokens weighted by ``p(label)^beta``."""

    name: ClassVar[str] = "wga"
    reference: ClassVar[str] = "Wang et al. 2025, 'Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond'"
    paper_train: ClassVar[Mapping[str, float]] = {"learning_rate": 1e-5, "epochs": 5}
    beta: float = 1.0

    def validate(self) -> None:
        super().validate()
        self._at_least("beta", 0.0)

    def forget_term(self, outputs, forget, cache):
        batch = forget["answer"]
        return losses.wga(outputs["answer"].logits, batch.labels, batch.loss_mask, self.beta)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class RKLD(GradientMethod):
    """RKLD (Wang et al. 2024, arXiv 2406.01983): reverse-KL distillation from an unlearning teacher.

    Before the loop, a copy of the target is fine-tuned further on the forget answers
    (``strengthen_epochs`` of token NLL at ``strengthen_learning_rate``, default the run's
    rate) into a *strengthened* model; the teacher is
    ``rkld_teacher(target_logits, strengthened_logits, teacher_alpha)``, which lowers exactly
    the tokens the strengthening raised, and is cached once (both models are never on the
    device during the loop). ``forget_term = reverse_kl(student, teacher)`` on forget answers.

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
        return losses.reverse_kl(model_on_support(outputs["answer"].logits, dist),
                                 ref_on_support(dist), batch.loss_mask)
