"""The shared gradient loop: unlearning with a ``GradientMethod`` (and the dispatch to procedures).

``unlearn_model`` runs a gradient method in four stages:

1. Encode the forget records once per view the method reads and the retain records
   (``data.forget_retain.prepare_data``), each split padded to one bucket length.
2. Pair the data (``data.forget_retain.PairedSchedule``): forget rows in the one
   ``(seed, epoch)`` order of every loop (``data.batch.epoch_rows``), each paired with a
   retain row; a resumed run sees the same batches.
3. Cache what the method needs from the frozen target (see ``methods.base.CacheSpec``), in
   host memory, for the forget rows and for the retain rows the schedule will use. RKLD first
   fine-tunes a copy of the target on the forget answers (its *strengthened* model, by
   ``train.finetune.nll_finetune``) and caches the teacher built from both; that copy is
   dropped before the loop. (Peak device memory of that pre-stage: two weight copies plus
   one Adam state, as for any fine-tune beside a frozen model; the teacher pass holds the
   two weight copies, inference only.)
4. Run ``train.loop.run_loop`` over the paired batches with the method's objective:
   progress bar (loss, forget/retain answer probability), checkpoints, resume, NaN guard.

A procedure method gets a ``methods.base.UnlearnContext`` whose ``run_gradient`` is this
loop, and returns the model itself. This module imports the methods; no method imports it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import losses, resources
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.forget_retain import PairedSchedule, Prepared, prepare_data
from jaxunlearn.methods.base import (AUTO_TOP_K, CacheSpec, GradientMethod, ProcedureMethod,
                                     RefDist, UnlearnContext, UnlearnResult, compress_logprobs)
from jaxunlearn.methods.registry import get_method
from jaxunlearn.errors import MethodError
from jaxunlearn.models import compact
from jaxunlearn.models import lora as lora_lib
from jaxunlearn.models.outputs import forward
from jaxunlearn.train import distributed, finetune
from jaxunlearn.train import loop as loop_lib
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train import step as step_lib

__all__ = ["run_compactions", "ReferenceCache", "choose_top_k", "cache_budget", "build_cache",
           "check_lora_method",
           "unlearn_model"]


def run_compactions(data: Prepared, sched: PairedSchedule, epochs: int, *, micro_rows: int,
                    groups: int) -> tuple[dict[str, compact.Compaction], compact.Compaction]:
    """Padding-free capacities (``models.compact``) for every batch of a run.

    One ``Compaction`` per forget view and one for the retain rows, each the largest
    per-group count of real / loss tokens over the micro-batches of ``epochs`` epochs of
    ``sched`` (micro-batches of ``micro_rows`` rows, ``groups`` batch shards each): fixed
    for the run, so the step compiles once.
    """
    def plan(encoded: Sequence[batch_lib.Encoded], index: np.ndarray) -> compact.Compaction:
        real = np.array([e.length for e in encoded], np.int64)
        loss = np.array([int(np.count_nonzero(e.counted[1:])) for e in encoded], np.int64)

        def per_group(per_item: np.ndarray) -> np.ndarray:
            return per_item[index].reshape(-1, groups, micro_rows // groups).sum(axis=-1)

        return compact.covering(groups, per_group(real), per_group(loss))

    f_idx = np.concatenate([sched.forget_rows(e) for e in range(epochs)] or
                           [np.zeros((0, sched.rows), np.int64)])
    r_idx = np.concatenate([sched.retain_rows(e) for e in range(epochs)] or
                           [np.zeros((0, sched.rows), np.int64)])
    return ({view: plan(enc, f_idx) for view, enc in data.forget.items()},
            plan(data.retain, r_idx))


# ----------------------------------------------------------------------------------- the cache


def _score(fn, args, encoded, seq_len: int, batch_size: int, pad_id: int, mesh) -> Any:
    """``fn(*args, batch)`` over ``encoded`` in eval batches -> host arrays ``[N, ...]``."""
    place = (lambda b: mesh_lib.shard_batch(b, mesh)) if mesh is not None else jax.device_put
    parts = []
    for eb in batch_lib.iterate_eval_batches(encoded, batch_size, pad_id=pad_id, seq_len=seq_len):
        out = distributed.to_host(fn(*args, place(eb.batch)))  # rows of every process
        parts.append(jax.tree.map(lambda x: x[:eb.num_real], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def _logp(logits):
    # float32 before log_softmax (bf16 logsumexp over the vocabulary is too coarse).
    return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)


# Module-level jitted scorers with the graph as a static argument: a later run on the
# same model (the demo unlearns one target with every method) reuses the compilations.
@functools.partial(jax.jit, static_argnums=0)
def _seq_logp(graphdef, params, b):
    # The same fused label log-probs the objectives read: at the first step the policy's
    # log-prob equals the cached reference's to the bit on the same rows.
    out = forward(graphdef, params, b)
    return out.sequence_logprob(), out.token_counts()


@functools.partial(jax.jit, static_argnums=(0, 2))
def _ref_dist(graphdef, params, top_k, b):
    return compress_logprobs(_logp(forward(graphdef, params, b).logits), b.labels, top_k)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _hidden(graphdef, params, layer, b):
    return forward(graphdef, params, b, layer).hidden.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _rkld_teacher(graphdef, params, strengthened, alpha, top_k, b):
    orig = forward(graphdef, params, b).logits
    teacher = losses.rkld_teacher(orig, forward(graphdef, strengthened, b).logits, alpha)
    # Keep the tokens the ORIGINAL ranks highest: those the teacher lowers stay in the set.
    return compress_logprobs(_logp(teacher), b.labels, top_k, order_by=_logp(orig))


class ReferenceCache(NamedTuple):
    """Host arrays: ``forget`` fields ``[N_f, ...]``; ``retain`` fields ``[R, ...]`` for the
    retain rows used, ``retain_slot[j]`` = row of retain example ``j`` (-1: unused);
    ``info``: how the distributions were cached (``unlearn.json``'s ``reference_cache``)."""

    forget: dict
    retain: dict
    retain_slot: np.ndarray
    info: Mapping[str, Any] = {}

    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves((self.forget, self.retain)))

    def rows(self, forget_idx: np.ndarray, retain_idx: np.ndarray) -> dict:
        slots = self.retain_slot[retain_idx]
        return {**jax.tree.map(lambda x: x[forget_idx], self.forget),
                **jax.tree.map(lambda x: x[slots], self.retain)}


def cache_budget() -> int:
    """Host bytes a reference cache may take: half of the memory available now (the rest
    stays for the data, the model's host copies and JAX)."""
    return resources.available_memory() // 2


def choose_top_k(top_k: int | None, full_bytes: int, budget: int) -> int:
    """The ``K`` to cache with: ``top_k`` when set; else 0 (the exact full vocabulary) when
    its ``full_bytes`` fit in ``budget``, else ``AUTO_TOP_K``."""
    if top_k is not None:
        return top_k
    return 0 if full_bytes <= budget else AUTO_TOP_K


def _loss_positions(encoded: Sequence[batch_lib.Encoded], seq_len: int) -> np.ndarray:
    """``[N, seq_len]`` bool: the label positions that count (``collate``'s loss mask)."""
    mask = np.zeros((len(encoded), seq_len), bool)
    for i, e in enumerate(encoded):
        mask[i, :e.length] = e.counted[1:] > 0
    return mask


def _tail_mass(dist: RefDist, encoded, seq_len: int) -> dict[str, float] | None:
    """Mean and max over the loss tokens of the probability the cache lumps into "any
    other token" (0 for a full-vocabulary cache); None without loss tokens."""
    on = _loss_positions(encoded, seq_len)
    if not on.any():
        return None
    if dist.index is None:
        return {"mean": 0.0, "max": 0.0}
    mass = np.exp(np.asarray(dist.tail, np.float64))[on]
    return {"mean": float(mass.mean()), "max": float(mass.max())}


def build_cache(method: GradientMethod, graphdef, params, model_config, data: Prepared,
                retain_used: np.ndarray, *, batch_size: int, mesh=None, seed: int = 0,
                strengthened: Any = None, memory_budget: int | None = None) -> ReferenceCache:
    """Everything ``method`` needs from the frozen target, computed once (host memory).

    Args:
      params: the target's parameters (the reference).
      retain_used: sorted retain indices the schedule will use.
      strengthened: RKLD's strengthened parameters (required when the spec asks for its teacher).
      memory_budget: host bytes the distributions may take when the method leaves ``K`` to
        the cache (``ref_top_k = None``); default :func:`cache_budget`.
    Returns:
      the cache; its ``info`` says ``distribution`` (``"full"``, ``"top_k"`` or ``"none"``),
      ``top_k``, ``chosen_by`` (``"auto"`` or ``"method.ref_top_k"``), the bytes the full
      vocabulary would take, the cache's bytes, and per cached distribution the mean and
      max tail mass over the loss tokens (0 when full).
    """
    spec = method.cache_spec(model_config)
    kw = dict(batch_size=batch_size, pad_id=data.pad_id, mesh=mesh)
    answers = data.forget["answer"]
    used = [data.retain[i] for i in retain_used]
    positions = ((len(answers) * data.t_forget if spec.forget_dist is not None else 0)
                 + (len(used) * data.t_retain if spec.retain_dist and used else 0))
    full_bytes = positions * model_config.vocab_size * 4
    budget = cache_budget() if memory_budget is None and spec.top_k is None else memory_budget
    chosen_by = "auto" if spec.top_k is None else "method.ref_top_k"
    spec = dataclasses.replace(spec, top_k=choose_top_k(
        spec.top_k, full_bytes, budget if budget is not None else 0))
    forget: dict[str, Any] = {"ref_logp": {}}
    ref_answer, counts = _score(_seq_logp, (graphdef, params), answers, data.t_forget, **kw)
    forget["weight"] = np.asarray(method.sequence_weights(ref_answer, counts), np.float32)
    for view in spec.ref_logp_views:
        forget["ref_logp"][view] = (ref_answer if view == "answer" else _score(
            _seq_logp, (graphdef, params), data.forget[view], data.t_forget, **kw)[0])
    if spec.forget_dist == "reference":
        forget["forget_dist"] = _score(_ref_dist, (graphdef, params, spec.top_k), answers,
                                       data.t_forget, **kw)
    elif spec.forget_dist == "rkld_teacher":
        if strengthened is None:
            raise ValueError("build_cache: RKLD's teacher needs the strengthened parameters")
        forget["forget_dist"] = _score(
            _rkld_teacher, (graphdef, params, strengthened, float(method.teacher_alpha),
                            spec.top_k), answers, data.t_forget, **kw)
    elif spec.forget_dist is not None:
        raise ValueError(f"build_cache: unknown forget_dist {spec.forget_dist!r}")

    retain: dict[str, Any] = {}
    if not used:  # no update will run: nothing is ever gathered from the retain cache
        spec = dataclasses.replace(spec, retain_dist=False, hidden_layer=None)
    if spec.retain_dist:
        retain["retain_dist"] = _score(_ref_dist, (graphdef, params, spec.top_k), used,
                                       data.t_retain, **kw)
    if spec.hidden_layer is not None:
        retain["retain_hidden"] = _score(_hidden, (graphdef, params, spec.hidden_layer), used,
                                         data.t_retain, **kw)
        control = losses.rmu_control_vector(jax.random.fold_in(jax.random.key(seed), 0x524D55),
                                            model_config.hidden_size, method.steering_coeff)
        forget["control"] = np.broadcast_to(np.asarray(control), (len(answers), control.shape[0]))
    slot = np.full(len(data.retain), -1, np.int64)
    slot[retain_used] = np.arange(len(retain_used))
    cache = ReferenceCache(forget, retain, slot)
    return cache._replace(info=_cache_info(spec, chosen_by, cache, full_bytes, {
        "forget_dist": (answers, data.t_forget), "retain_dist": (used, data.t_retain)}))


def _cache_info(spec: CacheSpec, chosen_by: str, cache: ReferenceCache, full_bytes: int,
                sources) -> dict[str, Any]:
    # The budget is not recorded: it is this moment's free memory, and unlearn.json must
    # be the same for the same run (tests/test_determinism.py).
    dists = {name: d for name, d in (*cache.forget.items(), *cache.retain.items())
             if isinstance(d, RefDist)}
    info: dict[str, Any] = {"bytes": int(cache.nbytes())}
    if not dists:
        return {"distribution": "none", **info}
    full = all(d.index is None for d in dists.values())  # K = 0 or K >= V: kept whole
    info.update(distribution="full" if full else "top_k", top_k=None if full else spec.top_k,
                chosen_by=chosen_by, full_vocabulary_bytes=int(full_bytes))
    info["tail_mass"] = {name: _tail_mass(d, *sources[name]) for name, d in dists.items()}
    return info


# ----------------------------------------------------------------------------------- the loop


def check_lora_method(method, lora: lora_lib.LoraConfig | None) -> None:
    """``model.lora`` trains gradient methods and ReLearn; other procedures are refused."""
    if lora is not None and isinstance(method, ProcedureMethod) and not method.trains_lora:
        raise MethodError(f"model.lora: method {method.name} does not train with LoRA adapters "
                          "(gradient methods and relearn do); remove model.lora")


def _strengthen(graphdef, params, data: Prepared, method, train, *, mesh, seed, progress,
                frozen=None):
    """RKLD's strengthened model: the target fine-tuned on the forget answers (token NLL).

    With LoRA ``params`` are the adapters and ``frozen`` the base: the adapters are
    fine-tuned, and the strengthened model is the base with them (all parameters)."""
    rows = train.batch_size * train.grad_accum
    answers = data.forget["answer"]
    source = loop_lib.BatchSource(
        steps_per_epoch=batch_lib.steps_per_epoch(len(answers), rows),
        epoch_batches=lambda e: batch_lib.iterate_batches(
            answers, rows, seed=seed, epoch=e, pad_id=data.pad_id, seq_len=data.t_forget))
    lr = method.strengthen_learning_rate or train.optimizer.learning_rate
    result = finetune.nll_finetune(
        graphdef, params, source,
        optimizer=dataclasses.replace(train.optimizer, learning_rate=lr),
        total_steps=method.strengthen_epochs * source.steps_per_epoch,
        grad_accum=train.grad_accum, mesh=mesh, seed=seed, progress=progress,
        desc="rkld: strengthen", frozen=frozen)
    if frozen is not None:
        return nnx.merge_state(frozen, result.state.params)
    return result.state.params


def unlearn_model(model, tokenizer, forget_records: Sequence[Mapping],
                  retain_records: Sequence[Mapping], method_cfg, train_cfg, *, mesh=None,
                  seed: int = 0, max_len: int = 256, truncate: bool = False,
                  checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
                  fingerprint: str = "", progress: bool = False,
                  never_seen_records: Sequence[Mapping] = (),
                  hooks: Sequence[loop_lib.Hook] = (), log=None, log_every: int = 0,
                  lora: lora_lib.LoraConfig | None = None) -> UnlearnResult:
    """Unlearn ``forget_records`` from ``model`` in-process (no disk round trip).

    Args:
      model: the trained target (a ``Llama``); left untouched, a new model is returned.
      method_cfg: a method config or its dict (``{"name": "npo", "beta": 0.1}``).
      train_cfg: ``config.TrainConfig``; ``batch_size`` forget rows (each paired with one
        retain row) per micro-batch, ``grad_accum`` micro-batches per update; ``steps``
        updates, or ``epochs`` passes over the forget set.
      mesh: a ``("data", "fsdp")`` mesh (``train/mesh.py``) or None for one device.
      checkpoint_dir, resume, fingerprint: as ``train.loop.run_loop``.
      never_seen_records: records of the forget set's kind the target never saw (holdout
        people for QA, heldout canaries for canaries); procedure methods that stop at
        the never-seen memorisation level (SGA, TAU) measure it on them.
      hooks: ``train.loop.Hook`` s of the loop (gradient methods only), e.g. the progress
        evaluation of ``pipeline.progress``; their results join the history.
      log, log_every: as ``train.loop.run_loop`` (a procedure's gradient loops log too).
      lora: train LoRA adapters (``models.lora``) instead of every weight: gradient
        methods and procedures with ``trains_lora`` (ReLearn). The reference the method
        caches is the base (fresh adapters compute it exactly: ``B = 0``); the optimiser
        holds the adapters' moments only; the frozen base stays in its dtype.
    Returns:
      ``UnlearnResult(model, history, info)``: one record per update with ``loss``,
      ``grad_norm``, ``forget_loss``, ``retain_loss``, ``forget_prob``, ``retain_prob``;
      ``info["reference_cache"]`` as ``ReferenceCache.info`` (gradient methods). With
      ``lora`` the model carries the trained adapters (``models.lora.merge_adapters``
      folds them in).
    """
    method = get_method(method_cfg)
    if mesh is not None:
        mesh_lib.check_batch_divides(train_cfg.batch_size, mesh, "train.batch_size")
    check_lora_method(method, lora)
    if isinstance(method, ProcedureMethod):
        def run_gradient(gradient_method, forget, retain):
            return unlearn_model(model, tokenizer, forget, retain, gradient_method, train_cfg,
                                 mesh=mesh, seed=seed, max_len=max_len, truncate=truncate,
                                 progress=progress, log=log, log_every=log_every, lora=lora)

        return method.run(UnlearnContext(
            model=model, tokenizer=tokenizer, forget_records=tuple(forget_records),
            retain_records=tuple(retain_records), train=train_cfg, run_gradient=run_gradient,
            mesh=mesh, seed=seed, max_len=max_len, truncate=truncate,
            never_seen_records=tuple(never_seen_records)))
    model_config = model.config
    method.check_model(model_config)
    data = prepare_data(tokenizer, forget_records, retain_records, views=method.forget_views,
                        max_len=max_len, truncate=truncate)
    rows = train_cfg.batch_size * train_cfg.grad_accum
    sched = PairedSchedule(n_forget=len(data.forget["answer"]),
                           n_retain=len(data.retain), rows=rows, seed=seed)
    total = (train_cfg.steps if train_cfg.steps is not None
             else train_cfg.epochs * sched.steps_per_epoch)
    epochs = sched.epochs(total)

    if lora is not None:
        model = lora_lib.add_adapters(model, lora, seed=seed)
    graphdef, target = nnx.split(model, nnx.Param)
    if mesh is not None:
        target = jax.device_put(target, mesh_lib.param_shardings(target, mesh))
    # trained: every weight, or the adapters alone with the base frozen beside them
    trained, frozen = nnx.split_state(target, nnx.LoRAParam, ...) if lora else (target, None)
    strengthened = None
    if method.cache_spec(model_config).forget_dist == "rkld_teacher":
        strengthened = _strengthen(graphdef, trained, data, method, train_cfg, mesh=mesh,
                                   seed=seed, progress=progress, frozen=frozen)
    cache = build_cache(method, graphdef, target, model_config, data, sched.retain_used(total),
                        batch_size=train_cfg.batch_size, mesh=mesh, seed=seed,
                        strengthened=strengthened)
    del strengthened  # from here on, only the model being unlearned is on the device

    plans, retain_plan = {}, None
    if train_cfg.padding_free:
        plans, retain_plan = run_compactions(data, sched, epochs, micro_rows=train_cfg.batch_size,
                                             groups=1 if mesh is None else mesh_lib.batch_shards(mesh))

    def epoch_batches(epoch: int):
        for f_idx, r_idx in zip(sched.forget_rows(epoch), sched.retain_rows(epoch)):
            yield {
                "forget": {v: batch_lib.collate([enc[i] for i in f_idx], data.t_forget,
                                                data.pad_id)._replace(compaction=plans.get(v))
                           for v, enc in data.forget.items()},
                "retain": batch_lib.collate([data.retain[i] for i in r_idx], data.t_retain,
                                            data.pad_id)._replace(compaction=retain_plan),
                "cache": cache.rows(f_idx, r_idx),
            }

    optimizer = step_lib.make_optimizer(train_cfg.optimizer, total)
    state = step_lib.init_train_state(step_lib.copy_params(trained), optimizer,
                                      jax.random.key(seed), mesh)
    step_fn = step_lib.make_train_step(
        method.objective(graphdef, model_config), optimizer, mesh=mesh,
        state_sharding=step_lib.state_shardings(state), grad_accum=train_cfg.grad_accum,
        with_frozen=lora is not None,
        frozen_sharding=None if frozen is None else step_lib.state_shardings(frozen))
    if lora is not None:
        step_fn = functools.partial(finetune.call_with_frozen, step_fn, frozen)
    source = loop_lib.BatchSource(steps_per_epoch=sched.steps_per_epoch,
                                  epoch_batches=epoch_batches)
    result = loop_lib.run_loop(
        step_fn, state, source, total_steps=total, checkpoint_dir=checkpoint_dir,
        checkpoint_every=train_cfg.checkpoint_every, resume=resume, fingerprint=fingerprint,
        model_config=dataclasses.asdict(model_config),
        place_batch=loop_lib.batch_placer(mesh, train_cfg.grad_accum), progress=progress,
        desc=f"unlearn {method.name}", hooks=hooks, log=log, log_every=log_every)
    params = result.state.params if lora is None else nnx.merge_state(frozen, result.state.params)
    return UnlearnResult(nnx.merge(graphdef, params), result.history,
                         {"reference_cache": dict(cache.info)})
