"""A small fixed evaluation run while unlearning (``train.eval_every``, ``train.keep_best``).

Every ``eval_every`` updates the model is scored on the same first ``PROGRESS_RECORDS``
forget and retain records (one scoring pass, one greedy-decoding pass), with the
definitions of the full suite (``eval.metrics``, ``eval.groups.tofu``):

  forget_prob, retain_prob    mean over records of ``exp(seq_logprob / num_tokens)``
                              of the answer (TOFU's answer probability);
  forget_rouge, retain_rouge  mean ROUGE-L recall of the greedy answer against the answer;
  forget_quality              KS p-value of the forget records' truth ratios against the
                              retain model's on the same records (only when the records
                              carry ``paraphrased_answer`` / ``perturbed_answer`` and a
                              retain model's ratios are given).

Which direction is better for each (``PROGRESS_METRICS``) is what ``train.keep_best``
follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from jaxunlearn.data.batch import encode_candidates, encode_prompt, encode_qa, pad_id
from jaxunlearn.eval import metrics
from jaxunlearn.eval.scoring import greedy_generate, score_sequences

__all__ = ["PROGRESS_RECORDS", "PROGRESS_METRICS", "ProgressSet", "progress_numbers",
           "forget_truth_ratios", "is_better"]

PROGRESS_RECORDS = 32  # per split: small enough to run often, enough for a KS test
# +1: higher is better, -1: lower is better (the direction train.keep_best follows).
PROGRESS_METRICS: dict[str, int] = {
    "forget_prob": -1, "forget_rouge": -1, "retain_prob": +1, "retain_rouge": +1,
    "forget_quality": +1,
}


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Strictly better than ``best`` in ``metric``'s direction (the first value always is;
    ties keep the earlier step)."""
    if best is None:
        return True
    return value * PROGRESS_METRICS[metric] > best * PROGRESS_METRICS[metric]


@dataclasses.dataclass(frozen=True)
class ProgressSet:
    """The fixed records every progress evaluation scores: the first ``n`` of each split."""

    forget: tuple[dict, ...]
    retain: tuple[dict, ...]

    @classmethod
    def first(cls, forget: Sequence[Mapping], retain: Sequence[Mapping],
              n: int = PROGRESS_RECORDS) -> ProgressSet:
        return cls(tuple(dict(r) for r in forget[:n]), tuple(dict(r) for r in retain[:n]))

    @property
    def has_truth_ratio(self) -> bool:
        """Every forget record has a paraphrased and at least one perturbed answer."""
        return bool(self.forget) and all(
            r.get("paraphrased_answer") and r.get("perturbed_answer") for r in self.forget)


def _truth_ratio_plan(tokenizer, records: Sequence[Mapping], seqs: list) -> tuple:
    """Adds paraphrased and perturbed answers to ``seqs``; returns their index arrays."""
    para = []
    pert = []
    for r in records:
        para.append(len(seqs))
        seqs.append(encode_qa(tokenizer, r["question"], r["paraphrased_answer"]))
        cands = encode_candidates(tokenizer, r["question"], r["perturbed_answer"])
        pert.append(np.arange(len(seqs), len(seqs) + len(cands)))
        seqs.extend(cands)
    return np.asarray(para), pert


def _ratios(scores, para: np.ndarray, pert: list[np.ndarray]) -> np.ndarray:
    mean = scores.mean_logprob
    # Mean over each record's own K perturbations, as eval.measure.qa_numbers does.
    return metrics.truth_ratio(mean[para], np.asarray([mean[p].mean() for p in pert])[:, None])


def forget_truth_ratios(model, tokenizer, subset: ProgressSet, *, batch_size: int) -> np.ndarray:
    """``[N]`` truth ratios of ``subset.forget`` under ``model`` (the retain model's are the
    reference forget quality is measured against)."""
    seqs: list = []
    para, pert = _truth_ratio_plan(tokenizer, subset.forget, seqs)
    scores = score_sequences(model, seqs, pad_id=pad_id(tokenizer), batch_size=batch_size)
    return _ratios(scores, para, pert)


def progress_numbers(model, tokenizer, subset: ProgressSet, *, batch_size: int,
                     max_new_tokens: int, retain_truth_ratios: np.ndarray | None = None
                     ) -> dict[str, float]:
    """The progress metrics of ``model`` on ``subset`` (names: ``PROGRESS_METRICS``).

    ``forget_quality`` is present only when ``retain_truth_ratios`` is given and the
    forget records allow a truth ratio.
    """
    seqs: list = []
    answer_index = {}
    for split, records in (("forget", subset.forget), ("retain", subset.retain)):
        start = len(seqs)
        seqs.extend(encode_qa(tokenizer, r["question"], r["answer"]) for r in records)
        answer_index[split] = np.arange(start, len(seqs))
    with_fq = retain_truth_ratios is not None and subset.has_truth_ratio
    if with_fq:
        para, pert = _truth_ratio_plan(tokenizer, subset.forget, seqs)
    scores = score_sequences(model, seqs, pad_id=pad_id(tokenizer), batch_size=batch_size)
    records = [*subset.forget, *subset.retain]
    ids = greedy_generate(model, [encode_prompt(tokenizer, r["question"]) for r in records],
                          max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_token_id,
                          pad_id=pad_id(tokenizer), batch_size=batch_size)
    rouge = np.asarray([metrics.rouge_l_recall(tokenizer.decode(g, skip_special_tokens=True),
                                               r["answer"]) for g, r in zip(ids, records)])
    out: dict[str, float] = {}
    for split, index in answer_index.items():
        if len(index) == 0:
            continue
        ans = scores.take(index)
        out[f"{split}_prob"] = float(np.mean(metrics.answer_probability(ans.seq_logprob,
                                                                        ans.num_tokens)))
        out[f"{split}_rouge"] = float(np.mean(rouge[index]))
    if with_fq:
        out["forget_quality"] = metrics.forget_quality(_ratios(scores, para, pert),
                                                       retain_truth_ratios)
    return out
