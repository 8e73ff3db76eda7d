"""``jaxunlearn unlearn``: unlearn ``data.forget`` from a trained target with one method.

Everything is checked before the model is loaded; the unlearning itself is
``methods.runner.unlearn_model`` (gradient methods) or the method's own procedure.
On a MUSE source (``data.muse``) the forget and retain sets are the ``raw`` documents
``data.forget`` / ``data.retain`` (default ``retain1``) cut into ``data.max_len``-token
chunks as open-unlearning's ``PretrainingDataset`` (it uses 2048).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import jax
from flax import nnx

from jaxunlearn import methods, storage, validate
from jaxunlearn.data import muse, tofu
from jaxunlearn.data.forget_retain import prepare_data
from jaxunlearn.data.schema import holdout_split_of
from jaxunlearn.errors import DataError, MethodError, UserError
from jaxunlearn.eval import progress as progress_eval
from jaxunlearn.methods import runner
from jaxunlearn.models import load_pretrained, load_tokenizer, save_pretrained
from jaxunlearn.models.hub import is_hub_id, resolve_model_path
from jaxunlearn.models.io import save_adapters
from jaxunlearn.models.lora import merge_adapters
from jaxunlearn.pipeline.progress import ProgressMonitor
from jaxunlearn.pipeline.provision import build_model, provenance, require_benchmark
from jaxunlearn.pipeline.training import model_dir
from jaxunlearn.train import checkpoint as ckpt_lib
from jaxunlearn.train import distributed
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train import tracking

__all__ = ["MUSE_DEFAULT_RETAIN", "target_path", "retain_reference_path", "run_unlearning"]

MUSE_DEFAULT_RETAIN = "retain1"  # open-unlearning's MUSE retain split


def target_path(cfg) -> Path:
    """``model.path``, else the target ``jaxunlearn train`` made for this config."""
    if cfg.model.path:
        if is_hub_id(cfg.model.path):
            return resolve_model_path(cfg.model.path)  # its snapshot, or one line why not
        path = Path(cfg.model.path)
        if not path.exists():
            raise UserError(f"model.path: {path} does not exist")
        return path
    bench = Path(cfg.data.benchmark)
    if (bench / "manifest.json").is_file():
        path = model_dir(cfg, "target")
        if (path / "config.json").is_file():
            return path
        raise UserError(f"model.path: not given, and no trained target at {path} "
                        "(run `jaxunlearn train` with this config first)")
    raise UserError("model.path: not given (the trained target model to unlearn)")


def retain_reference_path(cfg) -> Path | None:
    """The retain (gold) model forget quality is measured against during unlearning:
    ``eval.retain_model``, else the one ``jaxunlearn train --which retain`` made for this
    config when it exists, else None."""
    if cfg.eval.retain_model:
        path = Path(cfg.eval.retain_model)
        if not (path / "config.json").is_file():
            raise UserError(f"eval.retain_model: no model at {path}")
        return path
    if (Path(cfg.data.benchmark) / "manifest.json").is_file():
        path = model_dir(cfg, "retain")
        if (path / "config.json").is_file():
            return path
    return None


def _monitor(cfg, method, model, config, tokenizer, forget, retain, best_dir, resume):
    """The progress evaluation of ``train.eval_every`` (None when it is off)."""
    if not cfg.train.eval_every:
        return None
    subset = progress_eval.ProgressSet.first(forget, retain)
    ratios = None
    reference = retain_reference_path(cfg) if subset.has_truth_ratio else None
    if reference is not None:
        retain_model, _ = load_pretrained(reference)
        ratios = progress_eval.forget_truth_ratios(retain_model, tokenizer, subset,
                                                   batch_size=cfg.eval.batch_size)
        del retain_model
    if cfg.train.keep_best == "forget_quality" and ratios is None:
        raise UserError("train.keep_best=forget_quality: needs a retain model (eval.retain_model"
                        " or `jaxunlearn train --which retain`) and forget records with "
                        "paraphrased_answer / perturbed_answer")
    return ProgressMonitor(model, config, tokenizer, subset, every=cfg.train.eval_every,
                           batch_size=cfg.eval.batch_size,
                           max_new_tokens=cfg.eval.max_new_tokens, retain_truth_ratios=ratios,
                           keep_best=cfg.train.keep_best,
                           best_dir=best_dir if cfg.train.keep_best else None, resume=resume)


def _check_muse_method(method) -> None:
    """MUSE trains on documents: only gradient methods that read the forget text itself."""
    if isinstance(method, methods.ProcedureMethod) or tuple(method.forget_views) != ("answer",):
        raise MethodError(f"method.name: {method.name} does not run on MUSE documents (it needs "
                          "question/answer records); use a gradient method such as npo, "
                          "grad_diff, simnpo, grad_ascent or rmu")


def _check_progress_evaluation(cfg, method, *, is_muse: bool) -> None:
    """``train.eval_every`` scores a whole model in one process on question/answer records
    between the updates of a gradient loop; anything else is refused before any work."""
    if not cfg.train.eval_every:
        return
    if isinstance(method, methods.ProcedureMethod):
        why = f"{method.name} is not a gradient loop to evaluate during"
    elif cfg.model.lora is not None:
        why = "not available with model.lora yet (a LoRA state holds the adapters only)"
    elif jax.process_count() > 1:
        why = "not available in a multi-process job yet"
    elif is_muse:
        why = "the progress evaluation reads question/answer records; MUSE trains on documents"
    else:
        return
    raise UserError(f"train.eval_every: {why} (set train.eval_every=0)")


def run_unlearning(cfg, resume: bool = False, *, progress: bool = True) -> Path:
    """``jaxunlearn unlearn``: unlearn ``data.forget`` from the target with ``cfg.method``.

    Everything is validated before any work (method and hyper-parameters; benchmark
    splits and their disjointness; mesh vs devices and batch; model and tokenizer; record
    lengths). The result goes to ``<output_dir>/<method name>`` (HF safetensors with the
    tokenizer, written atomically; with ``model.lora.save=adapters`` PEFT's adapter files
    instead, naming the target as their base) with ``unlearn.json`` (method, history,
    timings, and ``reference_cache``: full-vocabulary or top-K reference distributions,
    with the tail mass when truncated);
    checkpoints to ``<output_dir>/checkpoints/unlearn-<name>-<fingerprint>``. In a job of
    several processes (``train.distributed``; gradient methods) every process computes,
    process 0 alone writes.

    ``train.log_every``: history records to ``<output_dir>/logs/<name>/metrics.jsonl`` (and
    TensorBoard / W&B with ``train.tracker``). ``train.eval_every``: the progress
    evaluation (``pipeline.progress``) in the history; ``train.keep_best``: the model saved
    is the best evaluated one, ``unlearn.json``'s ``best`` says which step.
    """
    method = methods.get_method(cfg.method)
    tracking.require(cfg.train.tracker)
    lora = cfg.model.lora
    runner.check_lora_method(method, lora)
    if jax.process_count() > 1 and isinstance(method, methods.ProcedureMethod):
        raise MethodError(f"method.name={method.name}: a multi-process job runs the gradient "
                          f"methods; run {method.name} in one process")
    # safety: both resolve inside output_dir; a foreign directory at `out` is refused now
    out = storage.check_dir_target(validate.inside(cfg.output_dir, method.name,
                                                   field="output_dir"), "output_dir")
    fingerprint = cfg.fingerprint("model", "data", "train", "method", "seed")
    ckpt_dir = validate.inside(cfg.output_dir, "checkpoints",
                               f"unlearn-{method.name}-{fingerprint}", field="output_dir")
    best_dir = validate.inside(cfg.output_dir, "checkpoints", f"best-{method.name}-{fingerprint}",
                               field="output_dir")
    log_dir = validate.inside(cfg.output_dir, "logs", method.name, field="output_dir")
    bench = require_benchmark(cfg)
    is_muse = muse.is_muse_source(bench)
    if is_muse:
        retain_name = cfg.data.retain or MUSE_DEFAULT_RETAIN
        _check_muse_method(method)
        for role, split in (("data.forget", cfg.data.forget), ("data.retain", retain_name)):
            if split not in muse.CONFIGS["raw"]:
                raise DataError(f"{role}: {split!r} is not a MUSE raw split (choose from "
                                f"{', '.join(muse.CONFIGS['raw'])})")
            muse.load_muse_split(bench, "raw", split)  # every document checked now
    else:
        retain_name = cfg.data.retain_split
        forget = tofu.load_split(bench, cfg.data.forget)
        retain = tofu.load_split(bench, retain_name)
        tofu.check_disjoint(forget, retain, names=(cfg.data.forget, retain_name))
    _check_progress_evaluation(cfg, method, is_muse=is_muse)
    mesh = mesh_lib.from_config(cfg.mesh)
    mesh_lib.check_batch_divides(cfg.train.batch_size, mesh, "train.batch_size")
    path = target_path(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer or path)
    if is_muse:
        forget = muse.text_records(tokenizer, bench, cfg.data.forget, max_length=cfg.data.max_len)
        retain = muse.text_records(tokenizer, bench, retain_name, max_length=cfg.data.max_len)
    prepared = prepare_data(tokenizer, forget, retain, views=getattr(method, "forget_views",
                                                                     ("answer",)),
                            max_len=cfg.data.max_len, truncate=cfg.data.truncate,
                            chat=cfg.data.chat)
    model, config = build_model(dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=str(path))), tokenizer)
    method.check_model(config)
    validate.check_context([e.length for v in prepared.forget.values() for e in v]
                           + [e.length for e in prepared.retain], config,
                           what=f"{cfg.data.forget}/{retain_name} sequences")
    monitor = _monitor(cfg, method, model, config, tokenizer, forget, retain, best_dir, resume)

    if not resume and distributed.is_primary() and ckpt_lib.remove_checkpoints(ckpt_dir):
        print(f"starting over: removed the checkpoints of an earlier run in {ckpt_dir} "
              "(--resume continues one)", file=sys.stderr)
    distributed.barrier("old checkpoints removed")  # the other processes look next
    print(f"unlearning {cfg.data.forget} ({len(forget)} records, retain {len(retain)}) from "
          f"{path} with {method.name}", file=sys.stderr)
    t0 = time.perf_counter()
    never_seen = ()
    if isinstance(method, methods.ProcedureMethod):
        # the holdout people: never trained on, same kind of records as the forget set
        # (TOFU's holdout<NN> beside forget<NN>, else our benchmark's holdout)
        for name in (holdout_split_of(cfg.data.forget), "holdout"):
            try:
                never_seen = tofu.load_split(bench, name)
                break
            except DataError:
                never_seen = ()
    tracker = (tracking.Tracker(log_dir, kind=cfg.train.tracker, name=f"unlearn-{method.name}",
                                config=cfg.to_dict(), fresh=not resume)
               if distributed.is_primary() else contextlib.nullcontext())  # one writer
    with tracker:
        result = runner.unlearn_model(
            model, tokenizer, forget, retain, method, cfg.train, mesh=mesh,
            never_seen_records=never_seen, seed=cfg.seed, max_len=cfg.data.max_len,
            truncate=cfg.data.truncate, checkpoint_dir=ckpt_dir, resume=resume,
            fingerprint=fingerprint, progress=progress,
            hooks=(monitor.hook(),) if monitor else (),
            log=getattr(tracker, "log", None),
            log_every=cfg.train.log_every, lora=lora)
    seconds = time.perf_counter() - t0
    unlearned, best = result.model, None
    if monitor is not None and monitor.best is not None:
        best = dict(monitor.best)
        last_step = result.history[-1]["step"] if result.history else 0
        if best["step"] != last_step:  # the last update is not the best one: load that
            unlearned = monitor.best_model()
    if jax.process_count() > 1:  # the weights, whole, on every host (a gather)
        nnx.update(unlearned, distributed.to_host(nnx.state(unlearned)))
    record = {"unlearn.json": {
        "method": method.to_dict(), "target": str(path), "forget": cfg.data.forget,
        "retain": retain_name, "seconds": round(seconds, 2), "updates": len(result.history),
        "history": result.history, **result.info, "best": best,
        "metrics_log": str(log_dir / tracking.METRICS_FILE), **provenance(cfg, mesh)}}
    if distributed.is_primary():  # one writer per job
        # safety: unlearn.json is committed with the model, in one rename
        if lora is not None and lora.save == "adapters":
            # PEFT's layout; loading the directory loads the target with them merged in
            save_adapters(unlearned, lora, out, base_model=str(path.resolve()),
                          tokenizer=tokenizer, field="output_dir", extra_json=record)
        else:
            merged = unlearned if lora is None else merge_adapters(unlearned)
            save_pretrained(merged, config, out, tokenizer=tokenizer, field="output_dir",
                            extra_json=record)
        ckpt_lib.remove_checkpoints(ckpt_dir)
    distributed.barrier("unlearned model saved")
    if monitor is not None:
        monitor.clear()
    if best is not None:
        print(f"keeping the model of update {best['step']} (best {best['metric']} "
              f"{best['value']:.4g})", file=sys.stderr)
    last = result.history[-1] if result.history else {}
    print(f"{method.name}: {len(result.history)} updates in {seconds:.1f}s; forget prob "
          f"{last.get('forget_prob', float('nan')):.4f}, retain prob "
          f"{last.get('retain_prob', float('nan')):.4f} -> {out}", file=sys.stderr)
    return out
