"""The training loop shared by training and unlearning: steps, progress, checkpoints, resume.

``run_loop`` drives a jitted ``step(state, batch) -> (state, metrics)`` (from
:func:`jaxunlearn.train.step.make_train_step`) over a deterministic :class:`BatchSource`
for ``total_steps`` updates, and

  * shows a tqdm progress bar with the loss and the step's metrics;
  * calls :class:`Hook` s every ``k`` steps (evaluation, logging) and records what
    they return in the history;
  * hands history records to ``log`` (a :class:`jaxunlearn.train.tracking.Tracker`'s)
    every ``log_every`` updates, after every hook call and after the last update;
  * writes an atomic checkpoint (:mod:`jaxunlearn.train.checkpoint`) every
    ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM (after finishing the
    step in flight, :mod:`jaxunlearn.interrupts`; then :class:`Interrupted` is raised,
    exit 130 in the CLI) and when
    a step is non-finite (the last good state; then :class:`NonFiniteError`, exit 2);
  * resumes from the newest checkpoint at the same data position (epoch, batch in
    epoch), so an interrupted and resumed run ends bit for bit where an uninterrupted
    one does (CPU; the step, the batches and the RNG are all pure functions of the
    step number).

What the loop trains on and with is the caller's: the commands that train and unlearn
models live in :mod:`jaxunlearn.pipeline`.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from jaxunlearn import interrupts
from jaxunlearn.errors import CheckpointError, NonFiniteError
from jaxunlearn.train import checkpoint as ckpt
from jaxunlearn.train import distributed
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import TrainState

StepFn = Callable[[TrainState, Any], tuple[TrainState, Mapping[str, jax.Array]]]


class Interrupted(interrupts.Interrupted):
    """SIGINT/SIGTERM stopped the loop after a complete step; the state was checkpointed.

    A ``KeyboardInterrupt`` so that anything catching Ctrl-C (the CLI: exit 130) does.
    """

    def __init__(self, message: str, *, state: TrainState, history: list[dict],
                 checkpoint: Path | None, signum: int | None = None):
        super().__init__(message, signum=signum)
        self.state, self.history, self.checkpoint = state, history, checkpoint


@dataclasses.dataclass(frozen=True, kw_only=True)
class BatchSource:
    """A deterministic, resumable stream of host batches.

    Attributes:
      steps_per_epoch: batches per epoch.
      epoch_batches: ``epoch -> iterable`` of that epoch's batches, always the same
        ones in the same order for the same epoch (e.g. ``iterate_batches(..., seed,
        epoch=epoch)``); batches may be any pytree of ``[B, ...]`` arrays.
    """

    steps_per_epoch: int
    epoch_batches: Callable[[int], Iterable[Any]]

    def __post_init__(self):
        if isinstance(self.steps_per_epoch, bool) or not isinstance(self.steps_per_epoch, int) \
                or self.steps_per_epoch < 1:
            raise ValueError(f"BatchSource.steps_per_epoch must be an integer >= 1, "
                             f"got {self.steps_per_epoch!r}")

    def position(self, step: int) -> tuple[int, int]:
        """``(epoch, batch index)`` of the batch that update number ``step`` (0-based) uses."""
        return divmod(step, self.steps_per_epoch)

    def stream(self, epoch: int, index: int) -> Iterator[tuple[int, int, Any]]:
        """``(epoch, index, batch)`` forever, starting at batch ``index`` of ``epoch``."""
        while True:
            n = 0
            for i, batch in enumerate(self.epoch_batches(epoch)):
                n += 1
                if i >= index:
                    yield epoch, i, batch
            if n != self.steps_per_epoch:
                raise ValueError(f"BatchSource: epoch {epoch} gave {n} batches, "
                                 f"steps_per_epoch says {self.steps_per_epoch}")
            epoch, index = epoch + 1, 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Hook:
    """``fn(step, state) -> {name: value} | None`` after every ``every``-th update.

    ``step`` counts updates done (1-based). Returned values go into that step's history
    record as ``"{name}/{key}"``. The state must not be kept: the next step donates it.
    ``at_end``: also call it after the last update when that is not a multiple of ``every``.
    """

    every: int
    fn: Callable[[int, TrainState], Mapping[str, float] | None]
    name: str = "eval"
    at_end: bool = True

    def __post_init__(self):
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"Hook.every must be an integer >= 1, got {self.every!r}")


class LoopResult(NamedTuple):
    """Final state, one history record per update (``step``, ``epoch``, ``index``,
    ``loss``, ``grad_norm``, the step's metrics, hook results), the last checkpoint
    written (or None), and the step the run started from (> 0 after a resume)."""

    state: TrainState
    history: list[dict]
    checkpoint: Path | None
    start_step: int


def batch_placer(mesh=None, grad_accum: int = 1) -> Callable[[Any], Any]:
    """Host batch ``[B, ...]`` -> device batch, sharded over the mesh when given.

    With ``grad_accum > 1`` rows are split into ``[grad_accum, B / grad_accum, ...]``
    micro-batches (as :func:`make_train_step` expects), sharded on their second axis.
    """
    if grad_accum < 1:
        raise ValueError(f"train.grad_accum must be >= 1, got {grad_accum}")

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % grad_accum:
            raise ValueError(f"train.grad_accum={grad_accum} does not divide the batch of "
                             f"{x.shape[0]} rows")
        return x.reshape(grad_accum, x.shape[0] // grad_accum, *x.shape[1:])

    def place(batch):
        if grad_accum > 1:
            batch = jax.tree.map(split, batch)
        if mesh is None:
            return jax.device_put(batch)
        if grad_accum > 1:
            spec = jax.sharding.PartitionSpec(None, mesh_lib.BATCH_AXES)
            sharding = jax.sharding.NamedSharding(mesh, spec)
            return jax.tree.map(lambda x: mesh_lib.place_global(x, sharding), batch)
        return mesh_lib.shard_batch(batch, mesh)

    return place


def _host_metrics(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def run_loop(step_fn: StepFn, state: TrainState, source: BatchSource, *, total_steps: int,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
             keep: int = 2, resume: bool = False, fingerprint: str = "",
             model_config: Mapping[str, Any] | None = None,
             place_batch: Callable[[Any], Any] | None = None, hooks: Sequence[Hook] = (),
             progress: bool = True, desc: str = "train",
             log: Callable[[Mapping[str, float]], None] | None = None,
             log_every: int = 0) -> LoopResult:
    """Runs ``step_fn`` until ``total_steps`` updates are done.

    Args:
      step_fn: jitted ``(state, batch) -> (state, metrics)``; metrics hold ``loss`` and
        ``finite`` (0/1, as from ``make_train_step``: a non-finite step returns the
        input state unchanged). It may donate its input state.
      state: the initial state (a fresh one; on resume it supplies the structure,
        shapes and shardings the checkpoint is restored into).
      source: the data; update ``s`` (0-based) trains on ``source.position(s)``.
      checkpoint_dir: where checkpoints go; None disables them (then nothing can resume
        and interruption saves nothing).
      log, log_every: ``log(record)`` after every ``log_every``-th update (0: only after
        updates a hook ran at, and the last), e.g. ``Tracker.log``.
      checkpoint_every: also checkpoint after every ``k``-th update (0: only at the end,
        on interruption and on a non-finite step).
      keep: checkpoints kept on disk.
      resume: continue from the newest checkpoint in ``checkpoint_dir`` when there is
        one. Without it, a directory that already holds checkpoints is refused.
      fingerprint, model_config: stored in each checkpoint and required to match on resume.
      place_batch: host batch -> device batch (default ``jax.device_put``; see
        :func:`batch_placer` for meshes and gradient accumulation).

    Raises:
      Interrupted: after SIGINT/SIGTERM, once the state is checkpointed.
      NonFiniteError: a non-finite step; the last good state is checkpointed.
      CheckpointError: unusable checkpoint directory.
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 0:
        raise ValueError(f"total_steps must be an integer >= 0, got {total_steps!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 0:
        raise ValueError(f"log_every must be an integer >= 0, got {log_every!r}")
    if checkpoint_every < 0:
        raise CheckpointError(f"train.checkpoint_every must be >= 0, got {checkpoint_every}")
    place_batch = place_batch or jax.device_put
    history: list[dict] = []
    start = int(state.step)
    last_ckpt: Path | None = None
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
            raise CheckpointError(f"{checkpoint_dir}: exists and is not a directory")
        if distributed.is_primary():
            ckpt.remove_stale_temps(checkpoint_dir)
        latest = ckpt.latest_checkpoint(checkpoint_dir)
        if latest is not None and not resume:
            raise CheckpointError(f"{checkpoint_dir}: already holds checkpoints (newest "
                                  f"{latest.name}); resume, or delete the directory to restart")
        if latest is not None:
            state, meta = ckpt.restore_checkpoint(latest, state, fingerprint=fingerprint,
                                                  model_config=model_config)
            start, last_ckpt = meta.step, latest
            if (meta.epoch, meta.batch_index) != source.position(start):
                raise CheckpointError(
                    f"{latest}: data position epoch {meta.epoch} batch {meta.batch_index} does "
                    f"not match step {start} with {source.steps_per_epoch} batches per epoch "
                    "(the data or batch size changed)")
            history = [dict(h) for h in meta.history]

    def save(st: TrainState, step: int) -> Path | None:
        if checkpoint_dir is None:
            return None
        epoch, index = source.position(step)
        meta = ckpt.CheckpointMeta(step=step, epoch=epoch, batch_index=index,
                                   fingerprint=fingerprint, model_config=model_config,
                                   history=tuple(history))
        return ckpt.save_checkpoint(checkpoint_dir, st, meta, keep=keep)

    step = start
    bar = _progress(total_steps, start, desc, progress)
    stream = source.stream(*source.position(start)) if start < total_steps else iter(())
    try:
        with interrupts.deferred():
            interrupts.check("before the first update")
            while step < total_steps:
                epoch, index, batch = next(stream)
                state, metrics = step_fn(state, place_batch(batch))
                m = _host_metrics(metrics)
                if m.get("finite", 1.0) == 0.0:
                    # The step kept its input state: that is the last good one.
                    path = save(state, step)
                    where = f"; saved it to {path}" if path else ""
                    raise NonFiniteError(
                        f"{desc}: update {step + 1} (epoch {epoch}, batch {index}) gave a "
                        f"non-finite loss ({m.get('loss')}) or gradient norm "
                        f"({m.get('grad_norm')}); stopped at the last good state (update "
                        f"{step}){where}. Lower train.optimizer.learning_rate or check the data.",
                        state=state, history=history, checkpoint=path, step=step + 1)
                step += 1
                record = {"step": step, "epoch": epoch, "index": index,
                          **{k: v for k, v in m.items() if k != "finite"}}
                ran_hook = False
                for hook in hooks:
                    if step % hook.every == 0 or (hook.at_end and step == total_steps):
                        ran_hook = True
                        out = hook.fn(step, state) or {}
                        record.update({f"{hook.name}/{k}": float(v) for k, v in out.items()})
                history.append(record)
                if log is not None and ((log_every and step % log_every == 0) or ran_hook
                                        or step == total_steps):
                    log(record)
                bar.update(1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                 if k not in ("step", "epoch", "index")}, refresh=False)
                if (signum := interrupts.received()) is not None:
                    path = save(state, step)
                    where = (f"checkpoint {path}; rerun with resume to continue" if path
                             else "no checkpoint directory, nothing saved")
                    name = interrupts.signal_name(signum)
                    message = f"{desc}: {name} after update {step}: {where}"
                    raise Interrupted(message, state=state, history=history, checkpoint=path,
                                      signum=signum)
                if checkpoint_every and step % checkpoint_every == 0 and step < total_steps:
                    last_ckpt = save(state, step)
            if checkpoint_dir is not None and (last_ckpt is None or step != start):
                last_ckpt = save(state, step)
    finally:
        bar.close()
    return LoopResult(state=state, history=history, checkpoint=last_ckpt, start_step=start)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    # One bar per job: process 0's.
    return tqdm(total=total, initial=initial, desc=desc,
                disable=not (enabled and distributed.is_primary()),
                dynamic_ncols=True, file=sys.stderr, leave=False)
