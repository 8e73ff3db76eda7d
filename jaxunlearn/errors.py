"""Every error a user can fix: bad input, bad configuration, data or files that do not fit.

The CLI turns a :class:`UserError` into one line on stderr and exit code 2; anything
else is a bug and keeps its traceback (exit 1). Each kind below says which input it is
about; its message names the file, record and field (or the config key).

The modules that raise these re-export them under their old names
(``jaxunlearn.config.ConfigError``, ``jaxunlearn.data.tofu.DataError``, ...), so code
written against those paths keeps working.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class UserError(ValueError):
    """Bad input or configuration; the message names the file, record and field."""


class ConfigError(UserError):
    """A configuration problem the user can fix; the message names the key and file."""


class DataError(UserError):
    """User data that cannot be used: malformed, mistyped, missing or overlapping."""


class BenchmarkError(UserError):
    """A bad synthetic-benchmark configuration, a bad benchmark directory, or a refused
    write."""


class AugmentError(UserError):
    """Records or augmenter settings that ReLearn's augmentation cannot use."""


class ValidationError(UserError):
    """An input that would escape a directory, or a tokenizer/model/data that do not fit."""


class CheckpointError(UserError):
    """A checkpoint that is missing, partial, of another shape, or of an unsupported kind."""


class GGUFError(UserError):
    """A GGUF file that is malformed, truncated, or describes something this loader cannot
    express."""


class MeshError(UserError):
    """A mesh that does not fit the devices or the batch."""


class MethodError(UserError):
    """Unknown method, unknown or invalid hyper-parameter; the message names
    ``method.<field>``."""


class ResourceError(UserError):
    """Work that cannot fit this machine's memory or disk; the message names the setting."""


class StorageError(UserError):
    """An output path that would replace foreign data, leave its root, or is in use."""


class YAMLInputError(UserError):
    """A YAML file or value that is unreadable, ambiguous or too large once expanded."""


class NonFiniteError(UserError):
    """A step produced a NaN/Inf loss or gradient; the loop stopped at the last good state.

    Attributes:
      state: the last good ``TrainState`` (the failing step's input).
      history: the records of the updates done.
      checkpoint: where that state was saved, or None.
      step: the 1-based number of the update that failed.
    """

    def __init__(self, message: str, *, state: Any, history: list[dict],
                 checkpoint: Path | None, step: int):
        super().__init__(message)
        self.state, self.history, self.checkpoint, self.step = state, history, checkpoint, step
