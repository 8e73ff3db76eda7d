"""Batches: token ids, shifted labels and the answer-only loss mask.

Convention used everywhere in jaxunlearn: ``logits[b, t]`` scores ``labels[b, t]``.
The batch builder shifts; losses never do.

Pipeline: ``encode_qa`` / ``encode_text`` -> :class:`Encoded` (unshifted ids and
which tokens count) -> ``check_lengths`` (once, on the dataset) ->
``iterate_batches`` (training) or ``iterate_eval_batches`` (scoring) -> ``collate``
-> :class:`Batch` of NumPy arrays ``[B, T]``, ``T`` a bucket length. QA items count
the answer and its eos only (prompt masked, as TOFU fine-tunes); documents count
every token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxunlearn.errors import DataError


class Batch(NamedTuple):
    """One batch of sequences, all arrays ``[B, T]``.

    Attributes:
      input_ids: int32 token ids fed to the model.
      labels: int32 ids of the *next* token (``input_ids`` shifted left by one).
      loss_mask: float32, 1.0 on tokens that count in the loss (answer tokens), else 0.0.
      attention_mask: int32, 1 for real tokens, 0 for padding.
      compaction: optional ``models.compact.Compaction`` (static capacities, not an
        array): objectives then run the model padding-free on this batch.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    attention_mask: np.ndarray
    compaction: Any = None


# ----------------------------------------------------------------------------------
# Tokenising: QA items and raw documents, before the shift.
# ----------------------------------------------------------------------------------

# Padded lengths jit sees: the smallest bucket that fits, so a run compiles a few shapes.
DEFAULT_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class Encoded(NamedTuple):
    """One tokenised sequence of ``L`` tokens, not yet shifted or padded.

    Attributes:
      token_ids: int32 ``[L]``, the whole sequence (prompt + answer + eos, or bos + text + eos).
      counted: float32 ``[L]``, 1.0 where the token is a loss target (answer and eos;
        every token of a document but the first), 0.0 on the prompt.
    """

    token_ids: np.ndarray
    counted: np.ndarray

    @property
    def length(self) -> int:
        """Positions after the shift, ``L - 1``: what must fit in a batch's ``T``."""
        return len(self.token_ids) - 1


class EvalBatch(NamedTuple):
    """An evaluation batch; rows ``num_real`` and beyond are empty padding rows."""

    batch: Batch
    num_real: int


def _text_ids(tokenizer, text: str) -> list[int]:
    # No special tokens: bos/eos are placed explicitly so every tokenizer behaves alike.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _require_str(value, field: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{field}: expected a non-empty string, got {value!r:.60}")


def pad_id(tokenizer) -> int:
    """The id rows are padded with: the tokenizer's pad token, else its eos token.

    Raises:
      DataError: when the tokenizer has neither.
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("tokenizer: has neither a pad nor an eos token to pad with")
    return int(pad)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise DataError("tokenizer: has no eos token (needed to end answers and documents)")
    return int(tokenizer.eos_token_id)


# open-unlearning's model configs (configs/model/Llama-3.*-Instruct.yaml): the system
# prompt and the date its chat template renders ("Today Date: ..."). Templates that take
# no date (Llama-2-chat, phi, our own) get neither, as there.
OU_SYSTEM_PROMPT, OU_DATE_STRING = "You are a helpful assistant.", "10 Apr 2025"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChatStyle:
    """What the chat template renders around a question (``data.system_prompt``,
    ``data.date_string``).

    None (the default) is open-unlearning's setting for the tokenizer's template: with a
    template that renders a date (``date_string``, the Llama-3.x Instruct ones) the system
    prompt ``OU_SYSTEM_PROMPT`` and the date ``OU_DATE_STRING``; otherwise neither. ``""``
    is no system prompt / the template's own date.
    """

    system_prompt: str | None = None
    date_string: str | None = None

    def __post_init__(self):
        for name in ("system_prompt", "date_string"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise DataError(f"data.{name}: expected a string or null, got {v!r:.40}")

    def render(self, tokenizer, question: str) -> tuple[list[dict], dict]:
        """``(messages, template kwargs)`` of ``question`` for ``tokenizer``'s template."""
        dated = "date_string" in (getattr(tokenizer, "chat_template", None) or "")
        system = self.system_prompt if self.system_prompt is not None else (
            OU_SYSTEM_PROMPT if dated else "")
        date = self.date_string if self.date_string is not None else (
            OU_DATE_STRING if dated else "")
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return messages, ({"date_string": date} if date else {})


DEFAULT_CHAT = ChatStyle()


def encode_prompt(tokenizer, question: str, *, chat: ChatStyle = DEFAULT_CHAT) -> np.ndarray:
    """Chat-template prompt ids ``[P]`` for ``question``, ending where the answer starts.

    ``tokenizer.apply_chat_template([system?, {"role": "user", "content": question}],
    add_generation_prompt=True, date_string=...)`` (:class:`ChatStyle`, open-unlearning's
    ``preprocess_chat_instance``); with jaxunlearn's own tokenizer that is
    ``<|bos|>Question: {question}\nAnswer: ``.
    """
    _require_str(question, "question")
    messages, kwargs = chat.render(tokenizer, question)
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                        return_dict=False, **kwargs)
    return np.asarray(ids, dtype=np.int32)


def _qa(prompt: np.ndarray, answer_ids: list[int], eos: int) -> Encoded:
    target = np.asarray(answer_ids + [eos], dtype=np.int32)
    counted = np.concatenate([np.zeros(len(prompt), np.float32), np.ones(len(target), np.float32)])
    return Encoded(np.concatenate([prompt, target]), counted)


def encode_qa(tokenizer, question: str, answer: str, *, chat: ChatStyle = DEFAULT_CHAT) -> Encoded:
    """Prompt (chat template, not counted) + answer + eos (counted)."""
    _require_str(answer, "answer")
    return _qa(encode_prompt(tokenizer, question, chat=chat), _text_ids(tokenizer, answer),
               _eos_id(tokenizer))


def encode_candidates(tokenizer, question: str, answers: Sequence[str], *,
                      chat: ChatStyle = DEFAULT_CHAT) -> list[Encoded]:
    """One :class:`Encoded` per candidate answer to the same question.

    For the truth ratio (Maini et al. 2024, TOFU): ``question`` with the paraphrased
    answer and with each of the ``K`` perturbed answers; score them with
    ``sequence_logprob / num answer tokens`` and reshape ``[N * K] -> [N, K]``.
    """
    if isinstance(answers, str) or not answers:
        raise DataError(f"answers: expected a non-empty list of strings, got {answers!r:.60}")
    prompt, eos = encode_prompt(tokenizer, question, chat=chat), _eos_id(tokenizer)
    out = []
    for k, answer in enumerate(answers):
        _require_str(answer, f"answers[{k}]")
        out.append(_qa(prompt, _text_ids(tokenizer, answer), eos))
    return out


def encode_qa_records(tokenizer, records: Sequence[Mapping], *, question_field: str = "question",
                      answer_field: str = "answer", chat: ChatStyle = DEFAULT_CHAT) -> list[Encoded]:
    """:func:`encode_qa` over loaded records, e.g. ``answer_field="idk_answer"`` for IDK targets."""
    out = []
    for i, rec in enumerate(records):
        for field in (question_field, answer_field):
            if field not in rec:
                raise DataError(f"record {i + 1}: field '{field}': missing")
        out.append(encode_qa(tokenizer, rec[question_field], rec[answer_field], chat=chat))
    return out


def encode_text(tokenizer, text: str) -> Encoded:
    """A raw document: bos + text + eos, every token after the first counted.

    A tokenizer without a bos token (e.g. Qwen2) starts at the first text token,
    which is then the one token no position predicts.
    """
    _require_str(text, "text")
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    ids = np.asarray(bos + _text_ids(tokenizer, text) + [_eos_id(tokenizer)], dtype=np.int32)
    counted = np.ones(len(ids), np.float32)
    counted[0] = 0.0  # the first token is never a label
    return Encoded(ids, counted)


# ----------------------------------------------------------------------------------
# Lengths, padding, batches.
# ----------------------------------------------------------------------------------


def check_lengths(encoded: Sequence[Encoded], max_len: int, *,
                  truncate: bool = False) -> list[Encoded]:
    """Enforce ``length <= max_len`` positions on every sequence.

    Without ``truncate``, any sequence too long raises, saying how many are. With it,
    sequences keep their first ``max_len + 1`` tokens (answers lose their end); a
    sequence whose prompt alone fills ``max_len`` still raises, since it would enter
    a loss with no counted token.
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise DataError(f"max_len: expected a positive integer, got {max_len!r}")
    too_long = [i for i, e in enumerate(encoded) if e.length > max_len]
    if not too_long:
        return list(encoded)
    if not truncate:
        longest = max(encoded[i].length for i in too_long)
        raise DataError(f"max_len: {len(too_long)} of {len(encoded)} sequences are longer than "
                        f"max_len={max_len} tokens (longest {longest}); raise max_len or "
                        "set truncate=True")
    out = list(encoded)
    for i in too_long:
        ids, counted = encoded[i].token_ids[: max_len + 1], encoded[i].counted[: max_len + 1]
        if not counted[1:].any():
            raise DataError(f"max_len: sequence {i}: its prompt alone fills max_len={max_len}, "
                            "so truncation would leave no answer token")
        out[i] = Encoded(ids, counted)
    return out


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket ``>= n``; past the largest, the next multiple of the largest."""
    if not buckets or any(b < 1 for b in buckets) or list(buckets) != sorted(set(buckets)):
        raise DataError(f"buckets: expected increasing positive lengths, got {tuple(buckets)}")
    for b in buckets:
        if n <= b:
            return int(b)
    return int(-(-n // buckets[-1]) * buckets[-1])


def collate(encoded: Sequence[Encoded], seq_len: int, pad_id: int, *,
            batch_size: int | None = None) -> Batch:
    """Shift, right-pad and stack sequences into a :class:`Batch` of ``[B, seq_len]``.

    Row ``b`` holds ``input_ids = ids[:-1]``, ``labels = ids[1:]``,
    ``loss_mask = counted[1:]`` and ``attention_mask = 1`` on its ``L - 1`` real
    positions, then ``pad_id`` / 0 / 0 / 0. ``batch_size`` > ``len(encoded)`` adds
    empty rows (all padding, both masks zero).
    """
    if not encoded:
        raise DataError("encoded: no sequences to collate")
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
        raise DataError(f"seq_len: expected a positive integer, got {seq_len!r}")
    b = len(encoded) if batch_size is None else batch_size
    if b < len(encoded):
        raise DataError(f"batch_size: {b} rows cannot hold {len(encoded)} sequences")
    longest = max((e.length for e in encoded), default=0)
    if longest > seq_len:
        raise DataError(f"seq_len: a sequence of {longest} positions does not fit "
                        f"seq_len={seq_len}")
    input_ids = np.full((b, seq_len), pad_id, np.int32)
    labels = np.full((b, seq_len), pad_id, np.int32)
    loss_mask = np.zeros((b, seq_len), np.float32)
    attention_mask = np.zeros((b, seq_len), np.int32)
    for row, e in enumerate(encoded):
        n = e.length
        if n < 1:
            raise DataError(f"sequence {row}: needs at least 2 tokens to have a label")
        input_ids[row, :n] = e.token_ids[:-1]
        labels[row, :n] = e.token_ids[1:]
        loss_mask[row, :n] = e.counted[1:]
        attention_mask[row, :n] = 1
    return Batch(input_ids, labels, loss_mask, attention_mask)


def steps_per_epoch(num_items: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    """Batches :func:`iterate_batches` yields per epoch."""
    return num_items // batch_size if drop_remainder else -(-num_items // batch_size)


def _check_batching(encoded: Sequence[Encoded], batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not encoded:
        raise DataError("encoded: no sequences to batch")


def epoch_rows(num_items: int, batch_size: int, *, seed: int, epoch: int,
               drop_remainder: bool = False) -> np.ndarray:
    """Which items each batch of one epoch holds: ``[steps_per_epoch, batch_size]`` indices.

    The order is ``np.random.default_rng([seed, epoch]).permutation(N)``: the same for
    the same pair, different across epochs. Unless ``drop_remainder``, the last batch is
    filled by wrapping around to the start of this epoch's order, so every batch has
    ``batch_size`` real rows (static shapes, no empty rows in a loss). The one row order
    of every training and unlearning loop.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size!r}")
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise DataError(f"{name}: expected a non-negative integer, got {value!r}")
    steps = steps_per_epoch(num_items, batch_size, drop_remainder=drop_remainder)
    if steps == 0:
        raise DataError(f"batch_size: {batch_size} is larger than the {num_items} sequences "
                        "and drop_remainder=True leaves no batch")
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(num_items)
    # np.resize repeats cyclically (the wrap-around) or truncates (drop_remainder).
    return np.resize(order, steps * batch_size).reshape(steps, batch_size)


def iterate_batches(encoded: Sequence[Encoded], batch_size: int, *, seed: int, epoch: int,
                    pad_id: int, drop_remainder: bool = False, seq_len: int | None = None,
                    buckets: Sequence[int] = DEFAULT_BUCKETS) -> Iterator[Batch]:
    """Training batches of one epoch, in :func:`epoch_rows` order, every one full.

    Each batch is padded to ``seq_len`` or, if None, to the bucket of its longest row.

    Yields:
      :class:`Batch` of ``[batch_size, T]`` arrays, :func:`steps_per_epoch` of them.
    """
    _check_batching(encoded, batch_size)
    rows = epoch_rows(len(encoded), batch_size, seed=seed, epoch=epoch,
                      drop_remainder=drop_remainder)

    def batches() -> Iterator[Batch]:
        for idx in rows:
            chunk = [encoded[j] for j in idx]
            longest = max(e.length for e in chunk)
            t = seq_len if seq_len is not None else bucket_length(longest, buckets)
            yield collate(chunk, t, pad_id)

    return batches()


def iterate_eval_batches(encoded: Sequence[Encoded], batch_size: int, *, pad_id: int,
                         seq_len: int | None = None,
                         buckets: Sequence[int] = DEFAULT_BUCKETS) -> Iterator[EvalBatch]:
    """Evaluation batches in dataset order; the last is topped up with empty rows.

    Yields:
      :class:`EvalBatch`; take the first ``num_real`` rows of any per-row result.
    """
    _check_batching(encoded, batch_size)

    def batches() -> Iterator[EvalBatch]:
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start:start + batch_size]
            longest = max(e.length for e in rows)
            t = seq_len if seq_len is not None else bucket_length(longest, buckets)
            yield EvalBatch(collate(rows, t, pad_id, batch_size=batch_size), len(rows))

    return batches()


def prompt_batch(tokenizer, prompts_ids: Sequence[Sequence[int]], *, seq_len: int | None = None,
                 pad_id: int | None = None,
                 buckets: Sequence[int] = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts for generation, so every row's next token is at ``T``.

    Args:
      prompts_ids: ``B`` prompts of token ids (e.g. :func:`encode_prompt`).
      seq_len: padded length ``T``; None picks the bucket of the longest prompt.
      pad_id: defaults to ``tokenizer.pad_token_id``.

    Returns:
      ``input_ids`` int32 ``[B, T]`` and ``attention_mask`` int32 ``[B, T]``
      (0 on the left padding, 1 on prompt tokens).
    """
    pad = tokenizer.pad_token_id if pad_id is None else pad_id
    if pad is None:
        raise DataError("pad_id: the tokenizer has no pad token; pass pad_id")
    if not prompts_ids:
        raise DataError("prompts_ids: no prompts")
    lengths = [len(p) for p in prompts_ids]
    if min(lengths) == 0:
        raise DataError(f"prompts_ids: prompt {lengths.index(0)} is empty")
    t = seq_len if seq_len is not None else bucket_length(max(lengths), buckets)
    if max(lengths) > t:
        raise DataError(f"seq_len: a prompt of {max(lengths)} tokens does not fit seq_len={t}")
    input_ids = np.full((len(lengths), t), pad, np.int32)
    attention_mask = np.zeros((len(lengths), t), np.int32)
    for row, p in enumerate(prompts_ids):
        input_ids[row, t - len(p):] = np.asarray(p, np.int32)
        attention_mask[row, t - len(p):] = 1
    return input_ids, attention_mask
