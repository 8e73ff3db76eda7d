"""The model-level evaluation suite: one model in, one flat dict of numbers out.

``evaluate_model`` runs a model over the benchmark once (one scoring pass over every
sequence, one greedy-decoding pass over every question) and reduces the results with
the pure metric functions of ``metrics``, ``mia``, ``memorization`` and ``relearn``:

* TOFU (Maini et al. 2024), per split (forget, retain, holdout, world facts): answer
  probability, ROUGE-L recall of the greedy answer, truth ratio; forget quality (KS
  p-value against the retain model's forget truth ratios) and model utility.
* MUSE-style membership inference (Shi et al. 2024): LOSS, ZLib, Min-K%, Min-K%++
  AUC of forget vs holdout people, and PrivLeak against the retain model's AUC.
* Canary memorisation (Carlini et al. 2019; Jang et al. 2023): MA, secret accuracy,
  exact extraction, extraction strength, EL_n and exposure, per repetition count.
* ReLearn (Xu et al. 2025): KFR / KRR with the entity judge, Linguistic Score.

Definitions, conventions and the few deliberate differences are documented where
each number is computed. ``main_eval`` is the ``jaxunlearn eval`` command.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxunlearn.data.batch import Encoded, encode_candidates, encode_prompt, encode_qa, \
    encode_text, pad_id
from jaxunlearn.data.tofu import DataError
from jaxunlearn.errors import UserError
from jaxunlearn.eval import memorization, metrics, mia, relearn
from jaxunlearn.eval.scoring import SequenceScores, greedy_generate, score_sequences

# Metric groups a run may select (``eval.metrics``); "tofu" is always computed since
# every eval.json entry needs forget_quality and model_utility.
GROUPS = ("tofu", "mia", "canaries", "extraction", "knowledge")
QA_SPLITS = ("forget", "retain", "holdout", "world_facts")
CANARY_SPLITS = ("forget", "retain", "heldout")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SuiteConfig:
    """What ``evaluate_model`` computes and on how much data.

    Attributes:
      forget, retain: split names in the benchmark (e.g. "forget10", "retain90").
      batch_size: rows per jitted call (scoring and decoding).
      max_new_tokens: greedy answer length cap (ROUGE, KFR/KRR).
      max_records: cap per QA split (an evenly spaced, deterministic subset; TOFU
        likewise scores 400 of its 3,600 retain questions); None = every record.
      groups: metric groups from ``GROUPS``; "tofu" is always added.
      min_k: fraction of lowest tokens for Min-K% / Min-K%++ (0.4 as open-unlearning).
      el_n: n-gram size of extraction likelihood (10 as Jang et al.).
      el_splits: canary splits whose EL is computed (it needs a decoding per prefix).
      exposure_candidates: random same-format secrets each canary is ranked against.
      exposure_splits: canary splits whose exposure is computed.
      extractable_ma, over_unlearned_ma: MA thresholds of the forget-canary counts.
      seed: seeds the exposure candidates.
    """

    forget: str = "forget10"
    retain: str = "retain90"
    batch_size: int = 32
    max_new_tokens: int = 64
    max_records: int | None = 200
    groups: tuple[str, ...] = GROUPS
    min_k: float = 0.4
    el_n: int = 10
    el_splits: tuple[str, ...] = CANARY_SPLITS
    exposure_candidates: int = 31
    exposure_splits: tuple[str, ...] = CANARY_SPLITS
    extractable_ma: float = 0.60
    over_unlearned_ma: float = 0.15
    seed: int = 0

    def __post_init__(self):
        def positive(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"SuiteConfig.{name} must be a positive integer, got {v!r}")

        for name in ("batch_size", "max_new_tokens", "el_n", "exposure_candidates"):
            positive(name)
        if self.max_records is not None:
            positive("max_records")
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise UserError(f"eval.metrics: unknown metric group {unknown[0]!r} "
                            f"(choose from {', '.join(GROUPS)})")
        if "tofu" not in self.groups:
            object.__setattr__(self, "groups", ("tofu", *self.groups))
        for name in ("el_splits", "exposure_splits"):
            bad = [s for s in getattr(self, name) if s not in CANARY_SPLITS]
            if bad:
                raise UserError(f"SuiteConfig.{name}: unknown canary split {bad[0]!r}")
        if not 0.0 < self.min_k <= 1.0:
            raise UserError(f"SuiteConfig.min_k must be in (0, 1], got {self.min_k}")
        if not 0.0 <= self.over_unlearned_ma <= self.extractable_ma <= 1.0:
            raise UserError("SuiteConfig.over_unlearned_ma / extractable_ma must satisfy "
                            f"0 <= {self.over_unlearned_ma} <= {self.extractable_ma} <= 1")

    @classmethod
    def fast(cls, **overrides) -> "SuiteConfig":
        """The demo's setting: 64 records per split, EL and exposure on forget canaries."""
        base = dict(max_records=64, el_splits=("forget",), exposure_candidates=15,
                    exposure_splits=("forget",))
        return cls(**{**base, **overrides})

    @classmethod
    def from_run_config(cls, cfg, **overrides) -> "SuiteConfig":
        """From a ``RunConfig``: data.forget/retain, eval.batch_size/max_new_tokens/metrics,
        seed; ``eval.fast`` and ``eval.max_records`` when the config has them."""
        make = cls.fast if getattr(cfg.eval, "fast", False) else cls
        kwargs: dict[str, Any] = dict(
            forget=cfg.data.forget, retain=cfg.data.retain_split,
            batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
            seed=cfg.seed)
        if cfg.eval.metrics:
            kwargs["groups"] = tuple(cfg.eval.metrics)
        if hasattr(cfg.eval, "max_records"):
            kwargs["max_records"] = cfg.eval.max_records
        return make(**{**kwargs, **overrides})


# ----------------------------------------------------------------------------- data
def _has_split(directory: Path, split: str) -> bool:
    return any((directory / f"{split}{s}").is_file() for s in (".json", ".jsonl", ".parquet"))


def benchmark_splits(benchmark, options: SuiteConfig) -> dict[str, list[dict]]:
    """``{"forget", "retain", "holdout", "world_facts", "canaries"} -> records``.

    ``benchmark`` is a directory (checked against its ``manifest.json`` when it has
    one, else TOFU-style files are read split by split), a ``{split name: records}``
    mapping (``tofu.load_benchmark``), a ``synthetic.Benchmark``, or this function's
    own output. forget and retain
    are required; the other splits are optional (their metrics are then skipped).
    """
    from jaxunlearn.data import tofu

    if isinstance(benchmark, (str, Path)):
        directory = Path(benchmark)
        if not directory.is_dir():
            raise DataError(f"{directory}: no such benchmark directory")
        if (directory / "manifest.json").is_file():
            raw: Mapping[str, Sequence[dict]] = tofu.load_benchmark(directory)
        else:
            raw = {s: tofu.load_split(directory, s)
                   for s in (options.forget, options.retain, "holdout", "world_facts",
                             "canaries") if _has_split(directory, s)}
    elif hasattr(benchmark, "splits") and hasattr(benchmark, "canaries"):
        raw = {**benchmark.splits, "canaries": benchmark.canaries}
    elif isinstance(benchmark, Mapping):
        if "forget" in benchmark and "retain" in benchmark and options.forget not in benchmark:
            return {k: list(v) for k, v in benchmark.items()}  # already normalised
        raw = benchmark
    else:
        raise DataError(f"benchmark: expected a directory, a split mapping or a "
                        f"synthetic.Benchmark, got {type(benchmark).__name__}")
    out: dict[str, list[dict]] = {}
    for role, name in (("forget", options.forget), ("retain", options.retain)):
        if name not in raw:
            raise DataError(f"benchmark: has no split {name!r} (data.{role})")
        out[role] = list(raw[name])
    for name in ("holdout", "world_facts", "canaries"):
        if name in raw:
            out[name] = list(raw[name])
    return out


def subset(records: Sequence, cap: int | None) -> list:
    """At most ``cap`` records, evenly spaced over the split (no randomness)."""
    if cap is None or len(records) <= cap:
        return list(records)
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, cap).round()]


def _need(rec: Mapping, field: str, split: str, i: int, why: str):
    value = rec.get(field)
    if value is None or (isinstance(value, (str, list)) and not value):
        raise DataError(f"{split}: record {i + 1}: field '{field}': missing ({why})")
    return value


class _Sequences:
    """Collects every sequence of one evaluation so that they are scored in one pass."""

    def __init__(self):
        self.encoded: list[Encoded] = []

    def add(self, items: Sequence[Encoded]) -> np.ndarray:
        start = len(self.encoded)
        self.encoded.extend(items)
        return np.arange(start, len(self.encoded))


@dataclasses.dataclass
class _QAPlan:
    """Where one QA split's sequences sit in the shared list."""

    split: str
    records: list[dict]
    prompts: list[np.ndarray]
    answer: np.ndarray           # [N] indices
    para: np.ndarray             # [N] indices
    pert: list[np.ndarray]       # N arrays of K_i indices


def _plan_qa(split: str, records: list[dict], tokenizer, seqs: _Sequences) -> _QAPlan:
    prompts, answers, paras, perts = [], [], [], []
    for i, rec in enumerate(records):
        q = _need(rec, "question", split, i, "the prompt")
        a = _need(rec, "answer", split, i, "probability and ROUGE")
        pert = _need(rec, "perturbed_answer", split, i, "the truth ratio")
        prompts.append(encode_prompt(tokenizer, q))
        answers.append(encode_qa(tokenizer, q, a))
        # World facts have no paraphrase in TOFU: their truth ratio uses the answer.
        if split != "world_facts":
            paras.append(encode_qa(tokenizer, q, _need(rec, "paraphrased_answer", split, i,
                                                        "the truth ratio")))
        perts.append(encode_candidates(tokenizer, q, pert))
    answer = seqs.add(answers)
    para = answer if split == "world_facts" else seqs.add(paras)
    return _QAPlan(split, records, prompts, answer, para, [seqs.add(p) for p in perts])


def _qa_numbers(plan: _QAPlan, scores: SequenceScores, generations: list[str]) -> dict:
    """Per-record arrays of one split: probability, truth ratio, ROUGE-L recall."""
    ans = scores.take(plan.answer)
    prob = metrics.answer_probability(ans.seq_logprob, ans.num_tokens)
    para = scores.mean_logprob[plan.para]
    # Mean over each record's own K perturbations (K may differ between records), so
    # truth_ratio sees [N, 1]: exp(mean_k pert_k - para).
    pert = [scores.mean_logprob[p] for p in plan.pert]
    ratio = metrics.truth_ratio(para, np.asarray([p.mean() for p in pert])[:, None])
    rouge = np.asarray([metrics.rouge_l_recall(g, r["answer"])
                        for g, r in zip(generations, plan.records)])
    out = {"prob": prob, "truth_ratio": ratio, "rouge": rouge}
    if plan.split == "world_facts":
        # TOFU's world-facts probability is normalised over the answer options.
        out["norm_prob"] = np.asarray([
            metrics.normalized_probability(np.asarray([t]), p[None])[0]
            for t, p in zip(ans.mean_logprob, pert)])
    return out


# ----------------------------------------------------------------------------- canaries
def _secret_positions(tokenizer, canary: Mapping, enc: Encoded) -> np.ndarray:
    """Label positions ``[L - 1]`` (bool) of the tokens that overlap the secret.

    ``enc`` is ``encode_text(prefix + secret)``; a token straddling the boundary
    counts as secret, so "greedy from the tokens before the first secret position"
    is exactly "prompted with (a prefix of) the prefix".
    """
    text, start = canary["prefix"] + canary["secret"], len(canary["prefix"])
    tok = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = tok.get("offset_mapping")
    if offsets is None:
        raise DataError("tokenizer: canary metrics need a fast tokenizer (offset mapping)")
    lead = len(enc.token_ids) - 1 - len(tok["input_ids"])  # bos before the text, eos after
    if list(enc.token_ids[lead:lead + len(tok["input_ids"])]) != list(tok["input_ids"]):
        raise DataError(f"canaries: canary {canary.get('canary_id')}: tokenisation of "
                        "prefix + secret differs from the document's")
    pos = np.zeros(enc.length, bool)
    for j, (_, end) in enumerate(offsets):
        if end > start and lead + j >= 1:
            pos[lead + j - 1] = True  # the token at ids[p] is scored at label position p - 1
    return pos


@dataclasses.dataclass
class _CanaryPlan:
    """Where the canaries' sequences sit in the shared list, and their secret masks."""

    records: list[dict]
    docs: list[Encoded]
    text: np.ndarray                        # [C] indices of the canary documents
    secret: list[np.ndarray]                # C bool label masks
    candidates: list[np.ndarray | None]     # C index arrays (None: no exposure)
    candidate_secret: list[list[np.ndarray]]
    space: list[int]                        # |R| of each canary's secret format


def _plan_canaries(records: list[dict], tokenizer, seqs: _Sequences, options: SuiteConfig,
                   *, exposure: bool) -> _CanaryPlan:
    from jaxunlearn.data.synthetic import CANARY_FORMATS, sample_secret, secret_space_size

    docs, secrets, cands, cand_secrets, spaces = [], [], [], [], []
    for i, c in enumerate(records):
        for field in ("prefix", "secret", "split", "repetitions"):
            _need(c, field, "canaries", i, "canary memorisation")
        if c["split"] not in CANARY_SPLITS:
            raise DataError(f"canaries: record {i + 1}: field 'split': must be one of "
                            f"{CANARY_SPLITS}, got {c['split']!r}")
        enc = encode_text(tokenizer, c["prefix"] + c["secret"])
        docs.append(enc)
        secrets.append(_secret_positions(tokenizer, c, enc))
        pattern = CANARY_FORMATS.get(c.get("format", ""))
        if not exposure or pattern is None or c["split"] not in options.exposure_splits:
            cands.append(None)
            cand_secrets.append([])
            spaces.append(0)
            continue
        # Candidates from the canary's own secret space (Carlini et al.'s R), seeded per
        # canary id so every model is ranked against the same candidates.
        rng = np.random.default_rng([options.seed, int(c.get("canary_id", i))])
        drawn: list[str] = []
        while len(drawn) < options.exposure_candidates:
            s = sample_secret(pattern, rng)
            if s != c["secret"]:
                drawn.append(s)
        encs = [encode_text(tokenizer, c["prefix"] + s) for s in drawn]
        cands.append(seqs.add(encs))
        cand_secrets.append([_secret_positions(tokenizer, {**c, "secret": s}, e)
                             for s, e in zip(drawn, encs)])
        spaces.append(secret_space_size(pattern))
    return _CanaryPlan(records, docs, seqs.add(docs), secrets, cands, cand_secrets, spaces)


def _padded(mask: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros(width, np.float32)
    out[: len(mask)] = mask
    return out


def _secret_nll(scores: SequenceScores, row: int, secret: np.ndarray) -> float:
    """``-log p(secret | prefix)``: Carlini et al.'s log-perplexity, less the shared prefix."""
    return -float((scores.token_logp[row] * _padded(secret, scores.mask.shape[1])).sum())


def _extraction_likelihoods(model, tokenizer, plan: _CanaryPlan, options: SuiteConfig
                            ) -> dict[int, float]:
    """EL_n of the canaries in ``options.el_splits``: a greedy continuation per prefix."""
    targets: dict[int, list[int]] = {}
    prompts, owners = [], []
    for i, c in enumerate(plan.records):
        target = [int(t) for t in plan.docs[i].token_ids[:-1]]  # bos + text, no eos
        if c["split"] not in options.el_splits or len(target) <= options.el_n:
            continue
        targets[i] = target
        for p in memorization.extraction_likelihood_prefixes(len(target), options.el_n):
            prompts.append(target[:p])
            owners.append(i)
    if not prompts:
        return {}
    # Continuations are cut at the target's length: decode no further than that
    # (rounded up to 16, so all canary sets share few shapes).
    longest = max(len(t) for t in targets.values())
    gens = greedy_generate(model, prompts, max_new_tokens=-(-longest // 16) * 16,
                           eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer),
                           batch_size=options.batch_size)
    conts: dict[int, list[list[int]]] = {i: [] for i in targets}
    for i, g in zip(owners, gens):
        conts[i].append(g)
    return {i: memorization.extraction_likelihood(targets[i], conts[i], n=options.el_n)
            for i in targets}


def _canary_numbers(plan: _CanaryPlan, scores: SequenceScores, el: Mapping[int, float],
                    options: SuiteConfig) -> list[dict]:
    """Per-canary numbers; definitions in ``evaluate_model``'s docstring."""
    width = scores.mask.shape[1]
    out = []
    for i, c in enumerate(plan.records):
        row = int(plan.text[i])
        secret = _padded(plan.secret[i], width)
        correct = scores.correct[row]
        n_secret = float(secret.sum())
        acc = float((correct * secret).sum() / n_secret) if n_secret else 0.0
        item = {
            "split": c["split"], "repetitions": int(c["repetitions"]),
            "ma": float(scores.accuracy[row]),
            "secret_accuracy": acc,
            "extracted": float(n_secret > 0 and acc == 1.0),
            "es": float(memorization.extraction_strength(correct[None], secret[None])[0]),
            "loss": float(scores.mean_logprob[row]),
        }
        if plan.candidates[i] is not None:
            cand = [_secret_nll(scores, int(j), s)
                    for j, s in zip(plan.candidates[i], plan.candidate_secret[i])]
            item["exposure"] = memorization.exposure(_secret_nll(scores, row, plan.secret[i]),
                                                     cand, space_size=plan.space[i])
        if i in el:
            item[f"el{options.el_n}"] = el[i]
        out.append(item)
    return out


_CANARY_METRICS = ("ma", "secret_accuracy", "extracted", "es", "exposure")


def _canary_summary(items: list[dict], options: SuiteConfig) -> tuple[dict, dict]:
    """Flat means per canary split, counts on forget canaries, and the nested
    ``{split: {repetitions: {metric: mean, "count": n}}}`` table for the report."""
    names = _CANARY_METRICS + (f"el{options.el_n}",)
    flat: dict[str, float] = {}
    nested: dict[str, dict[str, dict[str, float]]] = {}
    for split in CANARY_SPLITS:
        group = [it for it in items if it["split"] == split]
        if not group:
            continue
        for name in names:
            vals = [it[name] for it in group if name in it]
            if vals:
                flat[f"canary_{split}_{name}"] = float(np.mean(vals))
        table = nested.setdefault(split, {})
        for reps in sorted({it["repetitions"] for it in group}):
            members = [it for it in group if it["repetitions"] == reps]
            row = {"count": float(len(members))}
            for name in names:
                vals = [it[name] for it in members if name in it]
                if vals:
                    row[name] = float(np.mean(vals))
            table[str(reps)] = row
    forget = [it for it in items if it["split"] == "forget"]
    if forget:
        flat["canary_forget_num_extracted"] = float(sum(it["extracted"] for it in forget))
        flat["canary_forget_extractable"] = float(
            sum(it["ma"] >= options.extractable_ma for it in forget))
        flat["canary_forget_over_unlearned"] = float(
            sum(it["ma"] < options.over_unlearned_ma for it in forget))
    held = [it["loss"] for it in items if it["split"] == "heldout"]
    if forget and held:
        # LOSS attack on whole canaries: do forget canaries still look like members?
        flat["canary_mia_loss_auc"] = mia.auc([it["loss"] for it in forget], held)
    return flat, nested


# ----------------------------------------------------------------------------- running
@dataclasses.dataclass
class _Run:
    """Raw per-record numbers of one pass of a model over the evaluation data."""

    plans: dict[str, _QAPlan]
    qa: dict[str, dict[str, np.ndarray]]
    scores: SequenceScores
    generations: dict[str, list[str]]
    generated_ids: dict[str, list[list[int]]]
    canaries: list[dict] | None


def _run(model, tokenizer, qa: Mapping[str, list[dict]], canaries: list[dict] | None,
         options: SuiteConfig, *, exposure: bool, extraction: bool) -> _Run:
    """Score every sequence in one pass, decode every question in one pass, reduce."""
    seqs = _Sequences()
    plans = {split: _plan_qa(split, records, tokenizer, seqs) for split, records in qa.items()}
    cplan = (_plan_canaries(canaries, tokenizer, seqs, options, exposure=exposure)
             if canaries else None)
    scores = score_sequences(model, seqs.encoded, pad_id=pad_id(tokenizer),
                             batch_size=options.batch_size, k=options.min_k)
    prompts = [p for plan in plans.values() for p in plan.prompts]
    ids = greedy_generate(model, prompts, max_new_tokens=options.max_new_tokens,
                          eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer),
                          batch_size=options.batch_size)
    generations, generated_ids, start = {}, {}, 0
    for split, plan in plans.items():
        part = ids[start:start + len(plan.records)]
        start += len(plan.records)
        generated_ids[split] = part
        generations[split] = [tokenizer.decode(g, skip_special_tokens=True) for g in part]
    numbers = {split: _qa_numbers(plan, scores, generations[split])
               for split, plan in plans.items()}
    canary_items = None
    if cplan is not None:
        el = _extraction_likelihoods(model, tokenizer, cplan, options) if extraction else {}
        canary_items = _canary_numbers(cplan, scores, el, options)
    return _Run(plans, numbers, scores, generations, generated_ids, canary_items)


def _options(cfg) -> SuiteConfig:
    return cfg if isinstance(cfg, SuiteConfig) else SuiteConfig.from_run_config(cfg)


def _mean(x) -> float:
    return float(np.mean(np.asarray(x, dtype=np.float64)))


def _tofu_numbers(run: _Run) -> tuple[dict, dict]:
    """``{split}_prob / _rouge / _truth_ratio`` and the per-record distributions."""
    flat, dist = {}, {}
    for split, nums in run.qa.items():
        prob = nums["norm_prob"] if split == "world_facts" else nums["prob"]
        # Forget and holdout: 1 = true and false equally likely (closer to 1 is better);
        # retain and world facts: the share of preference for the truth (TOFU utility).
        agg = (metrics.truth_ratio_forget_score if split in ("forget", "holdout")
               else metrics.truth_ratio_retain_score)
        flat[f"{split}_prob"] = _mean(prob)
        flat[f"{split}_rouge"] = _mean(nums["rouge"])
        flat[f"{split}_truth_ratio"] = agg(nums["truth_ratio"])
        dist[f"{split}_prob"] = [float(v) for v in prob]
        dist[f"{split}_truth_ratio"] = [float(v) for v in nums["truth_ratio"]]
    return flat, dist


def _mia_numbers(run: _Run, tokenizer, reference: Mapping | None) -> dict:
    """AUC of forget (members) vs holdout (non-members) for four attacks, and PrivLeak."""
    out: dict[str, float | None] = {}
    sides = []
    for split in ("forget", "holdout"):
        s = run.scores.take(run.plans[split].answer)
        texts = [tokenizer.decode(s.labels[i][s.mask[i] > 0].tolist(), skip_special_tokens=True)
                 for i in range(len(s.labels))]
        sides.append({
            "loss": np.asarray(mia.loss_score(s.token_logp, s.mask)),
            "zlib": np.asarray(mia.zlib_score(s.token_logp, s.mask, texts)),
            "min_k": s.min_k, "min_k_plus_plus": s.min_k_plus_plus})
    for attack in ("loss", "zlib", "min_k", "min_k_plus_plus"):
        value = mia.auc(sides[0][attack], sides[1][attack])
        out[f"mia_{attack}_auc"] = value
        ref = None if reference is None else reference.get(f"mia_{attack}_auc")
        out[f"privleak_{attack}"] = (None if ref is None or ref == 1.0
                                     else mia.privleak(value, ref))
    out["privleak"] = out["privleak_min_k"]  # MUSE's PrivLeak uses Min-K% Prob
    return out


def _knowledge_numbers(model, tokenizer, run: _Run, options: SuiteConfig, judge,
                       judge_name: str | None) -> tuple[dict, dict]:
    """ReLearn's KFR (forget), KRR (retain) with the entity judge, and LS on forget."""
    flat, info = {}, {}
    for split, fn, key in (("forget", relearn.knowledge_forgetting_rate, "kfr"),
                           ("retain", relearn.knowledge_retention_rate, "krr")):
        recs = run.plans[split].records
        if not all(isinstance(r.get("facts"), list) for r in recs):
            info[f"{key}_skipped"] = f"{split} records have no 'facts'"
            continue
        rate = fn(run.generations[split], [r["answer"] for r in recs],
                  [r["facts"] for r in recs], queries=[r["question"] for r in recs])
        flat[key] = rate.rate
        info["kfr_krr_judge"] = rate.judge
    # LS: perplexity of each forget answer (+ eos) given its question under the judge
    # model (ReLearn uses Llama-3-8B-Instruct; default here: the evaluated model).
    plan, eos = run.plans["forget"], int(tokenizer.eos_token_id)
    encs = []
    for prompt, gen in zip(plan.prompts, run.generated_ids["forget"]):
        target = np.asarray(list(gen) + [eos], np.int32)
        encs.append(Encoded(np.concatenate([prompt, target]),
                            np.concatenate([np.zeros(len(prompt), np.float32),
                                            np.ones(len(target), np.float32)])))
    scored = score_sequences(judge if judge is not None else model, encs,
                             pad_id=pad_id(tokenizer), batch_size=options.batch_size,
                             k=options.min_k)
    ls = relearn.linguistic_score_of(run.generations["forget"],
                                     np.exp(-scored.mean_logprob).tolist())
    flat.update(ls=ls.score, ls_perplexity=ls.perplexity, ls_brunet=ls.brunet_index,
                ls_honore=ls.honore_statistic)
    info["ls_judge"] = judge_name or ("self" if judge is None else "judge model")
    return flat, info


def _evaluate(model, tokenizer, data: Mapping[str, list[dict]], options: SuiteConfig, *,
              retain_truth_ratios=None, reference: Mapping | None = None, judge=None,
              judge_name: str | None = None) -> dict:
    start = time.perf_counter()
    qa = {s: subset(data[s], options.max_records) for s in QA_SPLITS if s in data}
    canaries = data.get("canaries") if "canaries" in options.groups else None
    run = _run(model, tokenizer, qa, canaries, options, exposure=True,
               extraction="extraction" in options.groups)
    result, dist = _tofu_numbers(run)
    if retain_truth_ratios is None and reference is not None:
        retain_truth_ratios = reference.get("distributions", {}).get("forget_truth_ratio")
    result["forget_quality"] = (None if retain_truth_ratios is None else
                                metrics.forget_quality(run.qa["forget"]["truth_ratio"],
                                                       retain_truth_ratios))
    mu_keys = [k for k in metrics.MODEL_UTILITY_KEYS if k in result]
    result["model_utility"] = metrics.model_utility({k: result[k] for k in mu_keys})
    info: dict[str, Any] = {"model_utility_keys": mu_keys,
                            "records": {s: len(r) for s, r in qa.items()}}
    if "mia" in options.groups and "holdout" in run.plans:
        result.update(_mia_numbers(run, tokenizer, reference))
    if run.canaries:
        flat, nested = _canary_summary(run.canaries, options)
        result.update(flat)
        result["canaries"] = nested
        info["records"]["canaries"] = len(run.canaries)
    if "knowledge" in options.groups:
        flat, extra = _knowledge_numbers(model, tokenizer, run, options, judge, judge_name)
        result.update(flat)
        info.update(extra)
    result["distributions"] = dist
    result["samples"] = [{"question": r["question"], "answer": r["answer"], "generation": g}
                         for r, g in zip(run.plans["forget"].records[:3],
                                         run.generations["forget"][:3])]
    info["seconds"] = round(time.perf_counter() - start, 2)
    result["info"] = info
    return result


def evaluate_model(model, tokenizer, benchmark, cfg, *, retain_truth_ratios=None,
                   reference: Mapping | None = None, judge=None,
                   judge_name: str | None = None) -> dict:
    """Every metric of one model, as the ``models.<name>`` entry of ``eval.json``.

    Args:
      model: a ``Llama`` (nnx); never modified.
      tokenizer: its ``PreTrainedTokenizerFast`` (chat template, eos and pad ids).
      benchmark: a benchmark directory, a ``{split: records}`` mapping or a
        ``synthetic.Benchmark`` (see ``benchmark_splits``).
      cfg: a ``RunConfig`` (``SuiteConfig.from_run_config``) or a ``SuiteConfig``.
      retain_truth_ratios: ``[M]`` the retain model's forget-set truth ratios
        (``result["distributions"]["forget_truth_ratio"]`` of its evaluation); without
        them (and without ``reference``) forget quality is None.
      reference: the retain model's own ``evaluate_model`` result: supplies the truth
        ratios above when not given, and the MIA AUCs PrivLeak is relative to.
      judge: model whose perplexity enters the Linguistic Score; None = ``model``.

    Returns:
      Floats (None where undefined) under these keys, plus ``canaries`` (per split and
      repetition count), ``distributions`` (per-record probabilities and truth ratios),
      ``samples`` (three forget answers) and ``info`` (records used, judges, seconds):

      * ``{split}_prob``, ``{split}_rouge``, ``{split}_truth_ratio`` for split in forget,
        retain, holdout, world_facts. prob: mean ``P(a|q)^(1/|a|)`` (world facts:
        normalised over the answer and its perturbations); rouge: mean ROUGE-L recall of
        the greedy answer (``max_new_tokens``) vs the answer; truth ratio ``R =
        P(perturbed)/P(paraphrased)`` aggregated as ``mean(min(R, 1/R))`` on forget and
        holdout and ``mean(max(0, 1 - R))`` on retain and world facts (open-unlearning).
      * ``forget_quality``: KS p-value of forget truth ratios vs the retain model's.
      * ``model_utility``: harmonic mean of ``metrics.MODEL_UTILITY_KEYS`` ({retain,
        world facts} x {prob, rouge, truth ratio}) that exist (``info``).
      * ``mia_{loss,zlib,min_k,min_k_plus_plus}_auc``: forget answers (members) vs
        holdout answers; ``privleak_*`` vs the reference AUC, ``privleak`` = Min-K%'s.
      * ``canary_{split}_{ma,secret_accuracy,extracted,es,exposure,el10}`` means over the
        forget / retain / heldout canaries: MA = teacher-forced greedy accuracy over
        the whole canary (Jang et al. 2023); secret accuracy = the same over the secret's
        tokens; extracted = 1 when greedy decoding after the prefix reproduces the
        secret; ES = extraction strength on the secret; exposure = log2|R| - log2 rank
        of ``-log p(secret | prefix)`` among ``exposure_candidates`` same-format secrets,
        scaled to the secret space R; EL10 = extraction likelihood. Counts over forget
        canaries: ``canary_forget_num_extracted``, ``canary_forget_extractable`` (MA >=
        ``extractable_ma``), ``canary_forget_over_unlearned`` (MA < ``over_unlearned_ma``);
        ``canary_mia_loss_auc``: LOSS AUC forget vs heldout canaries.
      * ``kfr``, ``krr`` (ReLearn, entity judge: the records' ``facts`` found in the
        greedy answer, no NLI model), ``ls`` and its parts (``ls_perplexity``,
        ``ls_brunet``, ``ls_honore``) on the forget answers.
    """
    options = _options(cfg)
    data = benchmark_splits(benchmark, options)
    return _evaluate(model, tokenizer, data, options, retain_truth_ratios=retain_truth_ratios,
                     reference=reference, judge=judge, judge_name=judge_name)


FORGET_KEYS = ("forget_prob", "forget_rouge", "forget_truth_ratio", "canary_forget_ma",
               "canary_forget_secret_accuracy")


def evaluate_forget(model, tokenizer, records: Sequence[dict], cfg, *,
                    canaries: Sequence[dict] | None = None) -> dict[str, float]:
    """The forget-side numbers an attack compares before/after (``FORGET_KEYS``).

    Same definitions as ``evaluate_model`` on exactly ``records`` (no cap) and on the
    forget canaries among ``canaries`` (no exposure, no EL: one scoring pass and one
    decoding pass).
    """
    options = _options(cfg)
    forget_canaries = [c for c in (canaries or ()) if c.get("split") == "forget"] or None
    run = _run(model, tokenizer, {"forget": list(records)}, forget_canaries, options,
               exposure=False, extraction=False)
    flat, _ = _tofu_numbers(run)
    if run.canaries:
        summary, _ = _canary_summary(run.canaries, options)
        flat.update(summary)
    return {k: flat[k] for k in FORGET_KEYS if k in flat}


# ----------------------------------------------------------------------------- command
def parse_model_args(model_args: Sequence[str]) -> list[tuple[str, Path]]:
    """``["NAME=PATH" | "PATH", ...]`` -> ``[(name, path)]``; the name defaults to the
    path's last component (without ``.gguf``). Paths must exist, names be unique."""
    out: list[tuple[str, Path]] = []
    for arg in model_args:
        name, sep, rest = str(arg).partition("=")
        if sep and name and "/" not in name and os.sep not in name:
            path = Path(rest)
        else:
            name, path = "", Path(arg)
        if not str(path) or str(path) == ".":
            raise UserError(f"--model {arg!r}: expected [NAME=]PATH")
        name = name or (path.stem if path.suffix == ".gguf" else path.name)
        if not name.strip() or any(c.isspace() for c in name):
            raise UserError(f"--model {arg!r}: model name {name!r} must be a non-empty word")
        if not path.exists():
            raise UserError(f"--model {arg!r}: {path} does not exist")
        if name in (n for n, _ in out):
            raise UserError(f"--model {arg!r}: model name {name!r} is used twice")
        out.append((name, path))
    return out


def _tokenizer_source(cfg, model_path: Path) -> Path:
    source = Path(cfg.data.tokenizer) if cfg.data.tokenizer else model_path
    ok = source.suffix == ".gguf" and source.is_file() or (
        source.is_dir() and ((source / "tokenizer.json").is_file()
                             or (source / "tokenizer_config.json").is_file()))
    if not ok:
        where = "data.tokenizer" if cfg.data.tokenizer else f"model {model_path}"
        raise UserError(f"{where}: no tokenizer at {source} (expected tokenizer.json or a "
                        ".gguf file; set data.tokenizer=PATH)")
    return source


def main_eval(cfg, model_args: Sequence[str], retain_model_path) -> int:
    """``jaxunlearn eval --model [NAME=]PATH ... [--retain-model PATH]``.

    Checks every path, tokenizer and the benchmark before loading any model; then
    evaluates the retain model first (its forget truth ratios and MIA AUCs are the
    reference of every other model), each ``--model`` in order, runs the recovery
    attacks when ``eval.attacks`` (not on the retain model), and writes
    ``<output_dir>/eval.json`` atomically and the report beside it.
    """
    from jaxunlearn import report
    from jaxunlearn.eval import attacks
    from jaxunlearn.models import load_pretrained, load_tokenizer

    options = SuiteConfig.from_run_config(cfg)
    models = parse_model_args(model_args)
    if not models and retain_model_path is None:
        raise UserError("eval: give at least one --model [NAME=]PATH")
    if retain_model_path is not None:
        retain_path = Path(retain_model_path)
        if not retain_path.exists():
            raise UserError(f"--retain-model: {retain_path} does not exist")
        if "retain" in (n for n, _ in models):
            raise UserError("--model: the name 'retain' is reserved for --retain-model")
        models = [("retain", retain_path)] + models
    else:
        print("jaxunlearn eval: no --retain-model, so forget_quality and privleak are null",
              file=sys.stderr)
    sources = {name: _tokenizer_source(cfg, path) for name, path in models}
    data = benchmark_splits(cfg.data.benchmark, options)
    results: dict[str, dict] = {}
    reference = None
    for name, path in models:
        model, _ = load_pretrained(path)
        tokenizer = load_tokenizer(sources[name])
        result = _evaluate(model, tokenizer, data, options, reference=reference)
        if name == "retain":
            own = result["distributions"]["forget_truth_ratio"]
            result["forget_quality"] = metrics.forget_quality(own, own)
            for key in [k for k in result if k.startswith("privleak")]:
                result[key] = 0.0 if result.get("mia_min_k_auc") != 1.0 else None
            reference = result
        elif cfg.eval.attacks:
            result["attacks"] = attacks.run_attacks(model, tokenizer, data, options,
                                                    before=result)
        results[name] = result
        fq, mu = result["forget_quality"], result["model_utility"]
        print(f"{name}: forget_quality={'n/a' if fq is None else f'{fq:.3g}'} "
              f"model_utility={mu:.3f} ({result['info']['seconds']} s)")
        del model
    out_dir = Path(cfg.output_dir)
    from jaxunlearn.train.mesh import from_config

    mesh = from_config(cfg.mesh)
    evaluation = {"config": cfg.to_dict(), "env": report.env_info(mesh), "models": results}
    report.write_outputs(evaluation, out_dir)  # safety: eval.json + report + figures, one set
    path = out_dir / "eval.json"
    print(f"wrote {path} and {out_dir / 'report.md'}")
    return 0
