"""Neighbourhood membership attack (Mattern et al., Findings of ACL 2023) on forget sequences.

A model that was trained on ``x`` gives it a loss out of line with that of ``x``'s
*neighbours* ``x~``: the paper's statistic is the signed difference

``d(x) = L(x) - (1/K) sum_k L(x~_k)``,  ``L = -(1/|y|) sum_t log p(y_t | y_<t, context)``

and ``x`` is called a member when ``d(x) < gamma``: trained text is *more* likely than
its neighbours. ``neighbourhood_score`` returns ``-d(x)`` (this package's MIA sign
convention, higher = more likely a member, ``eval.mia``), so the attack AUC of forget vs
never-seen sequences of the same kind (``eval.mia.auc``) is the paper's; 0.5 =
indistinguishable. A forget sequence pushed far *below* its neighbours (over-unlearned)
scores as a non-member here, as in the paper. ``L`` is per-token averaged (the LM loss
Mattern et al. and mimir use), which also keeps neighbours of another length comparable;
it is taken over the target tokens only (answer, canary secret or document;
``eval.sequence_memorization``), the context is never perturbed.

What differs from the paper: the neighbours. Mattern et al. (code:
justusmattern27/neighbour-mia) generate them with a masked LM (BERT): dropout p = 0.7 on
one token's input embedding, the top-10 MLM candidates for it scored by
``p(cand) / (1 - p(orig))``, and the 100 best single-word substitutions kept. Here they
are made offline from the benchmark's own vocabulary (:class:`VocabularyPerturber`: a
name for a name, a number for a number, a word for a word, ``swaps`` units at random),
10 per sequence by default, or by any user ``Perturber``: no second model, and swaps
that stay in the benchmark's distribution, but not the MLM's "most plausible" neighbours.
Shapes: N sequences, K neighbours each.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.eval import mia, sequence_memorization

# text, rng -> a neighbour of text (must differ from it)
Perturber = Callable[[str, np.random.Generator], str]

_WORD = re.compile(r"(?<!\S)[A-Za-z][A-Za-z'-]{2,}[A-Za-z](?=[.,;:!?)\"]*(?!\S))")
_TOKEN = re.compile(r"\S+")
_DIGITS, _UPPER, _LOWER = "0123456789", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"


def _content_words(text: str) -> list[str]:
    """Whole alphabetic words of >= 4 letters (trailing punctuation allowed): the words a
    neighbour may swap. Short function words and pieces of e-mails or codes are not."""
    return _WORD.findall(text)


def _is_code(token: str) -> bool:
    """A secret-like token: contains a digit (PINs, codes, phone numbers, dates' years)."""
    return any(c.isdigit() for c in token)


def _redraw(code: str, rng: np.random.Generator) -> str:
    """Every digit / upper / lower letter redrawn from its own class; layout kept."""
    out = []
    for c in code:
        pool = (_DIGITS if c.isdigit() else _UPPER if c in _UPPER
                else _LOWER if c in _LOWER else None)
        out.append(c if pool is None else pool[int(rng.integers(len(pool)))])
    return "".join(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VocabularyPerturber:
    """Swaps ``swaps`` units of a text for others of the same kind.

    Units: occurrences of a known phrase of some kind (``phrases[kind]``, e.g. the
    benchmark's facts by topic, or names), replaced by another phrase of that kind; tokens
    with a digit (numbers, codes), whose characters are redrawn class by class; other
    words, replaced by a vocabulary word of the same capitalisation.

    Attributes:
      phrases: kind -> interchangeable phrases (each kind needs >= 2).
      words: lower-case vocabulary words; capitalised: capitalised ones.
      swaps: units replaced per neighbour (>= 1).
    """

    phrases: Mapping[str, tuple[str, ...]]
    words: tuple[str, ...]
    capitalised: tuple[str, ...]
    swaps: int = 1

    def __post_init__(self):
        if isinstance(self.swaps, bool) or not isinstance(self.swaps, int) or self.swaps < 1:
            raise ValueError(f"VocabularyPerturber.swaps must be an integer >= 1, "
                             f"got {self.swaps!r}")
        clean = {k: tuple(sorted({p for p in v if p.strip()})) for k, v in self.phrases.items()}
        object.__setattr__(self, "phrases", {k: v for k, v in clean.items() if len(v) >= 2})
        object.__setattr__(self, "words", tuple(sorted(set(self.words))))
        object.__setattr__(self, "capitalised", tuple(sorted(set(self.capitalised))))

    @classmethod
    def from_records(cls, records: Iterable[Mapping], *, swaps: int = 1) -> "VocabularyPerturber":
        """Vocabulary of a benchmark: the ``k``-th fact of each ``topic`` as one kind (a
        topic's facts may differ in kind: a date, then a place), ``name`` s, and the
        content words of every question, answer, paraphrase, perturbed answer and text."""
        phrases: dict[str, set[str]] = {}
        words, caps = set(), set()
        for r in records:
            if r.get("name"):
                phrases.setdefault("name", set()).add(r["name"])
            for k, fact in enumerate(r.get("facts") or ()):
                if r.get("topic"):
                    phrases.setdefault(f"topic:{r['topic']}:{k}", set()).add(fact)
            texts = [r.get(k) for k in ("question", "answer", "paraphrased_answer", "text",
                                        "prefix")]
            texts += list(r.get("perturbed_answer") or ())
            for t in texts:
                if isinstance(t, str):
                    for w in _content_words(t):
                        (caps if w[0].isupper() else words).add(w)
        return cls(phrases={k: tuple(v) for k, v in phrases.items()}, words=tuple(words),
                   capitalised=tuple(caps), swaps=swaps)

    def _units(self, text: str) -> list[tuple[int, int, str]]:
        """Non-overlapping ``(start, end, kind)`` spans, phrases (longest first) before tokens."""
        taken = np.zeros(len(text) + 1, bool)
        units = []
        for kind, pool in sorted(self.phrases.items()):
            for p in sorted(pool, key=len, reverse=True):
                for m in re.finditer(rf"(?<!\w){re.escape(p)}(?!\w)", text):
                    if not taken[m.start():m.end()].any():
                        taken[m.start():m.end()] = True
                        units.append((m.start(), m.end(), kind))
        for m in _TOKEN.finditer(text):
            if _is_code(m.group(0)) and not taken[m.start():m.end()].any():
                taken[m.start():m.end()] = True
                units.append((m.start(), m.end(), "code"))
        for m in _WORD.finditer(text):  # the same words _content_words finds
            pool = self.capitalised if m.group(0)[0].isupper() else self.words
            if len(pool) >= 2 and not taken[m.start():m.end()].any():
                units.append((m.start(), m.end(), "word"))
        return sorted(units)

    def _replacement(self, original: str, kind: str, rng: np.random.Generator) -> str:
        if kind == "code":
            return _redraw(original, rng)
        pool = (self.phrases[kind] if kind in self.phrases else
                self.capitalised if original[0].isupper() else self.words)
        choices = [p for p in pool if p != original]
        return choices[int(rng.integers(len(choices)))]

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        units = self._units(text)
        if not units:
            raise ValueError(f"text: nothing to perturb in {text!r:.80}")
        for _ in range(20):  # a redrawn code can come out unchanged; try again
            pick = sorted(rng.choice(len(units), size=min(self.swaps, len(units)), replace=False))
            out, last = [], 0
            for i in pick:
                start, end, kind = units[i]
                out += [text[last:start], self._replacement(text[start:end], kind, rng)]
                last = end
            new = "".join(out) + text[last:]
            if new != text:
                return new
        raise ValueError(f"text: could not make a neighbour different from {text!r:.80}")


def neighbour_records(record: Mapping, perturber: Perturber, k: int,
                      rng: np.random.Generator) -> list[dict]:
    """``k`` neighbours of a QA record (answer perturbed), a canary (secret perturbed,
    prefix kept) or a document (text perturbed); the context is never changed."""
    out = []
    for _ in range(k):
        if "prefix" in record and "secret" in record:
            secret = perturber(record["secret"], rng)
            out.append({"prefix": record["prefix"], "secret": secret,
                        "text": record["prefix"] + secret})
        elif "answer" in record:
            out.append({"question": record["question"],
                        "answer": perturber(record["answer"], rng)})
        else:
            out.append({"text": perturber(record["text"], rng)})
    return out


def neighbourhood_score(logprob, neighbour_logprob) -> np.ndarray:
    """``-d(x) = l(x) - mean_k l(x~_k)`` with ``l = -L`` the per-token log-prob:
    Mattern et al.'s statistic, sign flipped to higher = member. ``[N], [N, K] -> [N]``."""
    lp = np.asarray(logprob, np.float64)
    nb = np.asarray(neighbour_logprob, np.float64)
    if lp.ndim != 1 or nb.ndim != 2 or nb.shape[0] != lp.shape[0] or nb.shape[1] < 1:
        raise ValueError(f"neighbour_logprob: expected [N, K>=1] with N = {lp.shape}, "
                         f"got {nb.shape}")
    return lp - nb.mean(axis=1)


class NeighbourhoodScores(NamedTuple):
    """``score`` ``[N]`` (:func:`neighbourhood_score`, higher = member); ``logprob`` ``[N]``
    and ``neighbour_logprob`` ``[N, K]`` (per-token averaged log-probs of the targets and
    their neighbours)."""

    score: np.ndarray
    logprob: np.ndarray
    neighbour_logprob: np.ndarray


def neighbourhood_scores(model, tokenizer, records: Sequence[Mapping], *,
                         perturber: Perturber, num_neighbours: int = 10, seed: int = 0,
                         max_len: int = 256, batch_size: int = 32) -> NeighbourhoodScores:
    """Scores N records against ``num_neighbours`` neighbours each (record ``i``'s
    neighbours are drawn from ``default_rng([seed, i])``)."""
    if isinstance(num_neighbours, bool) or not isinstance(num_neighbours, int) \
            or num_neighbours < 1:
        raise ValueError(f"num_neighbours: expected an integer >= 1, got {num_neighbours!r}")
    records = list(records)
    nbrs = [r for i, rec in enumerate(records) for r in
            neighbour_records(rec, perturber, num_neighbours, np.random.default_rng([seed, i]))]
    seqmem = sequence_memorization
    kw = dict(pad_id=batch_lib.pad_id(tokenizer), batch_size=batch_size)
    own = seqmem.memorization_scores(
        model, seqmem.encode_targets(tokenizer, records, max_len=max_len, truncate=True), **kw)
    other = seqmem.memorization_scores(
        model, seqmem.encode_targets(tokenizer, nbrs, max_len=max_len, truncate=True,
                                     split="neighbour"), **kw)
    nb = other.mean_logprob.reshape(len(records), num_neighbours)
    return NeighbourhoodScores(neighbourhood_score(own.mean_logprob, nb), own.mean_logprob, nb)


class NeighbourhoodAttack(NamedTuple):
    """AUC of forget (members) vs never-seen (non-members) and both sides' scores."""

    auc: float
    forget: NeighbourhoodScores
    never_seen: NeighbourhoodScores


def neighbourhood_attack(model, tokenizer, forget_records: Sequence[Mapping],
                         never_seen_records: Sequence[Mapping], *, perturber: Perturber,
                         num_neighbours: int = 10, seed: int = 0, max_len: int = 256,
                         batch_size: int = 32) -> NeighbourhoodAttack:
    """The attack of the module doc; ``auc`` from ``eval.mia.auc`` (forget = members)."""
    kw = dict(perturber=perturber, num_neighbours=num_neighbours, max_len=max_len,
              batch_size=batch_size)
    f = neighbourhood_scores(model, tokenizer, forget_records, seed=seed, **kw)
    n = neighbourhood_scores(model, tokenizer, never_seen_records, seed=seed + 1, **kw)
    return NeighbourhoodAttack(auc=mia.auc(f.score, n.score), forget=f, never_seen=n)
