"""MUSE (Shi et al. 2024) as open-unlearning runs it (``configs/eval/muse.yaml``).

On a MUSE source (``data.muse``), per model:

* ``forget_verbmem_ROUGE``: greedy continuation (``VERBMEM_NEW_TOKENS`` = 128 tokens)
  of each ``verbmem/forget`` prompt; ROUGE-L F1 (stemmer on) against the reference
  ``gt`` (its tokens after ``prompt + " "``, decoded); mean over records;
* ``forget_knowmem_ROUGE`` / ``retain_knowmem_ROUGE``: greedy answer (32 tokens) to each
  ``knowmem`` question after all the split's in-context examples (``data.muse.
  encode_knowmem``), cut at the eos text and at ``"\\n\\n"``, ``"\\nQuestion"``,
  ``"Question:"``, stripped; ROUGE-L F1 against the answer;
* ``privleak``: Min-K% (k = ``options.min_k``, 0.4) of the ``privleak`` texts (bos +
  text up to 2048 tokens, the last token left out as open-unlearning's
  ``tokenwise_logprobs`` does); AUC of forget vs holdout (1 = forget far more likely);
  ``((1 - AUC) - (1 - AUC_ref)) / (1 - AUC_ref) * 100`` with ``AUC_ref`` the retain
  model's AUC, or 0.5 without a retain model (open-unlearning's ``ref_value``).
  Min-K%++'s AUC is reported beside it;
* ``extraction_strength``: ``1 - k / n`` on the ``verbmem/forget`` text teacher-forced
  after its prompt (the last token left out, as there).

open-unlearning differs from MUSE's own code in two ways it keeps here: the verbmem
reference is the whole ``gt`` (MUSE cuts it to 128 tokens) and ROUGE stems (MUSE does
not). Generation uses the shared KV-cache decoder (``eval.scoring.greedy_generate``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxunlearn.data.batch import pad_id
from jaxunlearn.data.muse import MuseEvalData, encode_completion, encode_knowmem
from jaxunlearn.eval import metrics, mia
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.inputs import subset
from jaxunlearn.eval.memorization_metrics import extraction_strength
from jaxunlearn.eval.muse_results import MuseResult, TextScore
from jaxunlearn.eval.scoring import greedy_generate, score_sequences

__all__ = ["VERBMEM_NEW_TOKENS", "KNOWMEM_NEW_TOKENS", "KNOWMEM_STOPWORDS",
           "COMPLETION_MAX_LENGTH", "rouge_scores", "cut_at_stopwords", "drop_last",
           "privleak_of", "evaluate_muse", "compute", "GROUP"]

VERBMEM_NEW_TOKENS = 128
KNOWMEM_NEW_TOKENS = 32
KNOWMEM_STOPWORDS = ("\n\n", "\nQuestion", "Question:")
COMPLETION_MAX_LENGTH = 2048
# open-unlearning's privleak without retain logs (configs/eval/muse_metrics/privleak.yaml).
DEFAULT_REFERENCE_AUC = 0.5


def rouge_scores(generation: str, reference: str) -> tuple[float, float, float]:
    """``(rouge1_recall, rougeL_f1, rougeL_recall)`` as rouge-score's ``RougeScorer(
    ["rouge1", "rougeL"], use_stemmer=True).score(reference, generation)``.

    ROUGE-1 recall = ``sum_g min(count_ref(g), count_gen(g)) / |ref|`` over stemmed
    unigrams (0 when either text has none).
    """
    ref, gen = Counter(metrics.rouge_tokens(reference)), Counter(metrics.rouge_tokens(generation))
    total = sum(ref.values())
    r1 = sum((ref & gen).values()) / total if total and gen else 0.0
    return r1, metrics.rouge_l_f1(generation, reference), metrics.rouge_l_recall(generation,
                                                                                 reference)


def cut_at_stopwords(text: str, stopwords: Sequence[str]) -> str:
    """``text`` before the first occurrence of each stopword in turn, stripped
    (open-unlearning's ``eval_text_similarity``)."""
    for word in stopwords:
        if word and word in text:
            text = text.split(word)[0]
    return text.strip()


def drop_last(mask: np.ndarray) -> np.ndarray:
    """``[N, T]`` mask without each row's last counted position."""
    out = np.array(mask, dtype=np.float32, copy=True)
    for row in out:
        on = np.flatnonzero(row > 0)
        if on.size:
            row[on[-1]] = 0.0
    return out


def privleak_of(auc: float, reference_auc: float) -> float | None:
    """MUSE's PrivLeak (``eval.mia.privleak``), None where the reference AUC is 1."""
    return None if reference_auc == 1.0 else mia.privleak(auc, reference_auc)


def _text_scores(inputs: Sequence[str], refs: Sequence[str], gens: Sequence[str]
                 ) -> tuple[TextScore, ...]:
    out = []
    for inp, ref, gen in zip(inputs, refs, gens):
        r1, lf, lr = rouge_scores(gen, ref)
        out.append(TextScore(input=inp, ground_truth=ref, generation=gen, rouge1_recall=r1,
                             rougeL_f1=lf, rougeL_recall=lr))
    return tuple(out)


def _generate(model, tokenizer, prompts, new_tokens: int, batch_size: int) -> list[str]:
    ids = greedy_generate(model, prompts, max_new_tokens=new_tokens,
                          eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer),
                          batch_size=batch_size)
    eos_text = tokenizer.decode([tokenizer.eos_token_id])
    return [cut_at_stopwords(tokenizer.decode(g, skip_special_tokens=True), (eos_text,))
            for g in ids]


def _knowmem(model, tokenizer, records, icl, batch_size: int) -> tuple[TextScore, ...]:
    prompts, refs, inputs = [], [], []
    for rec in records:
        prompt, full = encode_knowmem(tokenizer, icl, rec["question"], rec["answer"])
        text = tokenizer.decode(prompt, skip_special_tokens=True)
        prompts.append(prompt)
        inputs.append(text)
        refs.append(tokenizer.decode(full, skip_special_tokens=True).replace(text, "").strip())
    raw = greedy_generate(model, prompts, max_new_tokens=KNOWMEM_NEW_TOKENS,
                          eos_id=tokenizer.eos_token_id, pad_id=pad_id(tokenizer),
                          batch_size=batch_size)
    stops = (tokenizer.decode([tokenizer.eos_token_id]), *KNOWMEM_STOPWORDS)
    gens = [cut_at_stopwords(tokenizer.decode(g, skip_special_tokens=True), stops) for g in raw]
    return _text_scores(inputs, refs, gens)


def evaluate_muse(model, tokenizer, data: MuseEvalData, options, *,
                  reference: MuseResult | None = None) -> MuseResult:
    """MUSE's five metrics of one model (module docstring); ``reference``: the retain
    model's result, whose Min-K% AUC PrivLeak is relative to."""
    cap = options.max_records
    verbmem = subset(data.verbmem, cap)
    forget_texts = subset(data.privleak_forget, cap)
    holdout_texts = subset(data.privleak_holdout, cap)
    batch = options.batch_size

    # One scoring pass: verbmem sequences (ES), then the privleak texts (Min-K).
    encoded, prompts = [], []
    for rec in verbmem:
        enc, prompt = encode_completion(tokenizer, rec["prompt"], rec["gt"],
                                        max_length=COMPLETION_MAX_LENGTH, insert_space=True)
        encoded.append(enc)
        prompts.append(prompt)
    for text in (*forget_texts, *holdout_texts):
        encoded.append(encode_completion(tokenizer, "", text,
                                         max_length=COMPLETION_MAX_LENGTH)[0])
    scores = score_sequences(model, encoded, pad_id=pad_id(tokenizer), batch_size=batch,
                             k=options.min_k)
    n_v, n_f = len(verbmem), len(forget_texts)
    es = extraction_strength(scores.correct[:n_v], drop_last(scores.mask[:n_v]))
    member = slice(n_v, n_v + n_f)
    nonmember = slice(n_v + n_f, None)
    auc = mia.auc(scores.min_k[member], scores.min_k[nonmember])
    auc_pp = mia.auc(scores.min_k_plus_plus[member], scores.min_k_plus_plus[nonmember])

    refs = [tokenizer.decode(scores.labels[i][scores.mask[i] > 0].tolist(),
                             skip_special_tokens=True).strip() for i in range(n_v)]
    inputs = [tokenizer.decode(p, skip_special_tokens=True) for p in prompts]
    verb = _text_scores(inputs, refs, _generate(model, tokenizer, prompts, VERBMEM_NEW_TOKENS,
                                                batch))
    forget_qa = _knowmem(model, tokenizer, subset(data.forget_qa, cap), data.forget_qa_icl, batch)
    retain_qa = _knowmem(model, tokenizer, subset(data.retain_qa, cap), data.retain_qa_icl, batch)

    ref = None if reference is None else reference.mia_min_k_auc
    ref_auc = DEFAULT_REFERENCE_AUC if ref is None else ref
    return MuseResult(
        verbmem=verb, forget_knowmem=forget_qa, retain_knowmem=retain_qa,
        # open-unlearning's sign: -mean(lowest log-probs), higher = less likely a member.
        min_k_forget=tuple(-float(v) for v in scores.min_k[member]),
        min_k_holdout=tuple(-float(v) for v in scores.min_k[nonmember]),
        es=tuple(float(v) for v in np.asarray(es)),
        forget_verbmem_rouge=float(np.mean([s.rougeL_f1 for s in verb])),
        forget_knowmem_rouge=float(np.mean([s.rougeL_f1 for s in forget_qa])),
        retain_knowmem_rouge=float(np.mean([s.rougeL_f1 for s in retain_qa])),
        mia_min_k_auc=auc, mia_min_k_plus_plus_auc=auc_pp,
        privleak_reference_auc=ref_auc,
        privleak_reference="retain model" if ref is not None else "default 0.5 (no retain model)",
        privleak=privleak_of(auc, ref_auc),
        extraction_strength=float(np.mean(np.asarray(es, np.float64))))


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> MuseResult | None:
    if inputs.muse is None:
        return None
    reference = None if inputs.reference is None else inputs.reference.muse
    return evaluate_muse(inputs.model, inputs.tokenizer, inputs.muse, inputs.options,
                         reference=reference)


GROUP = MetricGroup(name="muse", compute=compute)
