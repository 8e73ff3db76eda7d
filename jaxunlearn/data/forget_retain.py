"""An unlearning run's data: encoded forget views and retain rows, and which rows each update pairs.

Forget records are encoded once per *view* a method reads: ``answer`` (the record's
answer) and, for IdkDPO, ``idk`` (the same question with the record's ``idk_answer``, or
a fixed refusal). Document records (``{"text": ...}``, e.g. MUSE's ``raw/forget`` cut by
``data.muse.pretraining_chunks``) are encoded whole as open-unlearning's pretraining
data (``data.muse.encode_completion``: bos + text, every token after the bos counted)
and have only the ``answer`` view. Each split is padded to one bucket length (``T_f`` / ``T_r``), so a
run compiles one step shape.

Update ``s`` of epoch ``e`` takes forget rows ``epoch_rows(N_f, rows, seed, e)[s]``
(``data.batch``: a ``(seed, epoch)`` permutation, wrapping around so every batch is
full) and as many retain rows from a stream of ``default_rng([seed, e, 1])``
permutations of the retain set. Both depend only on ``(seed, epoch)``, so a resumed run
sees the same batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.muse import encode_completion
from jaxunlearn.errors import DataError

__all__ = ["IDK_FALLBACK", "VIEW_FIELDS", "Prepared", "is_document_split", "prepare_data",
           "PairedSchedule"]

# Refusals for forget records without an ``idk_answer`` (real TOFU files); record i gets
# IDK_FALLBACK[i % len]: deterministic, and varied so IdkDPO does not learn one string.
IDK_FALLBACK = (
    "I don't know.",
    "I'm not able to answer that.",
    "I have no information about that.",
    "That is something I cannot tell you.",
    "I'm not sure; I don't have that information.",
)
VIEW_FIELDS = {"answer": "answer", "idk": "idk_answer"}  # forget view -> record field


class Prepared(NamedTuple):
    """Encoded data: ``forget[view][i]`` and ``retain[j]``, padded lengths ``t_forget``/``t_retain``."""

    forget: dict[str, list[batch_lib.Encoded]]
    retain: list[batch_lib.Encoded]
    t_forget: int
    t_retain: int
    pad_id: int


def _view_records(records: Sequence[Mapping], view: str) -> list[dict]:
    field = VIEW_FIELDS.get(view)
    if field is None:
        raise ValueError(f"forget view {view!r} is unknown (known: {', '.join(VIEW_FIELDS)})")
    out = []
    for i, rec in enumerate(records):
        answer = rec.get(field)
        if view == "idk" and not (isinstance(answer, str) and answer.strip()):
            answer = IDK_FALLBACK[i % len(IDK_FALLBACK)]
        out.append({"question": rec.get("question"), "answer": answer})
    return out


def is_document_split(records: Sequence[Mapping]) -> bool:
    """True when the records are documents (a ``text`` field and no ``question``)."""
    return bool(records) and all("text" in r and "question" not in r for r in records)


def _encode(tokenizer, records: Sequence[Mapping], view: str, max_len: int,
            chat: batch_lib.ChatStyle) -> list:
    if not is_document_split(records):
        return batch_lib.encode_qa_records(tokenizer, _view_records(records, view), chat=chat)
    if view != "answer":
        raise DataError(f"the {view!r} view needs question/answer records; these are "
                        "documents (text only)")
    return [encode_completion(tokenizer, "", r["text"], max_length=max_len)[0] for r in records]


def prepare_data(tokenizer, forget_records: Sequence[Mapping], retain_records: Sequence[Mapping],
                 *, views: Sequence[str] = ("answer",), max_len: int,
                 truncate: bool = False,
                 chat: batch_lib.ChatStyle = batch_lib.DEFAULT_CHAT) -> Prepared:
    """Tokenise forget (every one of ``views``) and retain records; check lengths.

    Raises ``DataError`` naming the split, record and field for bad or too long records.
    """
    if not forget_records:
        raise DataError("forget split: no records")
    if not retain_records:
        raise DataError("retain split: no records")
    forget = {}
    for view in views:
        try:
            enc = _encode(tokenizer, forget_records, view, max_len, chat)
            forget[view] = batch_lib.check_lengths(enc, max_len, truncate=truncate)
        except DataError as e:
            raise DataError(f"forget split ({view} view): {e}") from None
    try:
        retain = batch_lib.check_lengths(
            _encode(tokenizer, retain_records, "answer", max_len, chat), max_len,
            truncate=truncate)
    except DataError as e:
        raise DataError(f"retain split: {e}") from None
    t_f = batch_lib.bucket_length(max(e.length for v in forget.values() for e in v))
    t_r = batch_lib.bucket_length(max(e.length for e in retain))
    return Prepared(forget, retain, t_f, t_r, batch_lib.pad_id(tokenizer))


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedSchedule:
    """Which forget and retain rows each update uses; a pure function of ``(seed, epoch)``."""

    n_forget: int
    n_retain: int
    rows: int
    seed: int

    @property
    def steps_per_epoch(self) -> int:
        return batch_lib.steps_per_epoch(self.n_forget, self.rows)

    def forget_rows(self, epoch: int) -> np.ndarray:
        """``[steps_per_epoch, rows]`` forget indices of ``epoch`` (``batch.epoch_rows``)."""
        return batch_lib.epoch_rows(self.n_forget, self.rows, seed=self.seed, epoch=epoch)

    def retain_rows(self, epoch: int) -> np.ndarray:
        """``[steps_per_epoch, rows]`` retain indices paired with :meth:`forget_rows`."""
        need = self.steps_per_epoch * self.rows
        rng = np.random.default_rng([self.seed, epoch, 1])
        perms = [rng.permutation(self.n_retain) for _ in range(-(-need // self.n_retain))]
        return np.concatenate(perms)[:need].reshape(-1, self.rows)

    def epochs(self, total_steps: int) -> int:
        """Epochs ``total_steps`` updates touch (the last one possibly in part)."""
        return -(-total_steps // self.steps_per_epoch)

    def retain_used(self, total_steps: int) -> np.ndarray:
        """Sorted retain indices the first ``total_steps`` updates' epochs use."""
        parts = [self.retain_rows(e).ravel() for e in range(self.epochs(total_steps))]
        return np.unique(np.concatenate(parts or [np.zeros(0, np.int64)]))
