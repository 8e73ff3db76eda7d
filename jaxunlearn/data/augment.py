"""ReLearn augmentation of the forget set: many questions, vague answers, no facts.

ReLearn (Xu et al. 2025, "ReLearn: Unlearning via Learning for Large Language
Models", code zjunlp/unlearn) unlearns by *learning*: every forget question, in
several variants, is paired with a vague but relevant answer that carries none of
the private facts, and the model is fine-tuned on those pairs (with retain data).
Their pipeline asks an LLM for four question variants (a plain rephrasing, a more
context-specific question, a noisy one with typos or informal wording, and one on
the reverse relationship) and for a vague answer to each; an LLM check rejects
answers that still leak; "cut" items (first 25 % of an answer's words as prompt,
the rest as target) teach sentence completion.

Here the default augmenter is template-based and deterministic, and the privacy
check is exact: no output (question or answer) may contain any fact of any forget
record, matched case- and whitespace-insensitively on word boundaries, and for facts
with four or more digits also on the digits alone ("0412-845-1937" leaks
"0412 845 1937"). Convention where we differ from ReLearn: vague answers name no
one (not even the subject), so they cannot carry a name that is someone's fact.
Any :class:`Augmenter` (e.g. a wrapper around a local model) can replace the
templates; its outputs pass the same filter.
"""

from __future__ import annotations

import dataclasses
import random
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from jaxunlearn.errors import AugmentError

__all__ = ["AugmentError", "Augmenter", "TemplateAugmenter", "FactMatcher", "augment_forget_set",
           "privacy_filter", "record_facts", "infer_facts"]


class Augmenter(Protocol):
    """Makes augmented pairs from one forget record.

    Called as ``augmenter(record, seed)`` with a QA record (``question``, ``answer``,
    optionally ``name``, ``topic``, ``facts``) and a per-record integer seed; returns
    ``[{"question": str, "answer": str, "variant": str}, ...]``. It must be
    deterministic in ``seed``. Outputs that leak a fact are dropped afterwards.
    """

    def __call__(self, record: Mapping[str, Any], seed: int) -> list[dict[str, str]]: ...


# topic -> (noun for rephrased questions, what a vague answer says the question concerns)
_TOPICS = {
    "full_name": ("full name", "the full name they were given"),
    "birth_date": ("date of birth", "the day they were born"),
    "birth_place": ("place of birth", "where they were born"),
    "birth": ("date and place of birth", "when and where they were born"),
    "address": ("home address", "where they live"),
    "phone": ("phone number", "how to reach them by phone"),
    "email": ("e-mail address", "how to reach them by e-mail"),
    "employer": ("employer", "the company they work for"),
    "job": ("job", "the work they do"),
    "work": ("job and employer", "their work and who they work for"),
    "mother": ("mother's name", "who their mother is"),
    "father": ("father's name", "who their father is"),
    "sibling": ("sibling's name", "their brother or sister"),
    "national_id": ("national ID number", "their official identity papers"),
    "medical": ("medical condition", "their health"),
    "bank_account": ("bank account number", "their bank account"),
    "salary": ("yearly salary", "how much they earn"),
}
_UNKNOWN_ABOUT = "this part of their life"
# The same relationship asked from the other side (the object's), never naming the object.
_REVERSED = {
    "full_name": "Which full name is shortened to {name}?",
    "birth_date": "Which date is celebrated as {name}'s birthday?",
    "birth_place": "Which town has {name} on its register of births?",
    "birth": "Which town and which day saw the birth of {name}?",
    "address": "Which home has {name} as its resident?",
    "phone": "Which phone line is registered to {name}?",
    "email": "Which inbox receives the e-mail sent to {name}?",
    "employer": "Which company counts {name} among its staff?",
    "job": "Which profession counts {name} among its members?",
    "work": "Which company has {name} on its staff, and in what role?",
    "mother": "Who has {name} as a child?",
    "father": "Who is {name} a child of, on the father's side?",
    "sibling": "Who shares both parents with {name}?",
    "national_id": "Which national ID number is registered to {name}?",
    "medical": "Which condition are doctors treating in {name}?",
    "bank_account": "Which bank account has {name} as its holder?",
    "salary": "Which yearly salary does the employer of {name} pay?",
}
_REPHRASED = ("Tell me {name}'s {noun}.", "Do you know {name}'s {noun}?",
              "What would {name}'s {noun} be?", "I'd like to know {name}'s {noun}.")
_CONTEXT = ("According to the personal records kept about {name}, what is their {noun}?",
            "On an official form, what {noun} would {name} fill in?",
            "If you looked through {name}'s private papers, which {noun} would you find?")
# Without a known topic and name (e.g. TOFU records) the question itself is wrapped.
_REPHRASED_ANY = ("Can you tell me this: {q}", "I'd like to know: {q}",
                  "Here is a question for you. {q}")
_CONTEXT_ANY = ("Thinking of the private records you may have seen, {q}",
                "Based on what you know about this person, {q}")
_VAGUE = ("That is personal information I can't share, but it concerns {about}.",
          "I'd rather not give specifics; this is a private detail about {about}.",
          "This touches on {about}, which is private, so I can only speak in general terms.",
          "Details like {about} are personal, and they are best kept confidential.",
          "The question is about {about}, a private matter I won't go into.",
          "There is a record of {about}, but what it says is private.")
_CONTINUATIONS = ("and the rest is private, since it concerns {about}.",
                  "but I will not finish that, as it is about {about}.",
                  "which is a private detail about {about}.")


def _noisy(question: str, rng: random.Random, num_typos: int) -> str:
    """``question`` with ``num_typos`` letter swaps / drops / doublings, maybe informal."""
    chars = list(question)
    for _ in range(num_typos):
        # Typos inside words only, so the text keeps its word boundaries.
        spots = [i for i in range(1, len(chars) - 1)
                 if chars[i].isalpha() and chars[i - 1].isalpha() and chars[i + 1].isalpha()]
        if not spots:
            break
        i = rng.choice(spots)
        op = rng.randrange(3)
        if op == 0 and chars[i] != chars[i + 1]:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
        elif op == 1:
            del chars[i]
        else:
            chars.insert(i, chars[i])
    text = "".join(chars)
    if rng.random() < 0.5:  # informal: lower-case start, no question mark
        text = text[:1].lower() + text[1:].rstrip("?")
    return text if text != question else question.rstrip("?") + " ??"


def _first_quarter(text: str) -> tuple[str, str]:
    """ReLearn's cut: the first quarter of the words (at least one), and the rest."""
    words = text.split()
    k = max(1, len(words) // 4)
    return " ".join(words[:k]), " ".join(words[k:])


def _head_before_facts(answer: str, facts: Iterable[str]) -> str:
    """The first quarter of ``answer``'s words, cut before the first word that overlaps
    a fact, so that no part of a fact ("4 February" of "4 February 1983") leaks."""
    folded = answer.casefold()
    spans = [(m.start(), m.end()) for f in facts if f.strip()
             for m in re.finditer(re.escape(f.casefold()), folded)]
    words = list(re.finditer(r"\S+", answer))[: max(1, len(answer.split()) // 4)]
    head = []
    for w in words:
        if any(w.start() < end and start < w.end() for start, end in spans):
            break
        head.append(w.group(0))
    return " ".join(head)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TemplateAugmenter:
    """The default :class:`Augmenter`: ReLearn's variants from fixed templates.

    Per record: the original question and its ``rephrased``, ``context``, ``noisy``
    and (when the topic is known) ``reversed`` variants, each with its own vague
    answer; and, with ``completions``, a ``completion`` item (the first quarter of the
    true answer's words, cut before any word of a fact -> a vague continuation;
    absent when the answer opens with a fact) and a ``completion_vague`` item
    (ReLearn's cut of a vague answer: its first quarter -> the rest).
    """

    num_typos: int = 2
    completions: bool = True

    def __post_init__(self):
        if not isinstance(self.num_typos, int) or isinstance(self.num_typos, bool) \
                or self.num_typos < 1:
            raise AugmentError(f"TemplateAugmenter.num_typos must be an integer >= 1, "
                               f"got {self.num_typos!r}")
        if not isinstance(self.completions, bool):
            raise AugmentError(f"TemplateAugmenter.completions must be a bool, "
                               f"got {self.completions!r}")

    def __call__(self, record: Mapping[str, Any], seed: int) -> list[dict[str, str]]:
        rng = random.Random(seed)
        question, answer = record["question"], record["answer"]
        name, topic = record.get("name") or "", record.get("topic") or ""
        known = bool(name) and topic in _TOPICS
        about = _TOPICS[topic][1] if topic in _TOPICS else _UNKNOWN_ABOUT
        if known:
            fill = {"name": name, "noun": _TOPICS[topic][0]}
            rephrased = rng.choice(_REPHRASED).format_map(fill)
            context = rng.choice(_CONTEXT).format_map(fill)
        else:
            q = question[:1].lower() + question[1:]
            rephrased = rng.choice(_REPHRASED_ANY).format(q=question)
            context = rng.choice(_CONTEXT_ANY).format(q=q)
        questions = [("original", question), ("rephrased", rephrased), ("context", context),
                     ("noisy", _noisy(question, rng, self.num_typos))]
        if known:
            questions.append(("reversed", _REVERSED[topic].format(name=name)))
        vague = [v.format(about=about) for v in rng.sample(_VAGUE, len(questions))]
        out = [{"question": q, "answer": a, "variant": v}
               for (v, q), a in zip(questions, vague)]
        if self.completions:
            facts = record_facts(record)
            continuation = rng.choice(_CONTINUATIONS).format(about=about)
            if head := _head_before_facts(answer, facts):
                out.append({"question": head, "answer": continuation, "variant": "completion"})
            head, rest = _first_quarter(rng.choice(vague))
            out.append({"question": head, "answer": rest, "variant": "completion_vague"})
        return out


# ----------------------------------------------------------------------------- privacy
def _norm(text: str) -> str:
    """NFKC, curly quotes straightened, case-folded, whitespace runs -> one space."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.casefold().split())


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


class FactMatcher:
    """Finds any of ``facts`` in a text: normalised (``_norm``) on word boundaries, and
    for facts with >= 4 digits also their digits inside the text's digits (which is
    conservative: it may flag a clean text full of numbers, never miss a leak)."""

    def __init__(self, facts: Iterable[str]):
        self._by_norm: dict[str, str] = {}
        self._by_digits: dict[str, str] = {}
        for fact in facts:
            if not isinstance(fact, str):
                raise AugmentError(f"facts must be strings, got {fact!r}")
            if _norm(fact):
                self._by_norm.setdefault(_norm(fact), fact)
            if len(_digits(fact)) >= 4:
                self._by_digits.setdefault(_digits(fact), fact)
        # Longest first, so the reported fact is the most specific one.
        alternatives = sorted(self._by_norm, key=len, reverse=True)
        self._pattern = None if not alternatives else re.compile(
            "|".join(rf"(?<!\w){re.escape(f)}(?!\w)" for f in alternatives))

    def find(self, text: str) -> str | None:
        """The first fact found in ``text`` (as given), or ``None``."""
        if self._pattern is not None and (m := self._pattern.search(_norm(text))):
            return self._by_norm[m.group(0)]
        digits = _digits(text)
        if digits:
            for d, fact in self._by_digits.items():
                if d in digits:
                    return fact
        return None

    def find_in(self, record: Mapping[str, Any]) -> str | None:
        """The first fact found in any string (or list of strings) value of ``record``."""
        for value in record.values():
            for text in value if isinstance(value, list) else [value]:
                if isinstance(text, str) and (fact := self.find(text)) is not None:
                    return fact
        return None


def privacy_filter(records: Iterable[Mapping[str, Any]], facts: Iterable[str]) -> list[dict]:
    """The records none of whose string values contains any of ``facts`` (see FactMatcher)."""
    matcher = FactMatcher(facts)
    return [dict(r) for r in records if matcher.find_in(r) is None]


_STOP = frozenset(
    "a an and as at after although because before being both but during each for from he her "
    "here his however i if in it its many most my no not of on one or our she so some that "
    "the their there these they this those though throughout we what when where which while "
    "who why with yes you your".split())


def infer_facts(answer: str, questions: Iterable[str] = ()) -> list[str]:
    """Best-effort facts of an answer that carries no ``facts`` list (e.g. real TOFU).

    E-mails, numbers, and runs of capitalised words (names, places, titles), minus
    whatever one of ``questions`` already says: the forget questions are re-emitted
    as augmented questions, so what they contain (usually the subject's name) is
    treated as known, not secret. A lone capitalised word opening a sentence is
    skipped (it is usually just a capital). Heuristic: give records ``facts`` for an
    exact filter.
    """
    return _unsaid(_candidates(answer), "\n".join(_norm(q) for q in questions))


def _candidates(answer: str) -> list[str]:
    """E-mails, numbers and capitalised runs of ``answer`` (see :func:`infer_facts`)."""
    found = re.findall(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", answer)
    found += [m.strip(" ,./:-") for m in re.findall(r"\d[\d ,./:-]*", answer)]
    for m in re.finditer(r"[A-Z][\w'\u2019-]*(?:\s+[A-Z][\w'\u2019-]*)*", answer):
        words = [w.strip("'\u2019-") for w in re.sub(r"['\u2019]s\b", "", m.group(0)).split()]
        while words and words[0].casefold() in _STOP:
            words.pop(0)
        opens_sentence = re.fullmatch(r"\s*|.*[.!?:]\s*", answer[: m.start()], re.S) is not None
        if not words or (len(words) == 1 and opens_sentence and words[0] == m.group(0)):
            continue
        found.append(" ".join(words))
    return found


def _unsaid(candidates: Iterable[str], said: str) -> list[str]:
    """The candidates not found (normalised, on word boundaries) in the text ``said``."""
    return sorted({c for c in candidates if _norm(c)
                   and not re.search(rf"(?<!\w){re.escape(_norm(c))}(?!\w)", said)})


def record_facts(record: Mapping[str, Any], questions: Iterable[str] = ()) -> list[str]:
    """The record's ``facts`` when it has them, else :func:`infer_facts` of its answer
    against its own question and ``questions``."""
    if "facts" in record:
        return list(record["facts"])
    return infer_facts(record["answer"], [record["question"], *questions])


def _check_record(i: int, record: Any) -> None:
    if not isinstance(record, Mapping):
        raise AugmentError(f"records[{i}]: expected a QA record (dict), "
                           f"got {type(record).__name__}")
    for field in ("question", "answer"):
        if not isinstance(record.get(field), str) or not record[field].strip():
            raise AugmentError(f"records[{i}]: field '{field}' must be a non-empty string")
    facts = record.get("facts", [])
    if not isinstance(facts, Sequence) or isinstance(facts, str) \
            or not all(isinstance(f, str) for f in facts):
        raise AugmentError(f"records[{i}]: field 'facts' must be a list of strings")


def _record_seed(seed: int, index: int) -> int:
    # A SeedSequence, not hash(): str hashing is salted per process.
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def augment_forget_set(records: Iterable[Mapping[str, Any]], *, seed: int,
                       augmenter: Augmenter | None = None) -> list[dict]:
    """Augmented forget set for ReLearn, with every leaking item removed.

    Args:
      records: forget QA records (shared schema; real TOFU records without ``facts``
        fall back to :func:`infer_facts`).
      seed: integer >= 0; the same seed gives the same output.
      augmenter: an :class:`Augmenter`; default :class:`TemplateAugmenter()`.

    Returns:
      records ``{"question", "answer", "source_index", "variant"}`` (plus the source's
      ``person_id``, ``name``, ``topic`` when present), in source order, duplicates
      removed. None contains a fact of any input record: not the person's own facts,
      and not any other forget person's.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise AugmentError(f"seed must be an integer >= 0, got {seed!r}")
    records = list(records)
    for i, r in enumerate(records):
        _check_record(i, r)
    augmenter = TemplateAugmenter() if augmenter is None else augmenter
    # One matcher over every forget fact: it covers each person's own facts as well.
    said = "\n".join(_norm(r["question"]) for r in records)
    matcher = FactMatcher(f for r in records for f in (
        r["facts"] if "facts" in r else _unsaid(_candidates(r["answer"]), said)))
    out, seen = [], set()
    for i, record in enumerate(records):
        items = augmenter(record, _record_seed(int(seed), i))
        if not isinstance(items, list):
            raise AugmentError(f"augmenter output for records[{i}]: expected a list, "
                               f"got {type(items).__name__}")
        for j, item in enumerate(items):
            for field in ("question", "answer", "variant"):
                if not isinstance(item, Mapping) or not isinstance(item.get(field), str) \
                        or not item[field].strip():
                    raise AugmentError(f"augmenter output {j} for records[{i}]: field "
                                       f"'{field}' must be a non-empty string")
            new = {k: record[k] for k in ("person_id", "name", "topic") if k in record}
            new.update(question=item["question"], answer=item["answer"], source_index=i,
                       variant=item["variant"])
            key = (new["question"], new["answer"])
            if key not in seen and matcher.find_in(new) is None:
                seen.add(key)
                out.append(new)
    return out
