"""ReLearn's knowledge metrics (Xu et al. 2025, "ReLearn: Unlearning via Learning").

* KFR (forget) / KRR (retain): the share of answers whose greedy generation lost /
  kept the record's ``facts`` (entity judge; an NLI judge is pluggable in
  ``eval.relearn``); skipped, with the reason, when the records have no ``facts``;
* Linguistic Score on the forget answers: perplexity of each answer (+ eos) given its
  question under the judge model (ReLearn uses Llama-3-8B-Instruct; default here: the
  evaluated model), Brunet's index and Honoré's statistic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.batch import Encoded
from jaxunlearn.eval import relearn
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.results import KnowledgeResult
from jaxunlearn.data.batch import pad_id
from jaxunlearn.eval.scoring import score_sequences

__all__ = ["compute", "GROUP"]


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> KnowledgeResult:
    m, tokenizer, options = inputs.measurement, inputs.tokenizer, inputs.options
    rates, skipped, rate_judge = {}, {}, None
    for split, fn, key in (("forget", relearn.knowledge_forgetting_rate, "kfr"),
                           ("retain", relearn.knowledge_retention_rate, "krr")):
        recs = m.plans[split].records
        if not all(isinstance(r.get("facts"), list) for r in recs):
            skipped[key] = f"{split} records have no 'facts'"
            continue
        rate = fn(m.generations[split], [r["answer"] for r in recs],
                  [r["facts"] for r in recs], queries=[r["question"] for r in recs])
        rates[key] = rate.rate
        rate_judge = rate.judge
    plan, eos = m.plans["forget"], int(tokenizer.eos_token_id)
    encs = []
    for prompt, gen in zip(plan.prompts, m.generated_ids["forget"]):
        target = np.asarray(list(gen) + [eos], np.int32)
        encs.append(Encoded(np.concatenate([prompt, target]),
                            np.concatenate([np.zeros(len(prompt), np.float32),
                                            np.ones(len(target), np.float32)])))
    judge = inputs.judge
    scored = score_sequences(judge if judge is not None else inputs.model, encs,
                             pad_id=pad_id(tokenizer), batch_size=options.batch_size,
                             k=options.min_k)
    ls = relearn.linguistic_score_of(m.generations["forget"],
                                     np.exp(-scored.mean_logprob).tolist())
    return KnowledgeResult(
        **rates, ls=ls.score, ls_perplexity=ls.perplexity, ls_brunet=ls.brunet_index,
        ls_honore=ls.honore_statistic, kfr_krr_judge=rate_judge, skipped=skipped,
        ls_judge=inputs.judge_name or ("self" if judge is None else "judge model"))


GROUP = MetricGroup(name="knowledge", compute=compute)
