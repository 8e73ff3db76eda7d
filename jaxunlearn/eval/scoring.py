"""Batched, jitted scoring of a model over many sequences: the one place the model runs.

Every evaluation number starts here. ``score_sequences`` turns tokenised sequences
(:class:`jaxunlearn.data.batch.Encoded`: QA pairs or raw texts) into per-sequence
log-probabilities, token counts, teacher-forced greedy accuracy and the two Min-K
membership scores, plus the per-position arrays the host needs for the rest
(secret-only masks, ZLib, extraction strength). ``greedy_generate``
(``eval.generate.generate_ids``) decodes answers.

Speed: sequences are sorted by length, cut into batches of a fixed size and padded
to a bucket length, so a whole evaluation compiles a handful of shapes; the jitted
functions take the model's ``graphdef`` as a static argument, so every model of the
same architecture (target, retain, each unlearned one) reuses the same executables.
Logits ``[B, T, V]`` never leave the device: the jitted step reduces them to
``[B, T]`` and ``[B]`` arrays.

Shapes: N sequences, B batch rows, T positions (``logits[b, t]`` scores
``labels[b, t]``), V vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn import interrupts
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.batch import Batch, Encoded, bucket_length, collate, encode_qa, encode_text
from jaxunlearn.errors import DataError
from jaxunlearn.eval import mia
from jaxunlearn.eval.generate import generate_ids
from jaxunlearn.eval.memorization_metrics import greedy_correct
from jaxunlearn.models.outputs import forward


# Padded lengths for scoring: steps of about x1.5 waste at most a third of a batch on
# padding (QA pairs of a 2k-token vocabulary are 20-50 tokens long) for one extra
# compilation or two, paid once per architecture.
EVAL_BUCKETS = (32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096,
                6144, 8192)


class SequenceScores(NamedTuple):
    """Scores of N sequences, host NumPy, in the order they were given.

    Per-position arrays are right-padded to the longest bucket used (``T``);
    ``mask`` is 0 on padding, so sums over ``mask`` ignore it.

    Attributes:
      seq_logprob: ``[N]`` float64, ``sum_t mask * log p(y_t)`` (DESIGN's per-sequence
        log-probability; summed on device in float32).
      num_tokens: ``[N]`` int, ``sum_t mask``.
      num_correct: ``[N]`` int, masked positions where ``argmax_v p = y_t``.
      min_k: ``[N]`` Min-K% Prob (``mia.min_k_score``) over the mask without its last
        token (open-unlearning leaves the final EOS out of Min-K).
      min_k_plus_plus: ``[N]`` Min-K%++ (``mia.min_k_plus_plus_score``), same mask.
      token_logp: ``[N, T]`` float32 ``log p(y_t)``, 0 outside the mask.
      correct: ``[N, T]`` bool greedy hits, False outside the mask.
      mask: ``[N, T]`` float32 scored positions.
      labels: ``[N, T]`` int32 the scored token ids.
    """

    seq_logprob: np.ndarray
    num_tokens: np.ndarray
    num_correct: np.ndarray
    min_k: np.ndarray
    min_k_plus_plus: np.ndarray
    token_logp: np.ndarray
    correct: np.ndarray
    mask: np.ndarray
    labels: np.ndarray

    @property
    def mean_logprob(self) -> np.ndarray:
        """``[N]`` per-token-averaged log-prob ``seq_logprob / num_tokens`` (-avg loss)."""
        return self.seq_logprob / np.maximum(self.num_tokens, 1)

    @property
    def accuracy(self) -> np.ndarray:
        """``[N]`` memorisation accuracy (Tirumala et al. 2022): ``num_correct / num_tokens``."""
        return self.num_correct / np.maximum(self.num_tokens, 1)

    def take(self, index) -> "SequenceScores":
        """The rows ``index`` (slice or integer array) of every field."""
        return SequenceScores(*(np.asarray(f)[index] for f in self))


def _drop_last(mask: jax.Array) -> jax.Array:
    """``mask`` without each row's last masked position (the answer's EOS)."""
    on = mask > 0
    T = mask.shape[-1]
    last = T - 1 - jnp.argmax(on[:, ::-1], axis=-1)
    keep = jnp.arange(T)[None, :] != last[:, None]
    return jnp.where(keep & on, mask, 0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "k"))
def _score_batch(graphdef, state, input_ids, labels, loss_mask, attention_mask, *, k: float):
    """One forward pass reduced to ``[B]`` and ``[B, T]`` statistics (see SequenceScores).

    The label log-probs are the fused ones every objective trains on (``models.outputs``);
    the logits ``[B, T, V]`` (greedy hits, Min-K%++) stay on the device.
    """
    out = forward(graphdef, state, Batch(input_ids, labels, loss_mask, attention_mask))
    logits, token_logp = out.logits, out.label_logprobs
    correct = greedy_correct(logits, labels)
    on = loss_mask > 0
    minus_last = _drop_last(loss_mask)
    return {
        "seq_logprob": jnp.sum(jnp.where(on, token_logp, 0.0), axis=-1),
        "num_tokens": jnp.sum(on, axis=-1),
        "num_correct": jnp.sum(on & correct, axis=-1),
        "min_k": mia.min_k_score(token_logp, minus_last, k=k),
        "min_k_plus_plus": mia.min_k_plus_plus_score(logits, labels, minus_last, k=k),
        "token_logp": token_logp,
        "correct": correct,
    }


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise DataError(f"batch_size: expected a positive integer, got {batch_size!r}")


def score_sequences(model, encoded: Sequence[Encoded], *, pad_id: int, batch_size: int = 32,
                    k: float = 0.4, buckets: Sequence[int] = EVAL_BUCKETS) -> SequenceScores:
    """Scores every sequence under ``model`` (no gradient, no sampling).

    Sequences are sorted by length and scored ``batch_size`` at a time, each batch
    right-padded to the bucket of its longest row; the last batch is filled with empty
    rows, so every call has shape ``[batch_size, bucket]``. Results come back in the
    original order. A sequence's scores do not depend on its batch-mates.

    Args:
      model: a ``Llama`` (run through ``models.outputs.forward``).
      encoded: N sequences (``encode_qa`` counts answer + eos, ``encode_text`` every
        token after the first).
      pad_id: token id of the padding.
      k: fraction of lowest tokens for Min-K% / Min-K%++.
    Returns:
      :class:`SequenceScores` of the N sequences.
    """
    _check_batch_size(batch_size)
    if not encoded:
        raise DataError("encoded: no sequences to score")
    graphdef, state = nnx.split(model)
    lengths = np.asarray([e.length for e in encoded])
    order = np.argsort(lengths, kind="stable")
    width = bucket_length(int(lengths.max()), buckets)
    n = len(encoded)
    rows: dict[str, np.ndarray] = {}
    labels = np.full((n, width), pad_id, np.int32)
    mask = np.zeros((n, width), np.float32)
    for start in range(0, n, batch_size):
        interrupts.check("between evaluation batches")  # Ctrl-C stops here, never in XLA
        idx = order[start:start + batch_size]
        chunk = [encoded[i] for i in idx]
        t = bucket_length(max(e.length for e in chunk), buckets)
        b = collate(chunk, t, pad_id, batch_size=batch_size)
        out = jax.device_get(_score_batch(graphdef, state, b.input_ids, b.labels, b.loss_mask,
                                          b.attention_mask, k=float(k)))
        real = len(idx)
        for name, value in out.items():
            if name not in rows:
                shape = (n,) if value.ndim == 1 else (n, width)
                rows[name] = np.zeros(shape, value.dtype)
            if value.ndim == 1:
                rows[name][idx] = value[:real]
            else:
                rows[name][idx, :t] = value[:real]
        labels[idx, :t] = b.labels[:real]
        mask[idx, :t] = b.loss_mask[:real]
    # Positions outside the mask carry whatever the padding produced: zero them, so a
    # sequence's arrays do not depend on its batch-mates.
    on = mask > 0
    return SequenceScores(
        seq_logprob=rows["seq_logprob"].astype(np.float64),
        num_tokens=rows["num_tokens"].astype(np.int64),
        num_correct=rows["num_correct"].astype(np.int64),
        min_k=rows["min_k"].astype(np.float64),
        min_k_plus_plus=rows["min_k_plus_plus"].astype(np.float64),
        token_logp=np.where(on, rows["token_logp"], 0.0).astype(np.float32),
        correct=rows["correct"] & on, mask=mask, labels=labels)


def score_qa(model, tokenizer, questions: Sequence[str], answers: Sequence[str], **kwargs
             ) -> SequenceScores:
    """:func:`score_sequences` of ``(question, answer)`` pairs, answer + eos counted."""
    if len(questions) != len(answers):
        raise DataError(f"answers: {len(answers)} answers for {len(questions)} questions")
    encoded = [encode_qa(tokenizer, q, a) for q, a in zip(questions, answers)]
    return score_sequences(model, encoded, pad_id=batch_lib.pad_id(tokenizer), **kwargs)


def score_texts(model, tokenizer, texts: Sequence[str], **kwargs) -> SequenceScores:
    """:func:`score_sequences` of raw documents (bos + text + eos, all but bos counted)."""
    encoded = [encode_text(tokenizer, t) for t in texts]
    return score_sequences(model, encoded, pad_id=batch_lib.pad_id(tokenizer), **kwargs)


# Greedy decoding of many prompts (bucketed KV-cache programs, per-prompt budgets):
# ``eval.generate.generate_ids``, under the name the evaluation has always called.
greedy_generate = generate_ids
