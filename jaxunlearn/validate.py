"""Checks shared by every command: names that become paths, and a tokenizer/model/data fit.

Each check raises :class:`ValidationError` (a :class:`~jaxunlearn.errors.UserError`, so
the CLI prints one line and exits with code 2) whose message names the config field or
file at fault, and returns its (normalised) input when it passes, so a caller can write
``out = root / path_component(name, "method.name")``.

Why these exist. ``output_dir`` is the user's choice, but names the *program* joins
under it (a method name, a split name, a model name from ``--model NAME=PATH``, a shard
name read from ``model.safetensors.index.json``) must stay one plain path component:
``"../x"`` or ``"a/b"`` would write (or read) outside the directory the user chose.
A tokenizer with more ids than the model's embedding rows, or a sequence longer than
the model's positions, does not fail in XLA: gathers clamp out-of-range indices, and
RoPE extrapolates, so such a run would silently train on wrong rows. They are caught
here before any work starts.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from jaxunlearn.errors import ValidationError

__all__ = ["ValidationError", "path_component", "inside", "check_vocab", "check_context"]


# Printable, no separators, no NUL: what every file system accepts as one component.
_UNSAFE = re.compile(r"[/\\\x00-\x1f\x7f]")
_MAX_COMPONENT = 255  # bytes; NAME_MAX on Linux and macOS


def path_component(value: Any, field: str) -> str:
    """``value`` if it is safe as ONE path component under a directory, else raise.

    Refused: non-strings, ``""``, ``"."``, ``".."``, anything containing ``/`` or ``\\``
    (a second component, or an absolute path), control characters, a leading ``.``
    (hidden files are this package's temporary names; ``..`` is the escape), leading or
    trailing whitespace, and names longer than 255 UTF-8 bytes.

    Args:
      value: the name, e.g. a method name, split name, or model name.
      field: what to call it in the message, e.g. ``"method.name"`` or ``"--model"``.
    Returns:
      ``value`` unchanged.
    """
    if not isinstance(value, str):
        raise ValidationError(f"{field}: expected a name (string), got {type(value).__name__}")
    if not value:
        raise ValidationError(f"{field}: empty name")
    if _UNSAFE.search(value):
        raise ValidationError(f"{field}: {value!r} must be a plain name: no '/', '\\' or "
                              "control characters (it becomes a file or directory name)")
    if value.startswith("."):
        raise ValidationError(f"{field}: {value!r} must not start with '.' (it becomes a file "
                              "or directory name; '..' would leave the output directory)")
    if value != value.strip():
        raise ValidationError(f"{field}: {value!r} has leading or trailing whitespace")
    if len(value.encode("utf-8")) > _MAX_COMPONENT:
        raise ValidationError(f"{field}: name is longer than {_MAX_COMPONENT} bytes")
    return value


def inside(root: str | os.PathLike, *parts: str, field: str) -> Path:
    """``root / parts...``, refused unless it resolves inside ``root``.

    Symbolic links are resolved on both sides, so a link planted under ``root`` that
    points elsewhere is refused too. ``root`` itself need not exist yet.

    Args:
      root: the directory the user chose (e.g. ``output_dir``).
      parts: components joined under it; each also passes :func:`path_component`.
      field: config field or option named in the message.
    """
    for p in parts:
        path_component(p, field)
    base = Path(root).resolve()
    target = Path(root, *parts).resolve()
    if target != base and base not in target.parents:
        raise ValidationError(f"{field}: {Path(root, *parts)} resolves to {target}, outside "
                              f"{base}")
    return Path(root, *parts)


def check_vocab(tokenizer: Any, config: Any, *, where: str = "model") -> None:
    """The tokenizer's ids must all index a row of the model's embedding.

    ``len(tokenizer)`` (base vocabulary plus added tokens) must be ``<= config.vocab_size``
    (a larger model vocabulary is fine: checkpoints often pad it to a multiple of 64),
    and so must every special token id the tokenizer uses.

    Args:
      tokenizer: a ``transformers`` tokenizer (anything with ``__len__`` and ``*_token_id``).
      config: a ``LlamaConfig`` (anything with ``vocab_size``).
      where: the model's path or name, for the message.
    """
    n = len(tokenizer)
    if n > config.vocab_size:
        raise ValidationError(f"{where}: tokenizer has {n} tokens but the model's vocabulary has "
                              f"{config.vocab_size} (vocab_size); use the tokenizer saved with "
                              "this model (data.tokenizer)")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        tid = getattr(tokenizer, name, None)
        if tid is not None and not 0 <= tid < config.vocab_size:
            raise ValidationError(f"{where}: tokenizer {name}={tid} is outside the model's "
                                  f"vocabulary of {config.vocab_size}")


def check_context(lengths: Iterable[int] | int, config: Any, *, field: str = "data.max_len",
                  what: str = "sequences") -> None:
    """Every sequence must fit the model's positions (``config.max_position_embeddings``).

    Args:
      lengths: the positions each sequence occupies (``Encoded.length``), or one
        planned maximum such as ``data.max_len``.
      config: a ``LlamaConfig``.
      field: the setting the user can change, named in the message.
      what: what the lengths are of, e.g. ``"forget10 sequences"``.
    """
    limit = config.max_position_embeddings
    if isinstance(lengths, int):
        if lengths > limit:
            raise ValidationError(f"{field}={lengths} exceeds the model's context of {limit} "
                                  "positions (max_position_embeddings)")
        return
    lengths = list(lengths) if not isinstance(lengths, Sequence) else lengths
    over = [n for n in lengths if n > limit]
    if over:
        raise ValidationError(f"{field}: {len(over)} of {len(lengths)} {what} are longer than "
                              f"the model's context of {limit} positions (longest {max(over)}); "
                              "lower data.max_len with data.truncate=true, or use a model with "
                              "a longer context")
