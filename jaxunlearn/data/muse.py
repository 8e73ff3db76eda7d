"""MUSE (Shi et al. 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"):
the dataset layout, its loaders, and its token sequences as open-unlearning builds them.

Hub ids ``muse-bench/MUSE-News`` and ``muse-bench/MUSE-Books`` hold four configs used
here, each a set of splits (``datasets.load_dataset(hub_id, config, split=split)``); a
local copy keeps the same names as ``<dir>/<config>/<split>.json`` (JSON lines; a JSON
array, ``.jsonl`` or ``.parquet`` is read too):

====================  ==============================================  ===================
config                splits                                          fields
====================  ==============================================  ===================
``raw``               ``forget``, ``retain1``, ``retain2``, ``holdout``  ``text``
``verbmem``           ``forget``                                      ``prompt``, ``gt``
``knowmem``           ``forget_qa``, ``forget_qa_icl``, ``retain_qa``,  ``question``, ``answer``
                      ``retain_qa_icl``
``privleak``          ``forget``, ``retain``, ``holdout``             ``text``
====================  ==============================================  ===================

(MUSE-Books' knowmem retain splits were once named ``retain2_qa`` / ``retain2_qa_icl``;
both names are read.) A directory is MUSE when it holds any of these config folders.

Sequences follow open-unlearning's ``preprocess_pretraining_instance``: ``bos + tokens
of (prefix [+ " "] + text)``, no eos, the first ``max_length`` text tokens after the
prefix counted (:func:`encode_completion`). Unlearning trains on ``raw/forget`` as
open-unlearning's ``PretrainingDataset`` cuts it (:func:`pretraining_chunks`).

Every problem is a :class:`DataError` naming the file (or hub split), the record and
the field, raised before any model work.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxunlearn.data.batch import Encoded
from jaxunlearn.data.records import read_records, validate_records
from jaxunlearn.data.schema import MUSE_FIELDS, SUFFIXES, check_str
from jaxunlearn.errors import DataError

__all__ = ["HUB_IDS", "CONFIGS", "FIELDS", "is_muse_dir", "is_muse_source", "load_muse_split",
           "MuseEvalData", "load_muse_eval", "encode_completion", "pretraining_chunks",
           "text_records", "KNOWMEM_MAX_LENGTH", "encode_knowmem"]

HUB_IDS = ("muse-bench/MUSE-News", "muse-bench/MUSE-Books")
# config -> its splits (the names a local copy's files carry).
CONFIGS: dict[str, tuple[str, ...]] = {
    "raw": ("forget", "retain1", "retain2", "holdout"),
    "verbmem": ("forget",),
    "knowmem": ("forget_qa", "forget_qa_icl", "retain_qa", "retain_qa_icl"),
    "privleak": ("forget", "retain", "holdout"),
}
FIELDS: dict[str, tuple[str, ...]] = MUSE_FIELDS
# MUSE-Books' older split names, tried when the current one is absent.
_ALIASES = {"retain_qa": "retain2_qa", "retain_qa_icl": "retain2_qa_icl"}


def is_muse_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a MUSE config folder (``raw/``, ...)."""
    p = Path(path)
    return p.is_dir() and any((p / c).is_dir() for c in CONFIGS)


def is_muse_source(source) -> bool:
    """A local MUSE directory, or a MUSE hub id that is not a local path."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    if Path(source).exists():
        return is_muse_dir(source)
    return str(source) in HUB_IDS


def _hub_split(hub_id: str, config: str, split: str) -> list:
    try:
        import datasets  # heavy; only for hub ids

        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as e:  # network, auth, unknown split: all mean "not available"
        msg = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"{hub_id}: {config}/{split}: not a local directory and could not "
                        f"be loaded from the Hugging Face hub (offline or no access?): "
                        f"{msg[:200]}") from None


def _local_file(directory: Path, config: str, split: str) -> Path | None:
    for name in (split, _ALIASES.get(split)):
        for suffix in SUFFIXES if name else ():
            if (directory / config / f"{name}{suffix}").is_file():
                return directory / config / f"{name}{suffix}"
    return None


def load_muse_split(source: str | os.PathLike, config: str, split: str) -> list[dict]:
    """Records of one MUSE split, every field of ``FIELDS[config]`` a non-blank string.

    Args:
      source: a local MUSE directory (``<source>/<config>/<split>.json``) or a hub id.
      config, split: e.g. ``("verbmem", "forget")`` (``CONFIGS`` lists them).
    """
    if config not in CONFIGS:
        raise DataError(f"MUSE config {config!r}: unknown (known: {', '.join(CONFIGS)})")
    if split not in CONFIGS[config]:
        raise DataError(f"MUSE {config} split {split!r}: unknown (known: "
                        f"{', '.join(CONFIGS[config])})")
    required = FIELDS[config]
    checks = {f: check_str for f in required}
    path = Path(source)
    if not path.exists():
        if str(source) not in HUB_IDS:
            raise DataError(f"{source}: no such MUSE directory (or hub id: "
                            f"{', '.join(HUB_IDS)})")
        try:
            rows, label = _hub_split(str(source), config, split), f"hub:{source}/{config}/{split}"
        except DataError as first:
            if split not in _ALIASES:
                raise
            old = _ALIASES[split]
            try:
                rows, label = _hub_split(str(source), config, old), f"hub:{source}/{config}/{old}"
            except DataError:
                raise first from None
        items = ((f"record {i + 1}", r) for i, r in enumerate(rows))
        records = validate_records(items, label, fields=checks, required=required)
    else:
        file = _local_file(path, config, split)
        if file is None:
            raise DataError(f"{path / config}: split '{split}': no {split}.json, .jsonl or "
                            ".parquet file")
        records = read_records(file, split=f"muse_{config}")  # schema kind muse_<config>
    return [{f: r[f] for f in required} for r in records]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MuseEvalData:
    """What open-unlearning's MUSE evaluation reads, by its datasets' names.

    Attributes:
      verbmem: ``verbmem/forget`` records (``prompt``, ``gt``).
      forget_qa, forget_qa_icl, retain_qa, retain_qa_icl: ``knowmem`` records
        (``question``, ``answer``); the ``_icl`` ones are the in-context examples.
      privleak_forget, privleak_holdout: ``privleak`` texts, members and non-members.
      source: where they were read from.
    """

    verbmem: tuple[dict, ...]
    forget_qa: tuple[dict, ...]
    forget_qa_icl: tuple[dict, ...]
    retain_qa: tuple[dict, ...]
    retain_qa_icl: tuple[dict, ...]
    privleak_forget: tuple[str, ...]
    privleak_holdout: tuple[str, ...]
    source: str = ""


def load_muse_eval(source: str | os.PathLike) -> MuseEvalData:
    """Every split the MUSE evaluation needs, each checked, before any model is loaded."""
    def split(config, name):
        return tuple(load_muse_split(source, config, name))

    return MuseEvalData(
        verbmem=split("verbmem", "forget"),
        forget_qa=split("knowmem", "forget_qa"), forget_qa_icl=split("knowmem", "forget_qa_icl"),
        retain_qa=split("knowmem", "retain_qa"), retain_qa_icl=split("knowmem", "retain_qa_icl"),
        privleak_forget=tuple(r["text"] for r in split("privleak", "forget")),
        privleak_holdout=tuple(r["text"] for r in split("privleak", "holdout")),
        source=str(source))


def _ids(tokenizer, text: str) -> list[int]:
    """``tokenizer(text, add_special_tokens=True)`` with the bos placed explicitly (every
    tokenizer alike; ours adds no special tokens by itself)."""
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    return bos + list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else bos


def encode_completion(tokenizer, prefix: str, text: str, *, max_length: int = 2048,
                      insert_space: bool = False) -> tuple[Encoded, np.ndarray]:
    """``prefix`` then ``text`` as one sequence, the text's tokens counted.

    As open-unlearning's ``preprocess_pretraining_instance``: ``ids = bos +
    tok(prefix + (" " if insert_space) + text)`` cut to ``len(bos + tok(prefix)) +
    max_length`` tokens, no eos; the tokens from position ``len(bos + tok(prefix))`` on
    are counted (with an empty prefix: all but the bos, which no position predicts).

    Returns:
      ``(Encoded, prompt_ids)``: the whole sequence with its counted mask, and the
      prefix's ids ``[P]`` that generation continues.
    """
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"text: expected a non-empty string, got {text!r:.60}")
    prompt = _ids(tokenizer, prefix)
    ids = _ids(tokenizer, prefix + (" " if insert_space else "") + text)
    ids = ids[: len(prompt) + max_length]
    start = max(len(prompt), 1)  # never a label at index 0
    if len(ids) <= start:
        raise DataError(f"text: no token left to score after the prefix ({text!r:.40})")
    counted = np.zeros(len(ids), np.float32)
    counted[start:] = 1.0
    return Encoded(np.asarray(ids, np.int32), counted), np.asarray(prompt, np.int32)


# open-unlearning's knowmem datasets (QADataset, max_length 512).
KNOWMEM_MAX_LENGTH = 512


def encode_knowmem(tokenizer, icl: Sequence[dict], question: str, answer: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A knowmem question after every in-context example, as open-unlearning's QADataset.

    With a chat template (``tokenizer.chat_template``): the examples as alternating
    user/assistant turns, then the question; ``prompt_ids`` with the generation prompt,
    ``full_ids`` with the answer as the last assistant turn (no truncation, as there).
    Without one: open-unlearning's base-model template, MUSE's own prompt, ``bos +
    "Question: {q}\\nAnswer: {a}\\n\\n"`` per example + ``"Question: {q}\\nAnswer: "``
    (``full_ids`` adds the answer), each cut to its first ``KNOWMEM_MAX_LENGTH`` tokens.

    Returns:
      ``(prompt_ids [P], full_ids [L])``; the reference answer is ``decode(full_ids)``
      with ``decode(prompt_ids)`` removed, as open-unlearning reads it.
    """
    if getattr(tokenizer, "chat_template", None):
        chat = []
        for ex in icl:
            chat += [{"role": "user", "content": ex["question"]},
                     {"role": "assistant", "content": ex["answer"]}]
        chat.append({"role": "user", "content": question})
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                               return_dict=False)
        full = tokenizer.apply_chat_template(chat + [{"role": "assistant", "content": answer}],
                                             tokenize=True, return_dict=False)
    else:
        text = "".join(f"Question: {ex['question']}\nAnswer: {ex['answer']}\n\n" for ex in icl)
        text += f"Question: {question}\nAnswer: "
        prompt = _ids(tokenizer, text)[:KNOWMEM_MAX_LENGTH]
        full = _ids(tokenizer, text + answer)[:KNOWMEM_MAX_LENGTH]
    return np.asarray(prompt, np.int32), np.asarray(full, np.int32)


def pretraining_chunks(tokenizer, texts: Sequence[str], *, max_length: int = 2048) -> list[str]:
    """open-unlearning's ``PretrainingDataset`` chunks of a corpus (MUSE's unlearning data).

    The texts joined by ``"\\n\\n"`` are tokenised without special tokens, cut into
    ``len // max_length + 1`` windows of ``max_length`` tokens, and each window decoded
    back to text (then encoded with :func:`encode_completion` and an empty prefix). An
    empty last window (the length a multiple of ``max_length``) is dropped: it would
    hold no token to train on.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise DataError(f"max_length: expected a positive integer, got {max_length!r}")
    ids = list(tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"])
    windows = (ids[i * max_length:(i + 1) * max_length] for i in range(len(ids) // max_length + 1))
    return [tokenizer.decode(w) for w in windows if w]


def text_records(tokenizer, source, split: str, *, max_length: int) -> list[dict]:
    """``raw/<split>`` of a MUSE source as ``{"text": chunk}`` training records."""
    docs = [r["text"] for r in load_muse_split(source, "raw", split)]
    return [{"text": c} for c in pretraining_chunks(tokenizer, docs, max_length=max_length)]
