"""GGUF tokenizer metadata -> the byte-level BPE tokenizer it describes, as a
`transformers.PreTrainedTokenizerFast` (vocabulary, merges, pre-tokeniser, special and added
tokens, chat template).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jaxunlearn.errors import GGUFError
from jaxunlearn.models.gguf_file import meta_value, read_header

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

# Regexes of the pre-tokenisers llama.cpp names in `tokenizer.ggml.pre` (the models' own tokenizer.json).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_PRE_GPT2 = ("gpt-2", "gpt2", "mpt", "olmo", "jais")
_PRE_DIGITS = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_PRE_LLAMA3 = ("llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "dbrx", "smaug-bpe")
_PRE_QWEN2 = ("qwen2", "deepseek-r1-qwen", "megrez")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


def _pre_tokenizer(pre: str, path: Path):
    """The `tokenizers` pre-tokeniser for llama.cpp's `tokenizer.ggml.pre` name."""
    from tokenizers import Regex, pre_tokenizers as pt

    gpt2 = pt.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's own split regex
    if pre in _PRE_GPT2:
        return gpt2
    if pre in _PRE_DIGITS:  # llama.cpp: split every \p{N} off first, then GPT-2's regex on the rest
        return pt.Sequence([pt.Digits(individual_digits=True), gpt2])
    for names, split in ((_PRE_LLAMA3, _LLAMA3_SPLIT), (_PRE_QWEN2, _QWEN2_SPLIT)):
        if pre in names:
            return pt.Sequence([pt.Split(Regex(split), behavior="isolated"),
                                pt.ByteLevel(add_prefix_space=False, use_regex=False)])
    known = sorted(_PRE_GPT2 + _PRE_DIGITS + _PRE_LLAMA3 + _PRE_QWEN2)
    raise GGUFError(f"{path}: tokenizer.ggml.pre={pre!r} not supported (supported: {known})")


def tokenizer_from_gguf(path: str | Path) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer described by a GGUF file, as a `transformers.PreTrainedTokenizerFast`.

    Vocabulary and merges from `tokenizer.ggml.tokens` / `.merges`; the pre-tokeniser named by
    `tokenizer.ggml.pre` (for SmolLM2's `smollm`: digits split one by one, then GPT-2's regex, as
    llama.cpp and the original tokenizer.json do); control tokens (type 3) become special added tokens
    and user-defined ones (type 4) plain added tokens, so they are matched whole; bos/eos/unk/pad ids,
    `add_bos_token` / `add_eos_token` (default False) and `tokenizer.chat_template` are carried over.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path, meta, _ = read_header(path)
    if (kind := meta.get("tokenizer.ggml.model")) != "gpt2":
        raise GGUFError(f"{path}: tokenizer.ggml.model={kind!r} not supported (only byte-level BPE, 'gpt2')")
    tokens = meta_value(meta, "tokenizer.ggml.tokens", path)
    types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    byte_char = bytes_to_unicode()
    alphabet = set(byte_char.values())
    # ordinary tokens are spelled in GPT-2's byte alphabet; respell the odd raw one. Added tokens keep
    # their raw text: that is what the input contains and what they must match.
    spelled = [t if k in (_CONTROL, _USER_DEFINED) or set(t) <= alphabet
               else "".join(byte_char[b] for b in t.encode("utf-8")) for t, k in zip(tokens, types)]
    vocab: dict[str, int] = {}
    for i, token in enumerate(spelled):
        vocab.setdefault(token, i)  # a duplicated spelling keeps its first id
    merges = []
    for i, merge in enumerate(meta_value(meta, "tokenizer.ggml.merges", path)):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise GGUFError(f"{path}: tokenizer.ggml.merges[{i}]={merge!r} is not two tokens separated by a space")
        merges.append((parts[0], parts[1]))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    # older files name no pre-tokeniser; GPT-2's regex is what transformers assumes for them too
    backend.pre_tokenizer = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "gpt-2"), path)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types) if k == _CONTROL])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types) if k == _USER_DEFINED])

    def special(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}")
        if index is not None and not 0 <= index < len(tokens):
            raise GGUFError(f"{path}: tokenizer.ggml.{key}={index} is outside the {len(tokens)}-token vocabulary")
        return None if index is None else spelled[index]

    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=special("bos_token_id"), eos_token=special("eos_token_id"),
        unk_token=special("unknown_token_id"), pad_token=special("padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
        add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
    )
