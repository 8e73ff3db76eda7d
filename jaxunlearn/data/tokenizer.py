"""A small byte-level BPE tokenizer trained on the benchmark's own text.

Models trained from scratch on the synthetic benchmark need a vocabulary that fits
it: a byte-level BPE (Sennrich et al. 2016, "Neural Machine Translation of Rare
Words with Subword Units"; byte-level as in GPT-2, Radford et al. 2019) trained
with the ``tokenizers`` library. Training is deterministic: the same texts, in
any order, give the identical vocabulary and merges (``tokenizers`` counts words,
then merges the most frequent pair with ties broken by pair ids; nothing is
sampled, so there is no seed).

Special tokens, with fixed ids (the first ids of every tokenizer trained here):

  ``<|bos|>`` = 0   start of every sequence (chat prompts and raw documents)
  ``<|eos|>`` = 1   end of an answer or a document; generation stops on it
  ``<|pad|>`` = 2   right padding in training batches, left padding for generation

The chat template renders ``[{"role": "user", "content": q}]`` with
``add_generation_prompt=True`` as ``<|bos|>Question: {q}\\nAnswer: `` and an
assistant turn as ``Answer: {a}<|eos|>``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from jaxunlearn.errors import DataError

__all__ = [
    "BOS", "EOS", "PAD", "BOS_ID", "EOS_ID", "PAD_ID", "CHAT_TEMPLATE",
    "train_tokenizer", "corpus_texts", "save_tokenizer", "load_tokenizer",
]

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
BOS_ID, EOS_ID, PAD_ID = 0, 1, 2
_NUM_BYTES = 256  # the byte-level alphabet every vocabulary starts from

# Jinja, as transformers' apply_chat_template runs it. One <|bos|> per conversation;
# "\n" inside the Jinja string literals is a newline character.
CHAT_TEMPLATE = (
    "{{- '<|bos|>' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'user' -%}{{- 'Question: ' + message['content'] + '\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- 'Answer: ' + message['content'] + '<|eos|>' -}}"
    "{%- else -%}"
    "{{- raise_exception('chat role must be system, user or assistant, got ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Answer: ' -}}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048,
                    min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it with the chat template.

    Args:
      texts: the corpus (e.g. :func:`corpus_texts` of a loaded benchmark).
      vocab_size: upper bound on the vocabulary, specials and the 256 byte tokens
        included; a small corpus may stop short of it (no pair left to merge).
      min_frequency: a pair must occur this often to be merged.

    Returns:
      A ``PreTrainedTokenizerFast`` with ``bos/eos/pad`` = ids 0/1/2 and
      ``chat_template`` set. Encoding adds no special tokens by itself.
    """
    if (isinstance(vocab_size, bool) or not isinstance(vocab_size, int)
            or vocab_size < _NUM_BYTES + 3):
        raise ValueError(f"vocab_size must be an integer >= {_NUM_BYTES + 3} "
                         f"(256 bytes + 3 special tokens), got {vocab_size!r}")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an integer >= 1, got {min_frequency!r}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts: empty corpus, nothing to train a tokenizer on")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}]: expected a string, got {type(t).__name__}")

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: "Answer: " already ends with the space before the answer.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[BOS, EOS, PAD],  # ids 0, 1, 2 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, padding_side="right",
    )


def corpus_texts(splits: Mapping[str, Sequence[Mapping]]) -> list[str]:
    """The text a benchmark's tokenizer should see, in a fixed order.

    For QA records: the rendered prompt ``Question: {q}\\nAnswer: `` and, as separate
    texts, every answer form (answer, paraphrases, perturbed answers, idk answer), so
    answers starting right after the prompt's trailing space get their own merges.
    Records with a ``text`` field (biographies, canaries, MUSE documents) add it.

    Args:
      splits: ``{split name: records}`` as :func:`jaxunlearn.data.tofu.load_benchmark`
        returns; split names are visited in sorted order.
    """
    out: list[str] = []
    for name in sorted(splits):
        for rec in splits[name]:
            if "text" in rec:
                out.append(rec["text"])
            for key in ("question", "paraphrased_question"):
                if rec.get(key):
                    out.append(f"Question: {rec[key]}\nAnswer: ")
            for key in ("answer", "paraphrased_answer", "idk_answer"):
                if rec.get(key):
                    out.append(rec[key])
            out.extend(rec.get("perturbed_answer") or ())
    return out


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and the chat template."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return directory


def load_tokenizer(directory: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`save_tokenizer` (local files only, no hub).

    Raises:
      DataError: the directory has no ``tokenizer.json``, or the tokenizer lacks a
        chat template or a bos/eos/pad token (the batch builder needs all of them).
    """
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise DataError(f"{directory}: no tokenizer.json (not a saved tokenizer directory)")
    tok = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    if not tok.chat_template:
        raise DataError(f"{directory}: tokenizer has no chat_template")
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tok, field) is None:
            raise DataError(f"{directory}: tokenizer has no {field}")
    return tok
