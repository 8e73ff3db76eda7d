"""NLL fine-tuning: the one routine that fine-tunes a copy of a model with ``train.nll``.

RKLD's strengthening and the re-learning attack use it; the target and retain models'
training, TAU's fine-tuning phase and the second-order methods' loss use the same
objective, ``train.nll.nll_objective``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxunlearn.train import loop as loop_lib
from jaxunlearn.train import step as step_lib
from jaxunlearn.train.nll import nll_objective

__all__ = ["nll_finetune", "call_with_frozen"]


@functools.lru_cache(maxsize=8)
def _single_device_step(graphdef: nnx.GraphDef, optimizer: step_lib.OptimizerConfig,
                        total_steps: int, grad_accum: int, with_frozen: bool = False):
    # One compilation per architecture and schedule: the re-learning attack fine-tunes
    # every evaluated model of a run the same way.
    opt = step_lib.make_optimizer(optimizer, total_steps)
    return opt, step_lib.make_train_step(nll_objective(graphdef), opt, grad_accum=grad_accum,
                                         with_frozen=with_frozen)


def call_with_frozen(step_fn, frozen, state, batch):
    """``step_fn(state, batch, frozen)``: a ``with_frozen`` step as the loop calls it."""
    return step_fn(state, batch, frozen)


def nll_finetune(graphdef: nnx.GraphDef, params: Any, source: loop_lib.BatchSource, *,
                 optimizer: step_lib.OptimizerConfig, total_steps: int, grad_accum: int = 1,
                 mesh: Mesh | None = None, seed: int = 0, progress: bool = False,
                 desc: str = "fine-tune", frozen: Any = None) -> loop_lib.LoopResult:
    """A copy of ``params`` fine-tuned by :func:`nll_objective` for ``total_steps`` updates.

    Args:
      params: the model's ``nnx.Param`` state; not modified (the step works on a copy).
      source: the batches (``train.loop.BatchSource`` of ``Batch`` es, ``rows`` each; split
        into ``grad_accum`` micro-batches per update).
      optimizer: the optax chain's settings (schedule over ``total_steps``).
      mesh: a ``("data", "fsdp")`` mesh or None for one device.
      frozen: with LoRA (``models.lora``), the frozen base ``nnx.State``: then ``params``
        are the adapters, the only part trained (``train.step.make_train_step``).
    Returns:
      ``train.loop.LoopResult``: ``state.params`` the fine-tuned weights, ``history`` one
      record per update (``loss`` before it, ``grad_norm``, ``tokens``).
    """
    with_frozen = frozen is not None
    if mesh is None:
        opt, step_fn = _single_device_step(graphdef, optimizer, total_steps, grad_accum,
                                           with_frozen)
        state = step_lib.init_train_state(step_lib.copy_params(params), opt, jax.random.key(seed))
    else:
        opt = step_lib.make_optimizer(optimizer, total_steps)
        state = step_lib.init_train_state(step_lib.copy_params(params, mesh), opt,
                                          jax.random.key(seed), mesh)
        step_fn = step_lib.make_train_step(
            nll_objective(graphdef), opt, mesh=mesh, state_sharding=step_lib.state_shardings(state),
            grad_accum=grad_accum, with_frozen=with_frozen,
            frozen_sharding=step_lib.state_shardings(frozen) if with_frozen else None)
    if with_frozen:
        step_fn = functools.partial(call_with_frozen, step_fn, frozen)
    return loop_lib.run_loop(step_fn, state, source, total_steps=total_steps,
                             place_batch=loop_lib.batch_placer(mesh, grad_accum),
                             progress=progress, desc=desc)
