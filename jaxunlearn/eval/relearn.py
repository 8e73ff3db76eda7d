"""ReLearn's evaluation (Xu et al. 2025, code: zjunlp/unlearn ``evals/evaluate.py``).

* Knowledge Forgetting Rate (KFR): fraction of forget-set answers judged forgotten.
* Knowledge Retention Rate (KRR): fraction of retain-set answers judged kept.
* Linguistic Score (LS): fluency/diversity of the answers from perplexity, Brunet's
  index and Honoré's statistic.

Differences from the reference code, on purpose:
* Entities. ReLearn asks an LLM to extract entities from truth and answer and matches
  them by sentence-embedding cosine >= 0.8, which credits near misses ("14 March 1963"
  for "14 March 1962"). Our benchmark *knows* the entities of each fact (names, dates,
  places), so ``entity_similarity`` credits each entity with the share of its words
  found in the answer (whole words after text normalisation; words the question already
  holds left out): deterministic and free, graded like the embedding match instead of
  all-or-nothing. (Whole-entity containment, the earlier rule, called every answer
  short of verbatim "forgotten": KFR 1.000 for every unlearned demo model, SimNPO's
  forget ROUGE 0.388 included.) Stricter than embeddings on reworded values ("12 May"
  vs "May 12th").
* Tokens. ReLearn uses ``nltk.word_tokenize`` (needs downloaded punkt data);
  ``lexical_tokens`` is a regex approximation of it (contractions and punctuation are
  split, "3.5" and "e-mail" stay whole).
* The NLI judge is any callable ``(premise, hypothesis) -> label``; ReLearn uses
  ``deberta-v3-base-tasksource-nli``. Results record which judge produced them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

NLI_LABELS = ("entailment", "neutral", "contradiction")
NLIJudge = Callable[[str, str], str]

_CLITIC = re.compile(r"(\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.,']\w+)*|[^\w\s]")
_NON_WORD = re.compile(r"[\W_]+")


def lexical_tokens(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens, approximating ``nltk.word_tokenize``."""
    if not isinstance(text, str):
        raise ValueError(f"text: expected str, got {type(text).__name__}")
    return _TOKEN.findall(_CLITIC.sub(r"\1 \2", text.lower()))


def brunet_index(tokens: Sequence[str]) -> float:
    """Brunet's index ``W = N ** (V ** -0.165)``: N tokens, V distinct; lower = richer.

    ReLearn's ``calculate_BI``; an empty answer scores 1000 as there.
    """
    n, v = len(tokens), len(set(tokens))
    return 1000.0 if n == 0 else float(n ** (v ** -0.165))


def honore_statistic(tokens: Sequence[str], *, epsilon: float = 0.1,
                     max_value: float = 1e6) -> float:
    """Honoré's statistic ``R = 100 ln N / (1 - V1 / V + epsilon)``; higher = richer.

    N tokens, V distinct, V1 seen exactly once. Honoré (1979) has no epsilon; ReLearn's
    ``calculate_honores_statistic`` adds 0.1 so that an answer of all-distinct words
    (V1 = V) stays finite, caps at 1e6 and returns 0 for N <= 1; we do the same.
    """
    n = len(tokens)
    if n <= 1:
        return 0.0
    counts = Counter(tokens)
    hapax = sum(1 for c in counts.values() if c == 1)
    return min(100.0 * math.log(n) / (1.0 - hapax / len(counts) + epsilon), max_value)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinguisticScore:
    """LS and its inputs (each averaged over the answers, as ReLearn's ``compute_as``)."""

    score: float
    perplexity: float
    brunet_index: float
    honore_statistic: float


def linguistic_score(perplexity: float, brunet: float, honore: float) -> float:
    """ReLearn's LS: harmonic mean of ``σ(-ln PPL)``, ``σ(-ln BI)``, ``σ(ln HS)``.

    ``σ(-ln x) = 1 / (1 + x)`` and ``σ(ln x) = x / (1 + x)`` exactly, which is how it
    is computed (no overflow). ReLearn's ``as_mean`` applies this to the *mean* PPL,
    BI and HS over all answers (``linguistic_score_of`` does that). 0 if HS is 0.
    """
    for name, v in (("perplexity", perplexity), ("brunet", brunet)):
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name}: must be a finite positive number, got {v}")
    if not math.isfinite(honore) or honore < 0:
        raise ValueError(f"honore: must be a finite non-negative number, got {honore}")
    parts = (1.0 / (1.0 + perplexity), 1.0 / (1.0 + brunet), honore / (1.0 + honore))
    return 0.0 if parts[2] == 0.0 else 3.0 / sum(1.0 / p for p in parts)


def linguistic_score_of(texts: Sequence[str], perplexities: Sequence[float]) -> LinguisticScore:
    """LS of a set of answers given each answer's perplexity under a judge language model.

    ``perplexities[i] = exp(mean NLL of texts[i] given its question)``; ReLearn uses
    Llama-3-8B-Instruct, we use whatever model the driver passes.
    """
    if len(texts) == 0 or len(texts) != len(perplexities):
        raise ValueError(f"perplexities: need one per text and at least one text, got "
                         f"{len(perplexities)} for {len(texts)} texts")
    tokens = [lexical_tokens(t) for t in texts]
    ppl = sum(float(p) for p in perplexities) / len(texts)
    bi = sum(brunet_index(t) for t in tokens) / len(texts)
    hs = sum(honore_statistic(t) for t in tokens) / len(texts)
    return LinguisticScore(score=linguistic_score(ppl, bi, hs), perplexity=ppl,
                           brunet_index=bi, honore_statistic=hs)


def _normalize(text: str) -> str:
    return " " + " ".join(_NON_WORD.sub(" ", text.lower()).split()) + " "


def _words(text: str) -> list[str]:
    """Lower-cased words, punctuation as separators: "Lima, 12-May" -> ["lima", "12", "may"]."""
    return _normalize(text).split()


def _entities(entities: Sequence[str], query: str | None, where: str) -> list[tuple[str, ...]]:
    """Each entity as the words that count: those not already in ``query``; an entity
    with no word left is dropped (ReLearn keeps only entities "not in the query")."""
    if isinstance(entities, str):
        raise ValueError(f"{where}: expected a list of entity strings, got one string")
    known = set() if query is None else set(_words(query))
    out = []
    for e in entities:
        if not isinstance(e, str) or not _words(e):
            raise ValueError(f"{where}: entity {e!r} is empty after normalisation")
        # Words the question already names (e.g. the person) prove nothing.
        words = tuple(w for w in _words(e) if w not in known)
        if words:
            out.append(words)
    return out


def entity_similarity(prediction: str, entities: Sequence[str], *,
                      query: str | None = None) -> float:
    """How much of the truth's entities the prediction states, in [0, 1].

    ``(1/|E|) sum_{e in E} |words(e) & words(prediction)| / |words(e)|``: each entity is
    credited with the share of its words the prediction contains (whole words, lower
    case, punctuation as separators: "Paris" matches "paris," but not "Parisian"; "14
    March 1963" gets 2/3 of "14 March 1962"). Words found in ``query`` are left out of
    each entity first, and an entity with none left is dropped. With no entity left the
    similarity is 0, as ReLearn returns for an empty entity list.
    """
    ents = _entities(entities, query, "entities")
    if not ents:
        return 0.0
    said = set(_words(prediction))
    return sum(sum(w in said for w in e) / len(e) for e in ents) / len(ents)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KnowledgeRate:
    """KFR or KRR with its per-answer evidence.

    Attributes:
      rate: the fraction of answers whose ``labels`` is True.
      labels: per answer, True = forgotten (KFR) / kept (KRR).
      entity_similarity: per answer, ``entity_similarity`` to the truth's entities.
      nli: per answer, the judge's label, or None without a judge.
      judge: the name of the NLI judge, or "entity-only".
    """

    rate: float
    labels: tuple[bool, ...]
    entity_similarity: tuple[float, ...]
    nli: tuple[str | None, ...]
    judge: str


def _judge(judge: NLIJudge | None, premise: str, hypothesis: str, i: int) -> str | None:
    if judge is None:
        return None
    label = judge(premise, hypothesis)
    norm = label.strip().lower() if isinstance(label, str) else None
    if norm not in NLI_LABELS:
        raise ValueError(f"judge: returned {label!r} for record {i}; expected one of {NLI_LABELS}")
    return norm


def _knowledge_rate(predictions, truths, entities, queries, judge, judge_name, forget,
                    decide) -> KnowledgeRate:
    n = len(predictions)
    for name, seq in (("truths", truths), ("entities", entities), ("queries", queries)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name}: has {len(seq)} records for {n} predictions")
    if n == 0:
        raise ValueError("predictions: no answers to judge")
    labels, sims, nli = [], [], []
    for i in range(n):
        query = None if queries is None else queries[i]
        ents = _entities(entities[i], query, f"entities[{i}]")
        sim = entity_similarity(predictions[i], entities[i], query=query)
        # ReLearn's directions: forget checks the answer against the truth, retain the
        # truth against the answer.
        premise, hypothesis = ((predictions[i], truths[i]) if forget
                               else (truths[i], predictions[i]))
        label = _judge(judge, premise, hypothesis, i)
        labels.append(bool(decide(sim, len(ents), label)))
        sims.append(sim)
        nli.append(label)
    name = "entity-only" if judge is None else (
        judge_name or getattr(judge, "__name__", type(judge).__name__))
    return KnowledgeRate(rate=sum(labels) / n, labels=tuple(labels),
                         entity_similarity=tuple(sims), nli=tuple(nli), judge=name)


def knowledge_forgetting_rate(predictions: Sequence[str], truths: Sequence[str],
                              entities: Sequence[Sequence[str]], *,
                              judge: NLIJudge | None = None, judge_name: str | None = None,
                              queries: Sequence[str] | None = None, threshold: float = 0.3,
                              few_entities: int = 3,
                              few_entities_threshold: float = 0.5) -> KnowledgeRate:
    """KFR: an answer is forgotten if the judge finds a contradiction with the truth or
    its entity similarity is <= ``threshold`` (<= ``few_entities_threshold`` when the
    truth has at most ``few_entities`` entities), as ReLearn's ``compute_kfr``.

    The judge is called as ``judge(premise=answer, hypothesis=truth)``.
    """
    def decide(sim, num_entities, label):
        limit = few_entities_threshold if num_entities <= few_entities else threshold
        return label == "contradiction" or sim <= limit

    return _knowledge_rate(predictions, truths, entities, queries, judge, judge_name,
                           True, decide)


def knowledge_retention_rate(predictions: Sequence[str], truths: Sequence[str],
                             entities: Sequence[Sequence[str]], *,
                             judge: NLIJudge | None = None, judge_name: str | None = None,
                             queries: Sequence[str] | None = None,
                             threshold: float = 0.3) -> KnowledgeRate:
    """KRR: an answer is kept if the judge finds no contradiction and its entity
    similarity is >= ``threshold``, as ReLearn's ``compute_krr``.

    The judge is called as ``judge(premise=truth, hypothesis=answer)``.
    """
    def decide(sim, num_entities, label):
        return label != "contradiction" and sim >= threshold

    return _knowledge_rate(predictions, truths, entities, queries, judge, judge_name,
                           False, decide)
