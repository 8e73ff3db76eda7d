"""One pass of a model over the evaluation data: every sequence scored, every question
answered, in one batched call each.

The metric groups (``eval.groups``) reduce a :class:`Measurement`; none of them runs the
model over the QA data again. Each QA split contributes its answers, paraphrased and
perturbed answers and prompts; the canaries (when the canary group is selected) their
documents and, for exposure, ``exposure_candidates`` same-format secrets per canary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from jaxunlearn.data.batch import DEFAULT_CHAT, ChatStyle, Encoded, encode_candidates, \
    encode_prompt, encode_qa, encode_text
from jaxunlearn.data.schema import CANARY_SPLITS, HOLDOUT, OPTION_SPLITS
from jaxunlearn.data.synthetic import CANARY_FORMATS, sample_secret, secret_space_size
from jaxunlearn.errors import DataError
from jaxunlearn.eval import metrics
from jaxunlearn.eval.inputs import need
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.data.batch import pad_id
from jaxunlearn.eval.scoring import SequenceScores, greedy_generate, score_sequences

__all__ = ["SequenceList", "QAPlan", "CanaryPlan", "Measurement", "measure"]


class SequenceList:
    """Collects every sequence of one evaluation so that they are scored in one pass."""

    def __init__(self):
        self.encoded: list[Encoded] = []

    def add(self, items: Sequence[Encoded]) -> np.ndarray:
        start = len(self.encoded)
        self.encoded.extend(items)
        return np.arange(start, len(self.encoded))


@dataclasses.dataclass(frozen=True)
class QAPlan:
    """Where one QA split's sequences sit in the shared list."""

    split: str
    records: list[dict]
    prompts: list[np.ndarray]
    answer: np.ndarray           # [N] indices
    para: np.ndarray             # [N] indices
    pert: list[np.ndarray]       # N arrays of K_i indices
    mia_only: bool = False       # answers scored for MIA only (TOFU's holdout<NN>)


def plan_qa(split: str, records: list[dict], tokenizer, seqs: SequenceList, *,
            chat: ChatStyle = DEFAULT_CHAT) -> QAPlan:
    """Adds one QA split's answers, paraphrased answers and perturbed answers to ``seqs``.

    TOFU's ``holdout<NN>`` configs hold question and answer only: open-unlearning uses
    them for membership inference alone, so a holdout without ``perturbed_answer``
    anywhere is planned as answers only (no truth ratio, no generation).
    """
    if split == HOLDOUT and not any("perturbed_answer" in r for r in records):
        answers = [encode_qa(tokenizer, need(r, "question", split, i, "the prompt"),
                             need(r, "answer", split, i, "membership inference"), chat=chat)
                   for i, r in enumerate(records)]
        index = seqs.add(answers)
        return QAPlan(split, records, [], index, index, [], mia_only=True)
    prompts, answers, paras, perts = [], [], [], []
    for i, rec in enumerate(records):
        q = need(rec, "question", split, i, "the prompt")
        a = need(rec, "answer", split, i, "probability and ROUGE")
        pert = need(rec, "perturbed_answer", split, i, "the truth ratio")
        prompts.append(encode_prompt(tokenizer, q, chat=chat))
        answers.append(encode_qa(tokenizer, q, a, chat=chat))
        # World facts and real authors have no paraphrase in TOFU: their truth ratio uses
        # the answer itself.
        if split not in OPTION_SPLITS:
            paras.append(encode_qa(tokenizer, q, need(rec, "paraphrased_answer", split, i,
                                                       "the truth ratio"), chat=chat))
        perts.append(encode_candidates(tokenizer, q, pert, chat=chat))
    answer = seqs.add(answers)
    para = answer if split in OPTION_SPLITS else seqs.add(paras)
    return QAPlan(split, records, prompts, answer, para, [seqs.add(p) for p in perts])


def qa_numbers(plan: QAPlan, scores: SequenceScores, generations: list[str]) -> dict:
    """Per-record arrays of one split: probability, truth ratio, ROUGE-L recall (only the
    probability for a MIA-only split)."""
    ans = scores.take(plan.answer)
    prob = metrics.answer_probability(ans.seq_logprob, ans.num_tokens)
    if plan.mia_only:
        return {"prob": prob}
    para = scores.mean_logprob[plan.para]
    # Mean over each record's own K perturbations (K may differ between records), so
    # truth_ratio sees [N, 1]: exp(mean_k pert_k - para).
    pert = [scores.mean_logprob[p] for p in plan.pert]
    ratio = metrics.truth_ratio(para, np.asarray([p.mean() for p in pert])[:, None])
    rouge = np.asarray([metrics.rouge_l_recall(g, r["answer"])
                        for g, r in zip(generations, plan.records)])
    out = {"prob": prob, "truth_ratio": ratio, "rouge": rouge}
    if plan.split in OPTION_SPLITS:
        # TOFU's world-facts / real-authors probability is normalised over the options.
        out["norm_prob"] = np.asarray([
            metrics.normalized_probability(np.asarray([t]), p[None])[0]
            for t, p in zip(ans.mean_logprob, pert)])
    return out


def secret_positions(tokenizer, canary: Mapping, enc: Encoded) -> np.ndarray:
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


@dataclasses.dataclass(frozen=True)
class CanaryPlan:
    """Where the canaries' sequences sit in the shared list, and their secret masks."""

    records: list[dict]
    docs: list[Encoded]
    text: np.ndarray                        # [C] indices of the canary documents
    secret: list[np.ndarray]                # C bool label masks
    candidates: list[np.ndarray | None]     # C index arrays (None: no exposure)
    candidate_secret: list[list[np.ndarray]]
    space: list[int]                        # |R| of each canary's secret format


def plan_canaries(records: list[dict], tokenizer, seqs: SequenceList, options: SuiteConfig,
                  *, exposure: bool) -> CanaryPlan:
    """Adds the canary documents (and, with ``exposure``, their candidate secrets) to ``seqs``."""
    docs, secrets, cands, cand_secrets, spaces = [], [], [], [], []
    for i, c in enumerate(records):
        for field in ("prefix", "secret", "split", "repetitions"):
            need(c, field, "canaries", i, "canary memorisation")
        if c["split"] not in CANARY_SPLITS:
            raise DataError(f"canaries: record {i + 1}: field 'split': must be one of "
                            f"{CANARY_SPLITS}, got {c['split']!r}")
        enc = encode_text(tokenizer, c["prefix"] + c["secret"])
        docs.append(enc)
        secrets.append(secret_positions(tokenizer, c, enc))
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
        cand_secrets.append([secret_positions(tokenizer, {**c, "secret": s}, e)
                             for s, e in zip(drawn, encs)])
        spaces.append(secret_space_size(pattern))
    return CanaryPlan(records, docs, seqs.add(docs), secrets, cands, cand_secrets, spaces)


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Raw per-record numbers of one pass of a model over the evaluation data.

    Attributes:
      plans: per QA split, where its sequences sit in ``scores``.
      qa: per QA split, per-record arrays ``prob``, ``truth_ratio``, ``rouge`` (and
        ``norm_prob`` for world facts), from :func:`qa_numbers`.
      scores: every scored sequence (QA and canaries), in plan order.
      generations, generated_ids: per QA split, the greedy answers (text and token ids).
      canary_plan: where the canaries sit in ``scores`` (None: canaries not measured).
    """

    plans: dict[str, QAPlan]
    qa: dict[str, dict[str, np.ndarray]]
    scores: SequenceScores
    generations: dict[str, list[str]]
    generated_ids: dict[str, list[list[int]]]
    canary_plan: CanaryPlan | None


def measure(model, tokenizer, qa: Mapping[str, list[dict]], canaries: list[dict] | None,
            options: SuiteConfig, *, exposure: bool) -> Measurement:
    """Scores every sequence in one pass, decodes every question in one pass.

    Args:
      qa: ``{role: records}`` of the QA splits to measure (``options.QA_SPLITS`` roles).
      canaries: canary records, or None to leave canaries out.
      exposure: also score ``options.exposure_candidates`` secrets per canary of
        ``options.exposure_splits`` (the ranks exposure needs).
    """
    seqs = SequenceList()
    plans = {split: plan_qa(split, records, tokenizer, seqs, chat=options.chat)
             for split, records in qa.items()}
    cplan = (plan_canaries(canaries, tokenizer, seqs, options, exposure=exposure)
             if canaries else None)
    scores = score_sequences(model, seqs.encoded, pad_id=pad_id(tokenizer),
                             batch_size=options.batch_size, k=options.min_k)
    prompts = [p for plan in plans.values() for p in plan.prompts]
    ids = greedy_generate(model, prompts, max_new_tokens=options.max_new_tokens,
                          eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer),
                          batch_size=options.batch_size)
    generations, generated_ids, start = {}, {}, 0
    for split, plan in plans.items():
        part = ids[start:start + len(plan.prompts)]
        start += len(plan.prompts)
        generated_ids[split] = part
        generations[split] = [tokenizer.decode(g, skip_special_tokens=True) for g in part]
    numbers = {split: qa_numbers(plan, scores, generations[split])
               for split, plan in plans.items()}
    return Measurement(plans, numbers, scores, generations, generated_ids, cplan)
