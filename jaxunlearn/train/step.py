"""One jitted, donated, sharded optimisation step for any objective.

``make_train_step`` turns an :class:`Objective` into ``step(state, batch) -> (state,
metrics)``: forward + backward (with optional gradient accumulation), global-norm
clipping, the optax update, and a non-finite guard that keeps the previous parameters
when the loss or gradient is NaN/Inf (the loop then stops at the last good checkpoint;
NaN weights are never written).

Micro-batches are reduced by ``(sum, count)``: every term of an objective is a sum over
rows or tokens divided by a count of the whole update (tokens, sequences, or a sum of
weights) that never depends on the parameters. The step adds the counts of all
micro-batches first, then adds each micro-batch's share ``sum / total count`` and its
gradient, and divides metrics once at the end; so ``grad_accum`` never changes a
result (beyond float rounding), as in MaxText and the ``transformers`` Trainer since
2024. A mean of micro-batch means would weight a micro-batch's tokens by how few
tokens it holds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxunlearn.losses import Mean
from jaxunlearn.train import mesh as mesh_lib


class Objective(NamedTuple):
    """A loss the step can split over micro-batches exactly.

    Attributes:
      counts: ``batch -> pytree of float32 scalars``, the denominators of the loss's terms
        on this (micro-)batch (tokens, rows, sums of weights): from masks and weights
        only, never the parameters; they add over micro-batches.
      loss: ``(params, batch, key, totals) -> (share, metrics)``, pure. ``totals`` has the
        structure of ``counts`` and holds the counts of the whole update; ``share`` is this
        batch's sums divided by them, so the shares of an update's micro-batches add up to
        its loss and their gradients to its gradient. ``metrics``: ``{name: losses.Mean}``
        parts (added, then divided once) or plain arrays (added, e.g. rows selected).
    """

    counts: Callable[[Any], Any]
    loss: Callable[[Any, Any, Any, Any], tuple[jax.Array, Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    """AdamW with linear warm-up and cosine (or constant) decay, and gradient clipping.

    ``moment_dtype="bfloat16"`` halves optimiser memory (first moment stored in bf16),
    used for the 8B-on-one-GPU plan.
    """

    learning_rate: float = 1e-5
    warmup_steps: int = 0
    schedule: str = "cosine"
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0
    moment_dtype: str = "float32"
    optimizer: str = "adamw"

    def __post_init__(self):
        def finite(name):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"optimizer.{name} must be a finite number, got {value!r}")
            return value

        if not finite("learning_rate") > 0:
            raise ValueError(f"optimizer.learning_rate must be > 0, got {self.learning_rate}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) \
                or not 0 <= self.warmup_steps < 2**31:
            raise ValueError(f"optimizer.warmup_steps must be an integer from 0 to 2^31 - 1, "
                             f"got {self.warmup_steps!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"optimizer.schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if finite("weight_decay") < 0:
            raise ValueError(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("b1", "b2"):  # Adam's moment decay rates
            if not 0 <= finite(name) < 1:
                raise ValueError(f"optimizer.{name} must be in [0, 1), got {getattr(self, name)}")
        if not finite("eps") > 0:  # the denominator sqrt(v) + eps must not vanish
            raise ValueError(f"optimizer.eps must be > 0, got {self.eps}")
        if self.clip_norm is not None and not finite("clip_norm") > 0:
            raise ValueError(f"optimizer.clip_norm must be > 0 or null, got {self.clip_norm}")
        if self.moment_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"optimizer.moment_dtype must be float32 or bfloat16, got {self.moment_dtype!r}")
        if self.optimizer not in ("adamw", "sgd", "adafactor"):
            raise ValueError(f"optimizer.optimizer must be adamw, sgd or adafactor, got {self.optimizer!r}")


def make_optimizer(config: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The optax chain for ``config`` over ``total_steps`` updates."""
    if config.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(
            0.0 if config.warmup_steps else config.learning_rate, config.learning_rate,
            config.warmup_steps, max(total_steps, config.warmup_steps + 1), end_value=0.0)
    elif config.warmup_steps:
        lr = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    else:
        lr = config.learning_rate
    if config.optimizer == "adamw":
        mu_dtype = jnp.bfloat16 if config.moment_dtype == "bfloat16" else None
        opt = optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                          weight_decay=config.weight_decay, mu_dtype=mu_dtype)
    elif config.optimizer == "adafactor":
        opt = optax.adafactor(lr, weight_decay_rate=config.weight_decay or None)
    else:
        opt = optax.sgd(lr)
    parts = [optax.clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    return optax.chain(*parts, opt)


class TrainState(NamedTuple):
    """Everything a step changes. ``key`` is the run key; step ``i`` uses ``fold_in(key, i)``."""

    params: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def init_train_state(params, optimizer: optax.GradientTransformation, key: jax.Array,
                     mesh: Mesh | None = None) -> TrainState:
    """The train state; every optimiser moment is sharded like its parameter.

    Moments start as ``zeros_like(param)``, a constant the compiler would otherwise lay
    out replicated: with FSDP that is a full copy of Adam's two moments on every device
    (2x the model's size). ``tree_map_params`` pins each parameter-shaped one to its
    parameter's sharding.
    """
    def pin(moment, param):
        # Adafactor's factored row/column statistics are smaller than the parameter: left as is.
        if moment.shape != param.shape:
            return moment
        return jax.lax.with_sharding_constraint(moment, param.sharding)

    def init(p):
        return optax.tree_utils.tree_map_params(optimizer, pin, optimizer.init(p), params,
                                                transform_non_params=lambda x: x)

    opt_state = jax.jit(init)(params) if mesh is not None else jax.jit(optimizer.init)(params)
    step = jnp.zeros((), jnp.int32)
    if mesh is not None:
        rep = mesh_lib.replicated(mesh)
        step, key = jax.device_put(step, rep), _replicate_key(key, rep)
        # Scalars such as Adam's count come out on one device; replicate them on the mesh.
        opt_state = jax.tree.map(
            lambda x: x if isinstance(x.sharding, jax.sharding.NamedSharding)
            else jax.device_put(x, rep), opt_state)
    return TrainState(params=params, opt_state=opt_state, step=step, key=key)


def _replicate_key(key: jax.Array, rep) -> jax.Array:
    """``key`` on every device of the mesh; a typed key goes as its raw data (``device_put``
    places typed keys on this process's devices only)."""
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.device_put(key, rep)
    return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(key), rep),
                                    impl=jax.random.key_impl(key))


def state_shardings(state: TrainState) -> Any:
    return jax.tree.map(lambda x: x.sharding, state)


def _finish(metrics: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Metrics of a whole update: ``Mean`` parts divided once, plain sums as they are."""
    return {k: v.value() if isinstance(v, Mean) else v for k, v in metrics.items()}


def objective_value(objective: Objective, params: Any, batch: Any,
                    key: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss and metrics of ``objective`` on one whole batch (no micro-batches); pure,
    differentiable in ``params``."""
    loss, metrics = objective.loss(params, batch, key, objective.counts(batch))
    return loss, _finish(metrics)


def make_train_step(objective: Objective, optimizer: optax.GradientTransformation, *,
                    mesh: Mesh | None = None, state_sharding: Any = None,
                    grad_accum: int = 1, donate: bool = True, frozen_sharding: Any = None,
                    with_frozen: bool = False):
    """Returns the jitted ``step(state, batch) -> (state, metrics)``.

    ``with_frozen=True`` returns ``step(state, batch, frozen)`` instead: ``state.params``
    are the trained part of the parameters (a LoRA run's adapters, ``models.lora``) and
    ``frozen`` (an ``nnx.State``, not donated; sharded by ``frozen_sharding`` on a mesh)
    the rest; the objective sees both merged, only ``state.params`` are differentiated and
    updated, and the optimiser state is that of ``state.params`` alone.

    Args:
      objective: the :class:`Objective` to minimise; pure.
      mesh: when given, batches are sharded over ``("data", "fsdp")`` and the state keeps
        ``state_sharding`` (from ``state_shardings(init_train_state(...))``).
      grad_accum: ``> 1`` expects every batch leaf with a leading ``[grad_accum, ...]`` axis.
        The counts of all micro-batches are added first (``objective.counts`` reads masks
        and weights only: no forward pass), then each micro-batch's share of the loss is
        differentiated and the shares and their gradients are added: the update equals
        that of one batch of the same rows up to float rounding, whatever the token
        counts of the micro-batches.
      donate: donate the input state buffers (the caller must not reuse them).

    Metrics: ``loss``, ``grad_norm``, ``finite`` (0/1) and the objective's own metrics
    (``losses.Mean`` parts summed over micro-batches and divided once; plain values summed).
    """
    if grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {grad_accum}")
    def step(state: TrainState, batch, frozen=None):
        loss_fn = objective.loss
        if with_frozen:
            def loss_fn(params, *args):
                return objective.loss(nnx.merge_state(frozen, params), *args)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        key = jax.random.fold_in(state.key, state.step)
        if grad_accum == 1:
            (loss, metrics), grads = grad_fn(state.params, batch, key, objective.counts(batch))
        else:
            # The whole update's denominators first: they never depend on the parameters.
            totals = jax.tree.map(lambda x: jnp.sum(x, axis=0), jax.vmap(objective.counts)(batch))

            def micro(carry, xs):
                i, mb = xs
                out = grad_fn(state.params, mb, jax.random.fold_in(key, i), totals)
                return jax.tree.map(jnp.add, carry, out), None

            first = jax.tree.map(lambda x: x[0], batch)
            zero = jax.eval_shape(lambda: grad_fn(state.params, first, key, totals))
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zero)
            ((loss, metrics), grads), _ = jax.lax.scan(micro, zero, (jnp.arange(grad_accum), batch))
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        def update(state: TrainState) -> TrainState:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
            return TrainState(params=optax.apply_updates(state.params, updates),
                              opt_state=opt_state, step=state.step + 1, key=state.key)

        # A non-finite step changes nothing: the loop sees finite == 0 and stops cleanly.
        # A cond, not a select over the new and old state: that would read and write
        # weights and moments once more every step (+0.1 s per step at 70M parameters).
        new = jax.lax.cond(finite, update, lambda s: s, state)
        out = dict(_finish(metrics), loss=loss, grad_norm=grad_norm,
                   finite=finite.astype(jnp.float32))
        return new, out

    kwargs: dict[str, Any] = {}
    if mesh is not None:
        bs = mesh_lib.batch_sharding(mesh)
        if grad_accum > 1:
            bs = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, mesh_lib.BATCH_AXES))
        kwargs = dict(in_shardings=(state_sharding, bs) + ((frozen_sharding,) if with_frozen
                                                          else ()),
                      out_shardings=(state_sharding, mesh_lib.replicated(mesh)))
    if with_frozen:
        return jax.jit(step, donate_argnums=(0,) if donate else (), **kwargs)
    return jax.jit(lambda state, batch: step(state, batch), donate_argnums=(0,) if donate else (),
                   **kwargs)


def copy_params(params: Any, mesh: Mesh | None = None) -> Any:
    """Fresh buffers of ``params`` (a step donates its state; the caller's stay valid),
    FSDP-sharded on ``mesh`` when given."""
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    if mesh is not None:
        params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    return params
