"""Per-sequence memorisation of a model over forget sets, and what the averages hide.

Memorisation-aware unlearning (SGA, TAU; ``jaxunlearn.methods.memorization``) needs, every epoch,
the memorisation accuracy of each forget sequence:

``MA_n = (1 / |y_n|) sum_t 1[argmax_v p(v | y_<t) = y_t]``  (teacher forcing; Tirumala et
al. 2022; Jang et al. 2023 eq. 2; ``eval.memorization_metrics.memorization_accuracy``),

taken over the sequence's *target* tokens: the answer of a QA record, the secret of a
canary, every token of a raw document. The end-of-sequence token is left out of MA (it
is nearly always right and would lift short answers; open-unlearning leaves it out too)
but kept in the training loss, as every ascent method here trains on it.

The model-level driver is ``eval.scoring.score_sequences`` (sorted, bucketed, jitted,
logits never leave the device); this module only builds the encodings it scores and
summarises the result.

A mean MA hides the sequences that matter: :func:`summarize_ma` reports how many forget
sequences are still extractable (MA > 0.60), how many were over-unlearned (MA < 0.15,
far below anything a model that never saw them would score, itself a membership
signal), the maximum and a histogram, as plain data (``report`` draws it).

Shapes: N sequences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.batch import Encoded
from jaxunlearn.errors import DataError
from jaxunlearn.eval import scoring

# Default levels: above 0.60 most of a sequence comes out under greedy teacher forcing
# (still extractable); below 0.15 it scores under what never-seen text of the same kind
# typically gets (over-unlearned: the drop itself gives membership away).
EXTRACTABLE_MA = 0.60
OVER_UNLEARNED_MA = 0.15


class MemTargets(NamedTuple):
    """Encodings of N memorisation targets (see :func:`encode_targets`).

    Attributes:
      train: the sequences as trained on: target tokens and the final eos counted.
      ma: the same token ids, counting the target tokens only (eos left out).
      kinds: ``"qa"``, ``"canary"`` or ``"text"`` per sequence.
    """

    train: list[Encoded]
    ma: list[Encoded]
    kinds: list[str]


def _canary_counted(tokenizer, prefix: str, text: str, where: str) -> Encoded:
    """bos + text + eos with only the tokens that reach into the secret counted.

    Byte-level BPE may glue the space before the secret to its first token; any token
    whose decoded end lies past ``prefix`` overlaps the secret and counts.
    """
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    counted_text = [float(len(tokenizer.decode(ids[:j + 1])) > len(prefix))
                    for j in range(len(ids))]
    if not any(counted_text):
        raise DataError(f"{where}: the secret has no token of its own after the prefix")
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("tokenizer: has no eos token (needed to end sequences)")
    token_ids = np.asarray(bos + ids + [int(eos)], np.int32)
    counted = np.asarray([0.0] * len(bos) + counted_text + [1.0], np.float32)
    return Encoded(token_ids, counted)


def _encode_one(tokenizer, record: Mapping, where: str) -> tuple[Encoded, str]:
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a record (dict), got {type(record).__name__}")
    if "prefix" in record and "secret" in record:
        prefix, secret = record["prefix"], record["secret"]
        for field, value in (("prefix", prefix), ("secret", secret)):
            if not isinstance(value, str) or not value:
                raise DataError(f"{where}: field '{field}' must be a non-empty string")
        text = record.get("text", prefix + secret)
        if text != prefix + secret:
            raise DataError(f"{where}: field 'text' must equal prefix + secret")
        return _canary_counted(tokenizer, prefix, text, where), "canary"
    if "question" in record or "answer" in record:
        for field in ("question", "answer"):
            if not isinstance(record.get(field), str) or not record[field].strip():
                raise DataError(f"{where}: field '{field}' must be a non-empty string")
        return batch_lib.encode_qa(tokenizer, record["question"], record["answer"]), "qa"
    if isinstance(record.get("text"), str) and record["text"].strip():
        return batch_lib.encode_text(tokenizer, record["text"]), "text"
    raise DataError(f"{where}: expected a QA record (question, answer), a canary (prefix, "
                    "secret) or a document (text)")


def drop_final_eos(e: Encoded, eos_id: int | None) -> Encoded:
    """``e`` with its last token uncounted when that token is a counted eos."""
    if eos_id is None or len(e.token_ids) < 2 or int(e.token_ids[-1]) != eos_id \
            or e.counted[-1] == 0:
        return e
    counted = e.counted.copy()
    counted[-1] = 0.0
    return Encoded(e.token_ids, counted) if counted[1:].any() else e


def encode_targets(tokenizer, records: Sequence[Mapping], *, max_len: int,
                   truncate: bool = False, split: str = "forget") -> MemTargets:
    """Tokenise memorisation targets: QA records, canaries or raw documents.

    A record with ``prefix`` and ``secret`` is a canary (the prefix is context, the
    secret the target); one with ``question``/``answer`` a QA pair (the answer is the
    target); one with only ``text`` a document (every token after bos). Lengths are
    checked (or truncated) as for training.

    Raises:
      DataError: naming ``split``, the record number and the field.
    """
    if not records:
        raise DataError(f"{split} split: no records")
    train, kinds = [], []
    for i, rec in enumerate(records):
        enc, kind = _encode_one(tokenizer, rec, f"{split} split: record {i + 1}")
        train.append(enc)
        kinds.append(kind)
    try:
        train = batch_lib.check_lengths(train, max_len, truncate=truncate)
    except DataError as e:
        raise DataError(f"{split} split: {e}") from None
    eos = tokenizer.eos_token_id
    return MemTargets(train=train, ma=[drop_final_eos(e, eos) for e in train], kinds=kinds)


class MemScores(NamedTuple):
    """Per-sequence memorisation of N targets under one model (host NumPy).

    Attributes:
      ma: ``[N]`` memorisation accuracy over the target tokens (eos excluded).
      mean_logprob: ``[N]`` per-token average log-probability of the same tokens.
    """

    ma: np.ndarray
    mean_logprob: np.ndarray


def memorization_scores(model, targets: MemTargets, *, pad_id: int,
                        batch_size: int = 32) -> MemScores:
    """Teacher-forced MA and mean log-prob of every target: one jitted pass per batch.

    Args:
      model: a ``Llama`` (``model(ids [B,T], mask [B,T]) -> [B,T,V]``).
      targets: from :func:`encode_targets`.
    Returns:
      :class:`MemScores` with ``[N]`` arrays in the order of ``targets``.
    """
    s = scoring.score_sequences(model, targets.ma, pad_id=pad_id, batch_size=batch_size)
    return MemScores(ma=np.asarray(s.accuracy, np.float64),
                     mean_logprob=np.asarray(s.mean_logprob, np.float64))


# ------------------------------------------------------------------------------ summaries


@dataclasses.dataclass(frozen=True, kw_only=True)
class MASummary:
    """What a forget set's MA distribution looks like (JSON-ready via :meth:`to_dict`).

    Attributes:
      n: number of sequences; mean, max: of MA.
      extractable: sequences with MA > ``extractable_level`` (still come out verbatim).
      over_unlearned: sequences with MA < ``over_unlearned_level``.
      histogram: ``[bins]`` counts over ``bin_edges`` ``[bins + 1]`` spanning [0, 1]
        (the last bin includes 1.0).
    """

    n: int
    mean: float
    max: float
    extractable: int
    over_unlearned: int
    extractable_level: float
    over_unlearned_level: float
    histogram: tuple[int, ...]
    bin_edges: tuple[float, ...]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize_ma(ma, *, extractable: float = EXTRACTABLE_MA,
                 over_unlearned: float = OVER_UNLEARNED_MA, bins: int = 10) -> MASummary:
    """Counts, maximum and histogram of per-sequence MA ``[N]`` (see :class:`MASummary`)."""
    a = np.asarray(ma, np.float64)
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)):
        raise ValueError(f"ma: expected a non-empty finite 1-D array, got shape {a.shape}")
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins: expected an integer >= 1, got {bins!r}")
    if not 0.0 <= over_unlearned <= extractable <= 1.0:
        raise ValueError(f"over_unlearned ({over_unlearned}) and extractable ({extractable}) "
                         "must satisfy 0 <= over_unlearned <= extractable <= 1")
    counts, edges = np.histogram(np.clip(a, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    return MASummary(n=int(a.size), mean=float(a.mean()), max=float(a.max()),
                     extractable=int(np.sum(a > extractable)),
                     over_unlearned=int(np.sum(a < over_unlearned)),
                     extractable_level=float(extractable),
                     over_unlearned_level=float(over_unlearned),
                     histogram=tuple(int(c) for c in counts),
                     bin_edges=tuple(float(e) for e in edges))


def compare_ma(before, after, **kwargs) -> dict:
    """Before/after summaries of the same N sequences, plus which ones stay extractable.

    Returns:
      ``{"before": MASummary dict, "after": ..., "still_extractable": [indices],
      "over_unlearned": [indices], "mean_drop": float}``.
    """
    b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if b.shape != a.shape:
        raise ValueError(f"after: shape {a.shape} does not match before {b.shape}")
    sb, sa = summarize_ma(b, **kwargs), summarize_ma(a, **kwargs)
    return {"before": sb.to_dict(), "after": sa.to_dict(),
            "still_extractable": [int(i) for i in np.flatnonzero(a > sa.extractable_level)],
            "over_unlearned": [int(i) for i in np.flatnonzero(a < sa.over_unlearned_level)],
            "mean_drop": float(b.mean() - a.mean())}
