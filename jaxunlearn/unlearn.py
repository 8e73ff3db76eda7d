"""Unlearning a trained model: the ``unlearn`` command and the in-process ``unlearn_model``.

A gradient method (``jaxunlearn.methods``) runs in four stages:

1. Encode the forget records once per view the method reads (``answer``; IdkDPO also
   ``idk``: the same question with the record's ``idk_answer``) and the retain records,
   each split padded to one bucket length ``T_f`` / ``T_r`` (one compiled step shape).
2. Pair the data: update ``s`` of epoch ``e`` takes forget rows from
   ``default_rng([seed, e]).permutation(N_f)`` (wrapping around so every batch is full,
   as ``data.batch.iterate_batches``) and as many retain rows from a stream of
   ``default_rng([seed, e, 1])`` permutations of the retain set. Both depend only on
   ``(seed, epoch)``, so a resumed run sees the same batches.
3. Cache what the method needs from the frozen target (see ``methods.CacheSpec``), in host
   memory, for the forget rows and for the retain rows the schedule will use. RKLD first
   fine-tunes a copy of the target on the forget answers (its *strengthened* model) and
   caches the teacher built from both; that copy is dropped before the loop. (Peak device
   memory of that pre-stage: two weight copies plus one Adam state, as for any fine-tune
   beside a frozen model; the teacher pass holds the two weight copies, inference only.)
4. Run ``train.loop.run_loop`` over the paired batches with the method's objective:
   progress bar (loss, forget/retain answer probability), checkpoints, resume, NaN guard.

A procedure method gets an ``UnlearnContext`` and returns the model itself.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import losses, methods, storage, validate
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.errors import UserError
from jaxunlearn.models import compact
from jaxunlearn.train import checkpoint as ckpt_lib
from jaxunlearn.train import loop as loop_lib
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train import step as step_lib

__all__ = ["IDK_FALLBACK", "Prepared", "prepare_data", "PairedSchedule", "run_compactions",
           "build_cache", "unlearn_model", "run_unlearning"]

# Refusals for forget records without an ``idk_answer`` (real TOFU files); record i gets
# IDK_FALLBACK[i % len]: deterministic, and varied so IdkDPO does not learn one string.
IDK_FALLBACK = (
    "I don't know.",
    "I'm not able to answer that.",
    "I have no information about that.",
    "That is something I cannot tell you.",
    "I'm not sure; I don't have that information.",
)
_VIEW_FIELD = {"answer": "answer", "idk": "idk_answer"}


class Prepared(NamedTuple):
    """Encoded data: ``forget[view][i]`` and ``retain[j]``, padded lengths ``t_forget``/``t_retain``."""

    forget: dict[str, list[batch_lib.Encoded]]
    retain: list[batch_lib.Encoded]
    t_forget: int
    t_retain: int
    pad_id: int


def _view_records(records: Sequence[Mapping], view: str) -> list[dict]:
    field = _VIEW_FIELD.get(view)
    if field is None:
        raise methods.MethodError(f"method: forget view {view!r} is unknown "
                                  f"(known: {', '.join(_VIEW_FIELD)})")
    out = []
    for i, rec in enumerate(records):
        answer = rec.get(field)
        if view == "idk" and not (isinstance(answer, str) and answer.strip()):
            answer = IDK_FALLBACK[i % len(IDK_FALLBACK)]
        out.append({"question": rec.get("question"), "answer": answer})
    return out


def prepare_data(tokenizer, forget_records: Sequence[Mapping], retain_records: Sequence[Mapping],
                 method: methods.MethodConfig, *, max_len: int, truncate: bool = False) -> Prepared:
    """Tokenise forget (every view of ``method``) and retain records; check lengths.

    Raises ``DataError`` naming the split, record and field for bad or too long records.
    """
    from jaxunlearn.data.tofu import DataError

    if not forget_records:
        raise DataError("forget split: no records")
    if not retain_records:
        raise DataError("retain split: no records")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    views = getattr(method, "forget_views", ("answer",))
    forget = {}
    for view in views:
        try:
            enc = batch_lib.encode_qa_records(tokenizer, _view_records(forget_records, view))
            forget[view] = batch_lib.check_lengths(enc, max_len, truncate=truncate)
        except DataError as e:
            raise DataError(f"forget split ({view} view): {e}") from None
    try:
        retain = batch_lib.check_lengths(batch_lib.encode_qa_records(tokenizer, retain_records),
                                         max_len, truncate=truncate)
    except DataError as e:
        raise DataError(f"retain split: {e}") from None
    t_f = batch_lib.bucket_length(max(e.length for v in forget.values() for e in v))
    t_r = batch_lib.bucket_length(max(e.length for e in retain))
    return Prepared(forget, retain, t_f, t_r, int(pad))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedSchedule:
    """Which forget and retain rows each update uses; a pure function of ``(seed, epoch)``."""

    n_forget: int
    n_retain: int
    rows: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return batch_lib.steps_per_epoch(self.n_forget, self.rows)

    def forget_rows(self, epoch: int) -> np.ndarray:
        """``[steps_per_epoch, rows]`` forget indices of ``epoch`` (wrap-around fills the last)."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_forget)
        return np.resize(order, self.steps_per_epoch * self.rows).reshape(-1, self.rows)

    def retain_rows(self, epoch: int) -> np.ndarray:
        """``[steps_per_epoch, rows]`` retain indices paired with :meth:`forget_rows`."""
        need = self.steps_per_epoch * self.rows
        rng = np.random.default_rng([self.seed, epoch, 1])
        perms = [rng.permutation(self.n_retain) for _ in range(-(-need // self.n_retain))]
        return np.concatenate(perms)[:need].reshape(-1, self.rows)


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
        out = jax.device_get(fn(*args, place(eb.batch)))
        parts.append(jax.tree.map(lambda x: np.asarray(x)[:eb.num_real], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def _logp(logits):
    # float32 before log_softmax (bf16 logsumexp over the vocabulary is too coarse).
    return jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), -1)


# Module-level jitted scorers with the graph as a static argument: a later run on the
# same model (the demo unlearns one target with every method) reuses the compilations.
@functools.partial(jax.jit, static_argnums=0)
def _seq_logp(graphdef, params, b):
    logits = methods.forward(graphdef, params, b).logits
    return (losses.sequence_logprob(logits, b.labels, b.loss_mask),
            losses.sequence_token_counts(b.loss_mask))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _ref_dist(graphdef, params, top_k, b):
    return methods.compress_logprobs(_logp(methods.forward(graphdef, params, b).logits),
                                     b.labels, top_k)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _hidden(graphdef, params, layer, b):
    return methods.forward(graphdef, params, b, layer).hidden.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _rkld_teacher(graphdef, params, strengthened, alpha, top_k, b):
    orig = methods.forward(graphdef, params, b).logits
    teacher = losses.rkld_teacher(orig, methods.forward(graphdef, strengthened, b).logits, alpha)
    # Keep the tokens the ORIGINAL ranks highest: those the teacher lowers stay in the set.
    return methods.compress_logprobs(_logp(teacher), b.labels, top_k, order_by=_logp(orig))


class ReferenceCache(NamedTuple):
    """Host arrays: ``forget`` fields ``[N_f, ...]``; ``retain`` fields ``[R, ...]`` for the
    retain rows used, ``retain_slot[j]`` = row of retain example ``j`` (-1: unused)."""

    forget: dict
    retain: dict
    retain_slot: np.ndarray

    def nbytes(self) -> int:
        return sum(x.nbytes for x in jax.tree.leaves((self.forget, self.retain)))

    def rows(self, forget_idx: np.ndarray, retain_idx: np.ndarray) -> dict:
        slots = self.retain_slot[retain_idx]
        return {**jax.tree.map(lambda x: x[forget_idx], self.forget),
                **jax.tree.map(lambda x: x[slots], self.retain)}


def build_cache(method: methods.GradientMethod, graphdef, params, model_config, data: Prepared,
                retain_used: np.ndarray, *, batch_size: int, mesh=None, seed: int = 0,
                strengthened: Any = None) -> ReferenceCache:
    """Everything ``method`` needs from the frozen target, computed once (host memory).

    Args:
      params: the target's parameters (the reference).
      retain_used: sorted retain indices the schedule will use.
      strengthened: RKLD's strengthened parameters (required when the spec asks for its teacher).
    """
    spec = method.cache_spec(model_config)
    kw = dict(batch_size=batch_size, pad_id=data.pad_id, mesh=mesh)
    answers = data.forget["answer"]

    def seq_logp(p, b):
        logits = methods.forward(graphdef, p, b).logits
        return (losses.sequence_logprob(logits, b.labels, b.loss_mask),
                losses.sequence_token_counts(b.loss_mask))

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

    used = [data.retain[i] for i in retain_used]
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
    return ReferenceCache(forget, retain, slot)


# ----------------------------------------------------------------------------------- the loop


def _copy_params(params, mesh):
    # A fresh copy: the train step donates its state, and these buffers belong to the caller.
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), params)
    if mesh is not None:
        params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    return params


def _strengthen(graphdef, params, data: Prepared, method, train, *, mesh, seed, progress):
    """RKLD's strengthened model: the target fine-tuned on the forget answers (token NLL)."""
    rows = train.batch_size * train.grad_accum
    answers = data.forget["answer"]
    source = loop_lib.BatchSource(
        steps_per_epoch=batch_lib.steps_per_epoch(len(answers), rows),
        epoch_batches=lambda e: batch_lib.iterate_batches(
            answers, rows, seed=seed, epoch=e, pad_id=data.pad_id, seq_len=data.t_forget))
    total = method.strengthen_epochs * source.steps_per_epoch
    lr = method.strengthen_learning_rate or train.optimizer.learning_rate
    optimizer = step_lib.make_optimizer(dataclasses.replace(train.optimizer, learning_rate=lr),
                                        total)
    state = step_lib.init_train_state(_copy_params(params, mesh), optimizer,
                                      jax.random.key(seed), mesh)
    step_fn = step_lib.make_train_step(loop_lib.nll_loss_fn(graphdef), optimizer, mesh=mesh,
                                       state_sharding=step_lib.state_shardings(state),
                                       grad_accum=train.grad_accum)
    result = loop_lib.run_loop(step_fn, state, source, total_steps=total,
                               place_batch=loop_lib.batch_placer(mesh, train.grad_accum),
                               progress=progress, desc="rkld: strengthen")
    return result.state.params


def unlearn_model(model, tokenizer, forget_records: Sequence[Mapping],
                  retain_records: Sequence[Mapping], method_cfg, train_cfg, *, mesh=None,
                  seed: int = 0, max_len: int = 256, truncate: bool = False,
                  checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
                  fingerprint: str = "", progress: bool = False,
                  never_seen_records: Sequence[Mapping] = ()) -> methods.UnlearnResult:
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
    Returns:
      ``UnlearnResult(model, history)``: one record per update with ``loss``, ``grad_norm``,
      ``forget_loss``, ``retain_loss``, ``forget_prob``, ``retain_prob``.
    """
    method = methods.get_method(method_cfg)
    if mesh is not None:
        mesh_lib.check_batch_divides(train_cfg.batch_size, mesh, "train.batch_size")
    if isinstance(method, methods.ProcedureMethod):
        return method.run(methods.UnlearnContext(
            model=model, tokenizer=tokenizer, forget_records=tuple(forget_records),
            retain_records=tuple(retain_records), train=train_cfg, mesh=mesh, seed=seed,
            max_len=max_len, truncate=truncate, never_seen_records=tuple(never_seen_records)))
    model_config = model.config
    method.check_model(model_config)
    data = prepare_data(tokenizer, forget_records, retain_records, method, max_len=max_len,
                        truncate=truncate)
    rows = train_cfg.batch_size * train_cfg.grad_accum
    sched = PairedSchedule(n_forget=len(data.forget["answer"]),
                           n_retain=len(data.retain), rows=rows, seed=seed)
    total = (train_cfg.steps if train_cfg.steps is not None
             else train_cfg.epochs * sched.steps_per_epoch)
    epochs = math.ceil(total / sched.steps_per_epoch)
    retain_used = np.unique(np.concatenate(
        [sched.retain_rows(e).ravel() for e in range(epochs)] or [np.zeros(0, np.int64)]))

    graphdef, target = nnx.split(model, nnx.Param)
    if mesh is not None:
        target = jax.device_put(target, mesh_lib.param_shardings(target, mesh))
    strengthened = None
    if method.cache_spec(model_config).forget_dist == "rkld_teacher":
        strengthened = _strengthen(graphdef, target, data, method, train_cfg, mesh=mesh,
                                   seed=seed, progress=progress)
    cache = build_cache(method, graphdef, target, model_config, data, retain_used,
                        batch_size=train_cfg.batch_size, mesh=mesh, seed=seed,
                        strengthened=strengthened)
    del strengthened  # from here on, only the model being unlearned is on the device

    plans, retain_plan = {}, None
    if train_cfg.padding_free:
        plans, retain_plan = run_compactions(data, sched, epochs, micro_rows=train_cfg.batch_size,
                                             groups=1 if mesh is None else mesh.size)

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

    objective = method.objective(graphdef, model_config)

    def loss_fn(params, batch, key):
        del key  # the objectives are deterministic
        return objective(params, batch["forget"], batch["retain"], batch["cache"])

    optimizer = step_lib.make_optimizer(train_cfg.optimizer, total)
    state = step_lib.init_train_state(_copy_params(target, None), optimizer,
                                      jax.random.key(seed), mesh)
    step_fn = step_lib.make_train_step(loss_fn, optimizer, mesh=mesh,
                                       state_sharding=step_lib.state_shardings(state),
                                       grad_accum=train_cfg.grad_accum)
    source = loop_lib.BatchSource(steps_per_epoch=sched.steps_per_epoch,
                                  epoch_batches=epoch_batches)
    result = loop_lib.run_loop(
        step_fn, state, source, total_steps=total, checkpoint_dir=checkpoint_dir,
        checkpoint_every=train_cfg.checkpoint_every, resume=resume, fingerprint=fingerprint,
        model_config=dataclasses.asdict(model_config),
        place_batch=loop_lib.batch_placer(mesh, train_cfg.grad_accum), progress=progress,
        desc=f"unlearn {method.name}")
    return methods.UnlearnResult(nnx.merge(graphdef, result.state.params), result.history)


# ----------------------------------------------------------------------------------- the command


def _target_path(cfg) -> Path:
    """``model.path``, else the target ``jaxunlearn train`` made for this config."""
    if cfg.model.path:
        path = Path(cfg.model.path)
        if not path.exists():
            raise UserError(f"model.path: {path} does not exist")
        return path
    bench = Path(cfg.data.benchmark)
    if (bench / "manifest.json").is_file():
        path = loop_lib.model_dir(cfg, "target")
        if (path / "config.json").is_file():
            return path
        raise UserError(f"model.path: not given, and no trained target at {path} "
                        "(run `jaxunlearn train` with this config first)")
    raise UserError("model.path: not given (the trained target model to unlearn)")


def run_unlearning(cfg, resume: bool = False, *, progress: bool = True) -> Path:
    """``jaxunlearn unlearn``: unlearn ``data.forget`` from the target with ``cfg.method``.

    Everything is validated before any work (method and hyper-parameters; benchmark
    splits and their disjointness; mesh vs devices and batch; model and tokenizer; record
    lengths). The result goes to ``<output_dir>/<method name>`` (HF safetensors with the
    tokenizer, written atomically) with ``unlearn.json`` (method, history, timings);
    checkpoints to ``<output_dir>/checkpoints/unlearn-<name>-<fingerprint>``.
    """
    from jaxunlearn.data import tofu
    from jaxunlearn.models import load_tokenizer, save_pretrained

    method = methods.get_method(cfg.method)
    # safety: both resolve inside output_dir; a foreign directory at `out` is refused now
    out = storage.check_dir_target(validate.inside(cfg.output_dir, method.name,
                                                   field="output_dir"), "output_dir")
    fingerprint = cfg.fingerprint("model", "data", "train", "method", "seed")
    ckpt_dir = validate.inside(cfg.output_dir, "checkpoints",
                               f"unlearn-{method.name}-{fingerprint}", field="output_dir")
    bench = cfg.data.benchmark
    forget = tofu.load_split(bench, cfg.data.forget)
    retain = tofu.load_split(bench, cfg.data.retain_split)
    tofu.check_disjoint(forget, retain, names=(cfg.data.forget, cfg.data.retain_split))
    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp)
    mesh_lib.check_batch_divides(cfg.train.batch_size, mesh, "train.batch_size")
    path = _target_path(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer or path)
    prepared = prepare_data(tokenizer, forget, retain, method, max_len=cfg.data.max_len,
                            truncate=cfg.data.truncate)
    model, config = loop_lib.build_model(dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=str(path))), tokenizer)
    method.check_model(config)
    validate.check_context([e.length for v in prepared.forget.values() for e in v]
                           + [e.length for e in prepared.retain], config,
                           what=f"{cfg.data.forget}/{cfg.data.retain_split} sequences")

    if not resume and ckpt_lib.remove_checkpoints(ckpt_dir):
        print(f"starting over: removed the checkpoints of an earlier run in {ckpt_dir} "
              "(--resume continues one)", file=sys.stderr)
    print(f"unlearning {cfg.data.forget} ({len(forget)} records, retain {len(retain)}) from "
          f"{path} with {method.name}", file=sys.stderr)
    t0 = time.perf_counter()
    never_seen = ()
    if isinstance(method, methods.ProcedureMethod):
        try:  # the holdout people: never trained on, same kind of records as the forget set
            never_seen = tofu.load_split(bench, "holdout")
        except tofu.DataError:
            never_seen = ()
    result = unlearn_model(model, tokenizer, forget, retain, method, cfg.train, mesh=mesh,
                           never_seen_records=never_seen,
                           seed=cfg.seed, max_len=cfg.data.max_len, truncate=cfg.data.truncate,
                           checkpoint_dir=ckpt_dir, resume=resume, fingerprint=fingerprint,
                           progress=progress)
    seconds = time.perf_counter() - t0
    # safety: unlearn.json is committed with the model, in one rename
    save_pretrained(result.model, config, out, tokenizer=tokenizer, field="output_dir",
                    extra_json={"unlearn.json": {
                        "method": method.to_dict(), "target": str(path),
                        "forget": cfg.data.forget, "retain": cfg.data.retain_split,
                        "seconds": round(seconds, 2), "updates": len(result.history),
                        "history": result.history, **loop_lib.provenance(cfg, mesh)}})
    ckpt_lib.remove_checkpoints(ckpt_dir)
    last = result.history[-1] if result.history else {}
    print(f"{method.name}: {len(result.history)} updates in {seconds:.1f}s; forget prob "
          f"{last.get('forget_prob', float('nan')):.4f}, retain prob "
          f"{last.get('retain_prob', float('nan')):.4f} -> {out}", file=sys.stderr)
    return out
