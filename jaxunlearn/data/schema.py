"""The benchmark layout: split and file names, record fields, and which retain split goes
with which forget split. Readers (``data.tofu``, ``data.synthetic``) and writers follow it.

A benchmark directory holds one JSON-lines file per split, named as the published TOFU
dataset's configs (Maini et al. 2024, hub id ``locuslab/TOFU``): ``forget01/05/10``
(1, 5 and 10 % of the people), their complements ``retain99/95/90``, ``holdout`` (people
never trained on), ``world_facts``; optionally ``<split>_perturbed`` companions holding
the evaluation answers (TOFU keeps them apart); and our ``biographies``, ``canaries``
and ``manifest.json`` (record counts and SHA-256 of every file).

Field checks return None when a value is fine, else one phrase saying what is wrong;
the reader adds the file, record and field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

__all__ = [
    "FORGET_FRACTION", "RETAIN_OF", "HOLDOUT", "WORLD_FACTS", "QA_SPLITS", "CANARY_SPLITS",
    "MANIFEST", "SUFFIXES", "REAL_AUTHORS", "OPTION_SPLITS", "TOFU_CONFIGS", "RETAIN_PERTURBED",
    "holdout_split_of", "FieldCheck", "RecordKind", "QA_FIELDS", "QA_REQUIRED", "NONBLANK",
    "CANARY_FIELDS", "BIOGRAPHY_FIELDS", "record_kind", "retain_split_of", "check_str",
    "check_int", "check_str_list", "MUSE_FIELDS",
]

# forget split -> the share of people it forgets; the one table of forget/retain pairs.
FORGET_FRACTION = {"forget01": 0.01, "forget05": 0.05, "forget10": 0.10}
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
HOLDOUT = "holdout"
WORLD_FACTS = "world_facts"
REAL_AUTHORS = "real_authors"
# Splits whose questions have no paraphrase: their truth ratio compares the answer itself
# with the perturbed answers, and their probability is normalised over those options
# (TOFU's ``eval_real_author_wo_options`` / ``eval_real_world_wo_options``).
OPTION_SPLITS = (REAL_AUTHORS, WORLD_FACTS)
# TOFU's published configs (hub id ``locuslab/TOFU``, one file ``<config>.json`` each, JSON
# lines, one split ``train``): question/answer files, and the ``_perturbed`` files holding
# paraphrased_answer / paraphrased_question / perturbed_answer (a list: 5 per question for
# forget/retain, 3 and no paraphrase for real authors and world facts).
TOFU_CONFIGS = ("full", "forget01", "forget05", "forget10", "forget01_perturbed",
                "forget05_perturbed", "forget10_perturbed", "retain90", "retain95", "retain99",
                "retain_perturbed", "real_authors", "real_authors_perturbed", "world_facts",
                "world_facts_perturbed", "holdout01", "holdout05", "holdout10")
RETAIN_PERTURBED = "retain_perturbed"


def holdout_split_of(forget: str) -> str:
    """TOFU's holdout config of the same size as ``forget`` (``forget10`` -> ``holdout10``)."""
    return HOLDOUT + forget[len("forget"):] if forget.startswith("forget") else HOLDOUT
# Every QA split of people a full benchmark holds, in file order.
QA_SPLITS = ("forget01", "forget05", "forget10", "retain90", "retain95", "retain99", HOLDOUT)
# The ``split`` field of a canary: trained and later forgotten, trained and kept, never seen.
CANARY_SPLITS = ("forget", "retain", "heldout")
MANIFEST = "manifest.json"
SUFFIXES = (".json", ".jsonl", ".parquet")  # file kinds a split may come in, in this order

FieldCheck = Callable[[Any], "str | None"]


def retain_split_of(forget: str) -> str | None:
    """The retain split that complements ``forget`` (``forget10`` -> ``retain90``), or None."""
    return RETAIN_OF.get(forget)


# --- field checks
def check_unicode(v: str) -> str | None:
    """A lone surrogate (JSON ``"\\ud800"``) is not text: tokenizers and UTF-8 writers fail on it."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"contains an unpaired surrogate {v[e.start]!r} at character {e.start} "
                "(not valid Unicode text)")
    return None


def check_str(v: Any) -> str | None:
    if not isinstance(v, str):
        return f"expected a string, got {type(v).__name__}"
    return check_unicode(v)


def check_int(v: Any) -> str | None:
    # bool is an int subclass in Python; a JSON true is not a person id.
    ok = isinstance(v, int) and not isinstance(v, bool)
    return None if ok else f"expected an integer, got {type(v).__name__}"


def check_str_list(*, nonempty: bool) -> FieldCheck:
    def check(v: Any) -> str | None:
        if not isinstance(v, list):
            return f"expected a list of strings, got {type(v).__name__}"
        if nonempty and not v:
            return "expected a non-empty list of strings, got []"
        for i, item in enumerate(v):
            if not isinstance(item, str) or not item.strip():
                return f"item {i} must be a non-empty string, got {item!r:.40}"
            if (problem := check_unicode(item)) is not None:
                return f"item {i} {problem}"
        return None

    return check


# QA records. Fields absent from real TOFU files are optional; present ones are typed.
QA_FIELDS: dict[str, FieldCheck] = {
    "person_id": check_int,
    "name": check_str,  # "" for world facts
    "topic": check_str,
    "question": check_str,
    "answer": check_str,
    "paraphrased_question": check_str,
    "paraphrased_answer": check_str,
    "perturbed_answer": check_str_list(nonempty=True),
    "idk_answer": check_str,
    "facts": check_str_list(nonempty=False),
}
QA_REQUIRED = ("question", "answer")
# Present string fields that must not be blank even when not required.
NONBLANK = frozenset({"question", "answer", "paraphrased_question", "paraphrased_answer",
                      "idk_answer"})
CANARY_FIELDS: dict[str, FieldCheck] = {
    "canary_id": check_int, "format": check_str, "prefix": check_str, "secret": check_str,
    "text": check_str, "repetitions": check_int, "split": check_str}
BIOGRAPHY_FIELDS: dict[str, FieldCheck] = {"person_id": check_int, "name": check_str,
                                           "text": check_str}


def _check_canary(c: dict) -> tuple[str, str] | None:
    """Cross-field rules of a canary record (fields already typed)."""
    if c["split"] not in CANARY_SPLITS:
        return "split", f"must be one of {CANARY_SPLITS}, got {c['split']!r}"
    if c["text"] != c["prefix"] + c["secret"]:
        return "text", "must equal prefix + secret"
    if c["repetitions"] < 0 or (c["split"] == "heldout") != (c["repetitions"] == 0):
        return "repetitions", (f"{c['repetitions']} is invalid for a {c['split']!r} canary "
                               "(heldout canaries have 0, others >= 1)")
    return None


class RecordKind(NamedTuple):
    """One kind of record: its field checks, the fields required by default, and a check
    across fields (``record -> (field, problem) | None``)."""

    fields: Mapping[str, FieldCheck]
    required: tuple[str, ...]
    check: Callable[[dict], tuple[str, str] | None] | None


_KINDS = {
    "canaries": RecordKind(CANARY_FIELDS, tuple(CANARY_FIELDS), _check_canary),
    "biographies": RecordKind(BIOGRAPHY_FIELDS, tuple(BIOGRAPHY_FIELDS), None),
}
_QA_KIND = RecordKind(QA_FIELDS, QA_REQUIRED, None)


def record_kind(split: str) -> RecordKind:
    """The schema of a split's records: canaries, biographies, else QA."""
    return _KINDS.get(split, _QA_KIND)


# MUSE's records (``data.muse``), one kind per config: every field a required string.
MUSE_FIELDS = {"raw": ("text",), "verbmem": ("prompt", "gt"), "knowmem": ("question", "answer"),
               "privleak": ("text",)}
_KINDS.update({f"muse_{config}": RecordKind({f: check_str for f in fields}, fields, None)
               for config, fields in MUSE_FIELDS.items()})
