"""``jaxunlearn train``: the target and the retain (gold) model, trained on the benchmark.

A trained model is cached under ``<output_dir>/models/<which>-<fingerprint>``, where the
fingerprint hashes everything that determines its weights, and reused when present.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxunlearn import storage, validate
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data import synthetic
from jaxunlearn.errors import UserError
from jaxunlearn.models import load_pretrained, load_tokenizer, save_pretrained
from jaxunlearn.pipeline.provision import build_model, ensure_benchmark, provenance, \
    resolve_tokenizer
from jaxunlearn.pipeline.quality import QUALITY_FILE, format_quality, model_quality
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train import checkpoint as ckpt
from jaxunlearn.train import step as step_lib
from jaxunlearn.train import tracking
from jaxunlearn.train.length_groups import choose_lengths, grouped_source
from jaxunlearn.train.loop import batch_placer, run_loop
from jaxunlearn.train.nll import nll_objective
from jaxunlearn.validate import check_context

__all__ = ["model_fingerprint", "model_dir", "encode_documents", "train_model"]


def model_fingerprint(cfg, which: str, benchmark: Path, tokenizer) -> str:
    """Hash of what determines the trained weights: model, data and train settings, the
    seed, the benchmark files (manifest hash), the vocabulary and ``which``."""
    d = cfg.to_dict()
    # The benchmark's content (its manifest hash) stands for where and how it was made.
    data = {k: v for k, v in d["data"].items()
            if k not in ("benchmark", "people", "generate_seed", "qa_per_person",
                         "num_world_facts", "canaries_per_repetition")}
    if which == "target":  # the target does not depend on which split is forgotten later
        data.pop("forget"), data.pop("retain")
    train = {k: v for k, v in d["train"].items()
             if k not in ("log_every", "checkpoint_every", "eval_every")}
    manifest = (benchmark / "manifest.json").read_bytes()
    vocab = json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
    # "canary_views": canaries seen `repetitions` times per run (before: per epoch).
    payload = {"model": d["model"], "data": data, "train": train, "seed": cfg.seed,
               "canary_views": "per-run",
               "which": which, "benchmark": hashlib.sha256(manifest).hexdigest(),
               "vocab": hashlib.sha256(vocab).hexdigest()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()
                          ).hexdigest()[:16]


def _paths(cfg, which: str, benchmark: Path, tokenizer) -> tuple[Path, Path]:
    name = f"{which}-{model_fingerprint(cfg, which, benchmark, tokenizer)}"
    # safety: both resolve inside output_dir (no symbolic link out of it)
    return (validate.inside(cfg.output_dir, "models", name, field="output_dir"),
            validate.inside(cfg.output_dir, "checkpoints", name, field="output_dir"))


def model_dir(cfg, which: str) -> Path:
    """Where :func:`train_model` keeps (or will keep) this configuration's model:
    ``<output_dir>/models/<which>-<fingerprint>``; checkpoints go to
    ``<output_dir>/checkpoints/<which>-<fingerprint>``."""
    bench = ensure_benchmark(cfg)
    return _paths(cfg, which, bench, resolve_tokenizer(cfg, bench))[0]


def _run_epochs(train, rows: int, bench, which: str, forget_split: str) -> int:
    """Epochs the canary views are spread over: ``train.epochs``, or for a run of
    ``train.steps`` updates the epochs it takes with every document present (then the
    run may end a little before a canary's last views)."""
    if train.steps is None:
        return max(train.epochs, 1)
    n = len(synthetic.training_documents(bench, which, forget_split=forget_split))
    return max(1, math.ceil(train.steps * rows / n))


def encode_documents(tokenizer, items, *, max_len: int, truncate: bool,
                     chat: batch_lib.ChatStyle = batch_lib.DEFAULT_CHAT):
    """``TrainItem`` s -> ``Encoded``: QA counts answer + eos, text counts every token."""
    encoded = [batch_lib.encode_qa(tokenizer, it.prompt, it.text, chat=chat) if it.kind == "qa"
               else batch_lib.encode_text(tokenizer, it.text) for it in items]
    return batch_lib.check_lengths(encoded, max_len, truncate=truncate)


def train_model(cfg, which: str = "target", resume: bool = False, *,
                progress: bool = True) -> Path:
    """Trains the target (``which="target"``: every trained person, world facts, all trained
    canaries) or the retain/gold model (``"retain"``: without the people of ``data.forget``
    and the forget canaries) and returns the saved model directory.

    The model is cached under ``<output_dir>/models/<which>-<fingerprint>`` (HF safetensors
    + tokenizer + ``quality.json``) and reused when it exists. Training is answer-only
    NLL on QA and all-token NLL on documents, AdamW with warm-up + cosine, on the mesh
    ``(mesh.data, mesh.fsdp)``; checkpoints go to ``<output_dir>/checkpoints/...``
    (removed once the model is saved); ``resume=True`` continues an interrupted run.
    """
    if which not in ("target", "retain"):
        raise UserError(f"which must be 'target' or 'retain', got {which!r}")
    tracking.require(cfg.train.tracker)  # a missing optional extra: one line, before any work
    bench_dir = ensure_benchmark(cfg)
    tokenizer = resolve_tokenizer(cfg, bench_dir)
    out, ckpt_dir = _paths(cfg, which, bench_dir, tokenizer)
    bench = synthetic.read_benchmark(bench_dir)
    quality_kw = dict(forget_split=cfg.data.forget, retain_split=cfg.data.retain_split,
                      max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size,
                      chat=cfg.data.chat)
    if cfg.eval.max_records is not None:  # the user's cap on questions a split holds here too
        quality_kw["max_items"] = cfg.eval.max_records
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        print(f"reusing the {which} model in {out}", file=sys.stderr)
        if not (out / QUALITY_FILE).is_file():
            model, _ = load_pretrained(out)
            q = model_quality(model, load_tokenizer(out), bench, **quality_kw)
            storage.write_json(out / QUALITY_FILE, {"which": which, **q, **provenance(cfg)},
                               sort_keys=True)
        return out

    storage.check_dir_target(out, "output_dir")  # safety: refuse a foreign dir before training
    model, config = build_model(cfg, tokenizer)
    t = cfg.train
    rows = t.batch_size * t.grad_accum
    items = synthetic.training_documents(bench, which, forget_split=cfg.data.forget,
                                         epochs=_run_epochs(t, rows, bench, which, cfg.data.forget))
    encoded = encode_documents(tokenizer, items, max_len=cfg.data.max_len, chat=cfg.data.chat,
                               truncate=cfg.data.truncate)
    # RoPE would extrapolate past the model's positions without a word.
    check_context([e.length for e in encoded], config, what=f"{which} training sequences")
    pad = batch_lib.pad_id(tokenizer)
    source = grouped_source(encoded, rows, seed=cfg.seed, pad_id=pad,
                            lengths=choose_lengths([e.length for e in encoded],
                                                   epochs=t.epochs if t.steps is None
                                                   else t.steps * rows / len(encoded)),
                            active=lambda epoch: [it.epochs is None or epoch in it.epochs
                                                  for it in items])
    total = t.steps if t.steps is not None else t.epochs * source.steps_per_epoch

    mesh = mesh_lib.from_config(cfg.mesh)
    mesh_lib.check_batch_divides(t.batch_size, mesh, "train.batch_size")
    graphdef, params = nnx.split(model, nnx.Param)
    params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    optimizer = step_lib.make_optimizer(t.optimizer, total)
    state = step_lib.init_train_state(params, optimizer, jax.random.key(cfg.seed), mesh)
    step_fn = step_lib.make_train_step(nll_objective(graphdef), optimizer, mesh=mesh,
                                       state_sharding=step_lib.state_shardings(state),
                                       grad_accum=t.grad_accum)
    if not resume and ckpt.remove_checkpoints(ckpt_dir):  # safety: only what checkpoint wrote
        print(f"starting over: removed the checkpoints of an earlier run in {ckpt_dir} "
              "(--resume continues one)", file=sys.stderr)
    print(f"training the {which} model: {len(items)} documents, {source.steps_per_epoch} "
          f"batches of {rows} per epoch, {total} updates, {config.num_params():,} parameters",
          file=sys.stderr)
    t0 = time.perf_counter()
    # train.log_every: history records to <output_dir>/logs/<model dir name>/metrics.jsonl
    log_dir = validate.inside(cfg.output_dir, "logs", out.name, field="output_dir")
    with tracking.Tracker(log_dir, kind=t.tracker, name=out.name, config=cfg.to_dict(),
                          fresh=not resume) as tracker:
        result = run_loop(step_fn, state, source, total_steps=total, checkpoint_dir=ckpt_dir,
                          checkpoint_every=t.checkpoint_every, resume=resume,
                          fingerprint=out.name, model_config=dataclasses.asdict(config),
                          place_batch=batch_placer(mesh, t.grad_accum), progress=progress,
                          desc=which, log=tracker.log, log_every=t.log_every)
    seconds = time.perf_counter() - t0
    model = nnx.merge(graphdef, result.state.params)
    save_pretrained(model, config, out, tokenizer=tokenizer, field="output_dir")
    q = model_quality(model, tokenizer, bench, **quality_kw)
    losses = [h["loss"] for h in result.history[-max(1, source.steps_per_epoch):]]
    storage.write_json(out / QUALITY_FILE, {
        "which": which, "updates": total, "train_seconds": round(seconds, 2),
        "resumed_from": result.start_step,
        "last_epoch_loss": float(np.mean(losses)) if losses else float("nan"),
        "documents": len(items), **q, **provenance(cfg, mesh)}, sort_keys=True)
    ckpt.remove_checkpoints(ckpt_dir)
    print(format_quality(which, out, q))
    return out

