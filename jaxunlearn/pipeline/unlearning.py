"""``jaxunlearn unlearn``: unlearn ``data.forget`` from a trained target with one method.

Everything is checked before the model is loaded; the unlearning itself is
``methods.runner.unlearn_model`` (gradient methods) or the method's own procedure.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import jax
from flax import nnx

from jaxunlearn import methods, storage, validate
from jaxunlearn.data import tofu
from jaxunlearn.data.forget_retain import prepare_data
from jaxunlearn.errors import DataError, MethodError, UserError
from jaxunlearn.methods import runner
from jaxunlearn.models import load_tokenizer, save_pretrained
from jaxunlearn.pipeline.provision import build_model, provenance
from jaxunlearn.pipeline.training import model_dir
from jaxunlearn.train import checkpoint as ckpt_lib
from jaxunlearn.train import distributed
from jaxunlearn.train import mesh as mesh_lib

__all__ = ["target_path", "run_unlearning"]


def target_path(cfg) -> Path:
    """``model.path``, else the target ``jaxunlearn train`` made for this config."""
    if cfg.model.path:
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


def run_unlearning(cfg, resume: bool = False, *, progress: bool = True) -> Path:
    """``jaxunlearn unlearn``: unlearn ``data.forget`` from the target with ``cfg.method``.

    Everything is validated before any work (method and hyper-parameters; benchmark
    splits and their disjointness; mesh vs devices and batch; model and tokenizer; record
    lengths). The result goes to ``<output_dir>/<method name>`` (HF safetensors with the
    tokenizer, written atomically) with ``unlearn.json`` (method, history, timings);
    checkpoints to ``<output_dir>/checkpoints/unlearn-<name>-<fingerprint>``. In a job of
    several processes (``train.distributed``; gradient methods) every process computes,
    process 0 alone writes.
    """
    method = methods.get_method(cfg.method)
    if jax.process_count() > 1 and isinstance(method, methods.ProcedureMethod):
        raise MethodError(f"method.name={method.name}: a multi-process job runs the gradient "
                          f"methods; run {method.name} in one process")
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
    mesh = mesh_lib.from_config(cfg.mesh)
    mesh_lib.check_batch_divides(cfg.train.batch_size, mesh, "train.batch_size")
    path = target_path(cfg)
    tokenizer = load_tokenizer(cfg.data.tokenizer or path)
    prepared = prepare_data(tokenizer, forget, retain, views=getattr(method, "forget_views",
                                                                     ("answer",)),
                            max_len=cfg.data.max_len, truncate=cfg.data.truncate)
    model, config = build_model(dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, path=str(path))), tokenizer)
    method.check_model(config)
    validate.check_context([e.length for v in prepared.forget.values() for e in v]
                           + [e.length for e in prepared.retain], config,
                           what=f"{cfg.data.forget}/{cfg.data.retain_split} sequences")

    if not resume and distributed.is_primary() and ckpt_lib.remove_checkpoints(ckpt_dir):
        print(f"starting over: removed the checkpoints of an earlier run in {ckpt_dir} "
              "(--resume continues one)", file=sys.stderr)
    distributed.barrier("old checkpoints removed")  # the other processes look next
    print(f"unlearning {cfg.data.forget} ({len(forget)} records, retain {len(retain)}) from "
          f"{path} with {method.name}", file=sys.stderr)
    t0 = time.perf_counter()
    never_seen = ()
    if isinstance(method, methods.ProcedureMethod):
        try:  # the holdout people: never trained on, same kind of records as the forget set
            never_seen = tofu.load_split(bench, "holdout")
        except DataError:
            never_seen = ()
    result = runner.unlearn_model(model, tokenizer, forget, retain, method, cfg.train, mesh=mesh,
                           never_seen_records=never_seen,
                           seed=cfg.seed, max_len=cfg.data.max_len, truncate=cfg.data.truncate,
                           checkpoint_dir=ckpt_dir, resume=resume, fingerprint=fingerprint,
                           progress=progress)
    seconds = time.perf_counter() - t0
    if jax.process_count() > 1:  # the weights, whole, on every host (a gather)
        nnx.update(result.model, distributed.to_host(nnx.state(result.model)))
    if distributed.is_primary():  # one writer per job
        # safety: unlearn.json is committed with the model, in one rename
        save_pretrained(result.model, config, out, tokenizer=tokenizer, field="output_dir",
                        extra_json={"unlearn.json": {
                            "method": method.to_dict(), "target": str(path),
                            "forget": cfg.data.forget, "retain": cfg.data.retain_split,
                            "seconds": round(seconds, 2), "updates": len(result.history),
                            "history": result.history, **provenance(cfg, mesh)}})
        ckpt_lib.remove_checkpoints(ckpt_dir)
    distributed.barrier("unlearned model saved")
    last = result.history[-1] if result.history else {}
    print(f"{method.name}: {len(result.history)} updates in {seconds:.1f}s; forget prob "
          f"{last.get('forget_prob', float('nan')):.4f}, retain prob "
          f"{last.get('retain_prob', float('nan')):.4f} -> {out}", file=sys.stderr)
    return out
