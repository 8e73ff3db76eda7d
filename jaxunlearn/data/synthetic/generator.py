"""Drawing the benchmark: fictitious people and their private facts, QA records with
paraphrased and perturbed answers, world facts, biographies and canaries.

Everything is drawn from one integer seed through ``numpy.random.Generator(PCG64)``
streams (never global RNG state, never the salted ``hash()``), one stream per component,
so the same seed gives byte-identical files and changing one count leaves the other
components' draws alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import numpy as np

from jaxunlearn import __version__
from jaxunlearn.data.schema import FORGET_FRACTION, RETAIN_OF
from jaxunlearn.data.synthetic.benchmark import GENERATOR, Benchmark, encode_files, fact_tables
from jaxunlearn.data.synthetic.vocabulary import (
    BIOGRAPHY_SENTENCES, CANARY_FORMATS, CANARY_OWNERS, CANARY_PREFIXES, FIRST_NAMES,
    IDK_ANSWERS, LAST_NAMES, MAX_CANARIES, MAX_PEOPLE, MAX_WORLD_FACTS, MIDDLE_NAMES,
    PERSON_FIELDS, PERSON_TOPICS, QUESTIONS_PER_TOPIC, Topic, derived, draw_value, pick,
    sample_secret, world_entities, wrong_value)
from jaxunlearn.errors import BenchmarkError

__all__ = ["SyntheticConfig", "generate"]

# One independent stream per component: changing one count leaves the others' draws alone.
_PEOPLE, _SPLIT, _QA, _WORLD, _CANARY, _BIO = range(1, 7)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """What to generate. ``num_holdout_people=None`` means 10 % of ``num_people`` (at least 2);
    ``num_heldout_canaries=None`` means as many as there are forget canaries."""

    num_people: int = 100
    num_holdout_people: int | None = None
    qa_per_person: int = 20
    num_world_facts: int = 100
    canary_repetitions: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    canaries_per_repetition: int = 2
    num_heldout_canaries: int | None = None
    num_perturbed: int = 3
    seed: int = 0

    def __post_init__(self):
        def need(field: str, ok: bool, what: str):
            if not ok:
                raise BenchmarkError(f"SyntheticConfig.{field} must be {what}, got "
                                     f"{getattr(self, field)!r}")

        def is_int(v):
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        reps = self.canary_repetitions
        need("canary_repetitions", isinstance(reps, (tuple, list)) and len(reps) > 0
             and all(is_int(r) and r >= 1 for r in reps) and len(set(reps)) == len(reps),
             "a non-empty sequence of distinct integers >= 1")
        object.__setattr__(self, "canary_repetitions", tuple(int(r) for r in reps))
        need("num_people", is_int(self.num_people) and self.num_people >= 2, "an integer >= 2")
        if self.num_holdout_people is None:
            object.__setattr__(self, "num_holdout_people", max(2, round(0.1 * self.num_people)))
        need("num_holdout_people", is_int(self.num_holdout_people) and self.num_holdout_people >= 1,
             "an integer >= 1 (or None)")
        need("num_people", self.num_people + self.num_holdout_people <= MAX_PEOPLE,
             f"at most {MAX_PEOPLE} - num_holdout_people (the name pools would run out)")
        most = len(PERSON_TOPICS) * QUESTIONS_PER_TOPIC
        need("qa_per_person", is_int(self.qa_per_person) and 1 <= self.qa_per_person <= most,
             f"an integer in [1, {most}]")
        need("num_world_facts", is_int(self.num_world_facts)
             and 1 <= self.num_world_facts <= MAX_WORLD_FACTS,
             f"an integer in [1, {MAX_WORLD_FACTS}]")
        need("canaries_per_repetition", is_int(self.canaries_per_repetition)
             and self.canaries_per_repetition >= 1, "an integer >= 1")
        n_forget = len(reps) * self.canaries_per_repetition
        if self.num_heldout_canaries is None:
            object.__setattr__(self, "num_heldout_canaries", n_forget)
        need("num_heldout_canaries", is_int(self.num_heldout_canaries)
             and self.num_heldout_canaries >= n_forget,
             f"an integer >= the number of forget canaries ({n_forget})")
        need("num_heldout_canaries", 2 * n_forget + self.num_heldout_canaries <= MAX_CANARIES,
             f"small enough for {MAX_CANARIES} canaries in all")
        need("num_perturbed", is_int(self.num_perturbed) and 3 <= self.num_perturbed <= 8,
             "an integer in [3, 8]")
        need("seed", is_int(self.seed) and self.seed >= 0, "an integer >= 0")
        for field in ("num_people", "num_holdout_people", "qa_per_person", "num_world_facts",
                      "canaries_per_repetition", "num_heldout_canaries", "num_perturbed", "seed"):
            object.__setattr__(self, field, int(getattr(self, field)))  # numpy ints -> JSON



def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))



def _people(config: SyntheticConfig, seed: int) -> list[dict[str, str]]:
    """Every person's fact table; names (person and relatives) are unique across the set."""
    rng = _rng(seed, _PEOPLE)
    used: set[tuple[str, str]] = set()

    def fresh(last: str | None = None) -> tuple[str, str]:
        # MAX_PEOPLE keeps the pairs at most half used, so a free one turns up fast; a
        # relative whose family name has run out of first names takes another family name.
        for attempt in range(10_000):
            first = pick(rng, FIRST_NAMES)  # drawn before the family name: the stream's order
            pair = (first, last if last and attempt < 200 else pick(rng, LAST_NAMES))
            if pair not in used:
                used.add(pair)
                return pair
        raise AssertionError("name pools exhausted")  # unreachable below MAX_PEOPLE

    people = []
    for _ in range(config.num_people + config.num_holdout_people):
        first, last = fresh()
        middle = pick(rng, MIDDLE_NAMES)
        person = {"name": f"{first} {last}", "first": first, "last": last,
                  "full_name": f"{first} {middle} {last}",
                  "mother": " ".join(fresh(last if rng.random() < 0.5 else None)),
                  "father": " ".join(fresh(last)), "sibling": " ".join(fresh(last))}
        for field in PERSON_FIELDS:
            if field not in person:
                person[field] = draw_value(field, rng, person)
        people.append(derived(person))
    return people


def _main_and_paraphrase(order: np.ndarray, k: int) -> tuple[int, int]:
    """Template indices for the ``k``-th record of a topic: its own form, and a
    paraphrase form taken from the end of ``order`` so that, while a topic is asked
    at most twice, the paraphrase is never another record's trained form."""
    n = len(order)
    p = (n - 1 - k) % n
    if p == k % n:
        p = (p + 1) % n
    return int(order[k % n]), int(order[p])


def _qa_record(topic: Topic, values: dict[str, str], rng: np.random.Generator, *,
               forms: tuple[int, int, int, int], num_perturbed: int, person_id: int,
               name: str) -> dict:
    """One QA record with question / paraphrased question / answer / paraphrased
    answer in the template ``forms``, and ``num_perturbed`` answers in the paraphrased
    answer's form with every fact replaced by a wrong one of the same kind (TOFU's
    perturbed answers perturb the paraphrase, so the truth ratio compares like forms)."""
    q, pq, a, pa = forms
    answer = topic.answers[a].format_map(values)
    paraphrased = topic.answers[pa].format_map(values)
    perturbed: list[str] = []
    seen = {answer, paraphrased}
    for _ in range(100 * num_perturbed):
        if len(perturbed) == num_perturbed:
            break
        fake = dict(values)
        for f in topic.fields:
            fake[f] = wrong_value(f, rng, values)
        text = topic.answers[pa].format_map(derived(fake))
        if text not in seen:
            seen.add(text)
            perturbed.append(text)
    assert len(perturbed) == num_perturbed, f"cannot perturb topic {topic.name}"
    return {"person_id": person_id, "name": name, "topic": topic.name,
            "question": topic.questions[q].format_map(values),
            "paraphrased_question": topic.questions[pq].format_map(values),
            "answer": answer, "paraphrased_answer": paraphrased, "perturbed_answer": perturbed,
            "idk_answer": pick(rng, IDK_ANSWERS), "facts": [values[f] for f in topic.fields]}


def _template_orders(topic: Topic, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.permutation(len(topic.questions)), rng.permutation(len(topic.answers))


def _forms(orders: tuple[np.ndarray, np.ndarray], k: int) -> tuple[int, int, int, int]:
    """(question, paraphrased question, answer, paraphrased answer) forms of the ``k``-th
    record of a topic, from that topic's template orders."""
    return (*_main_and_paraphrase(orders[0], k), *_main_and_paraphrase(orders[1], k))


def _person_qa(person: dict, pid: int, config: SyntheticConfig) -> list[dict]:
    """``qa_per_person`` records; topics in a random order, cycled if there are more."""
    rng = _rng(config.seed, _QA, pid)
    order = [PERSON_TOPICS[int(i)] for i in rng.permutation(len(PERSON_TOPICS))]
    # One pair of template orders per topic, so a topic asked twice uses two forms.
    orders = {t.name: _template_orders(t, rng) for t in order}
    records = []
    for i in range(config.qa_per_person):
        topic, k = order[i % len(order)], i // len(order)
        records.append(_qa_record(topic, person, rng, forms=_forms(orders[topic.name], k),
                                  num_perturbed=config.num_perturbed, person_id=pid,
                                  name=person["name"]))
    return records


def _biography(person: dict, pid: int, seed: int) -> dict:
    """A short paragraph stating every fact of the person, sentences in random order."""
    rng = _rng(seed, _BIO, pid)
    first, *rest = BIOGRAPHY_SENTENCES
    rest = [rest[int(i)] for i in rng.permutation(len(rest))]
    text = " ".join(pick(rng, forms).format_map(person) for forms in [first, *rest])
    return {"person_id": pid, "name": person["name"], "text": text}


def _world_facts(config: SyntheticConfig) -> list[dict]:
    rng = _rng(config.seed, _WORLD)
    pairs = [(topic, values) for values, topics in world_entities(rng) for topic in topics]
    chosen = [pairs[int(i)] for i in rng.permutation(len(pairs))[: config.num_world_facts]]
    return [_qa_record(topic, values, rng, forms=_forms(_template_orders(topic, rng), 0),
                       num_perturbed=config.num_perturbed, person_id=-1, name="")
            for topic, values in chosen]


def _canaries(config: SyntheticConfig) -> list[dict]:
    rng = _rng(config.seed, _CANARY)
    plan = [(r, s) for r in config.canary_repetitions for s in ("forget", "retain")
            for _ in range(config.canaries_per_repetition)]
    plan += [(0, "heldout")] * config.num_heldout_canaries
    formats = sorted(CANARY_FORMATS)
    owners = {f: iter(rng.permutation(len(CANARY_OWNERS))) for f in formats}
    secrets: set[str] = set()
    out = []
    for cid, (reps, split) in enumerate(plan):
        fmt = formats[cid % len(formats)]
        prefix = CANARY_PREFIXES[fmt].format(CANARY_OWNERS[int(next(owners[fmt]))])
        secret = sample_secret(CANARY_FORMATS[fmt], rng)
        while secret in secrets:
            secret = sample_secret(CANARY_FORMATS[fmt], rng)
        secrets.add(secret)
        out.append({"canary_id": cid, "format": fmt, "prefix": prefix, "secret": secret,
                    "text": prefix + secret, "repetitions": reps, "split": split})
    return out


def generate(config: SyntheticConfig = SyntheticConfig()) -> Benchmark:
    """Draw the whole benchmark from ``config.seed``; pure (no files), see ``write_benchmark``."""
    n = config.num_people
    people = _people(config, config.seed)
    qa = [_person_qa(p, pid, config) for pid, p in enumerate(people)]
    order = [int(i) for i in _rng(config.seed, _SPLIT).permutation(n)]
    splits: dict[str, tuple[dict, ...]] = {}
    for forget, retain in RETAIN_OF.items():
        # Prefixes of one permutation: forget01 ⊂ forget05 ⊂ forget10 by construction.
        ids = set(order[: max(1, round(FORGET_FRACTION[forget] * n))])
        splits[forget] = tuple(r for pid in sorted(ids) for r in qa[pid])
        splits[retain] = tuple(r for pid in range(n) if pid not in ids for r in qa[pid])
    splits["holdout"] = tuple(r for pid in range(n, len(people)) for r in qa[pid])
    splits["world_facts"] = tuple(_world_facts(config))
    bios = tuple(_biography(p, pid, config.seed) for pid, p in enumerate(people))
    canaries = tuple(_canaries(config))
    blobs = encode_files(splits, bios, canaries)
    manifest = {"seed": config.seed, "num_people": n,
                "num_holdout_people": config.num_holdout_people,
                "qa_per_person": config.qa_per_person,
                "canary_repetitions": list(config.canary_repetitions),
                "splits": {f: blob.count(b"\n") for f, blob in blobs.items()},
                "sha256": {f: hashlib.sha256(blob).hexdigest() for f, blob in blobs.items()},
                "generator": GENERATOR, "version": __version__}
    return Benchmark(splits=splits, biographies=bios, canaries=canaries, manifest=manifest,
                     fact_tables=fact_tables(splits))


