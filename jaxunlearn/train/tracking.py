"""Experiment tracking: metric records to a JSON-lines file, and to TensorBoard or W&B.

A :class:`Tracker` receives the loop's history records (``{"step": 12, "loss": ...,
"eval/forget_prob": ...}``, every ``train.log_every`` updates and whenever an evaluation
ran) and writes each

  * always, as one JSON line to ``<run dir>/metrics.jsonl`` (flushed per line, so a
    killed run keeps what it logged);
  * with ``train.tracker=tensorboard``, as scalars to a TensorBoard event file in the run
    directory (``tensorboardX``: ``pip install jaxunlearn[tensorboard]``);
  * with ``train.tracker=wandb``, to Weights & Biases (``pip install jaxunlearn[wandb]``),
    offline unless ``WANDB_MODE`` says otherwise: nothing leaves the machine by default.

The optional packages are imported only when asked for; :func:`require` checks for them
before any work, so a missing one is one line naming the ``pip install``.
On a resumed run the JSON-lines file keeps the records before the first step logged
again, so it never holds a step twice.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxunlearn.errors import ConfigError

__all__ = ["TRACKERS", "METRICS_FILE", "require", "Tracker"]

# tracker name -> (module it needs, the extra that installs it); "none": JSON lines only.
TRACKERS: dict[str, tuple[str, str] | None] = {
    "none": None,
    "tensorboard": ("tensorboardX", "tensorboard"),
    "wandb": ("wandb", "wandb"),
}
METRICS_FILE = "metrics.jsonl"
# History keys that locate a record rather than measure something.
_POSITION_KEYS = ("step", "epoch", "index")


def require(kind: str, field: str = "train.tracker") -> None:
    """Raises ``ConfigError`` (one line) when tracker ``kind`` is unknown or not installed."""
    if kind not in TRACKERS:
        raise ConfigError(f"{field} must be one of {', '.join(TRACKERS)}, got {kind!r}")
    need = TRACKERS[kind]
    if need is not None and importlib.util.find_spec(need[0]) is None:
        raise ConfigError(f"{field}={kind}: the {need[0]} package is not installed; "
                          f"pip install jaxunlearn[{need[1]}]")


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None  # JSON has no NaN/inf
    return v


class Tracker:
    """Writes metric records of one run; use as a context manager (closes the writers).

    Args:
      run_dir: the run's log directory (created).
      kind: ``none`` | ``tensorboard`` | ``wandb`` (see :data:`TRACKERS`).
      name: the run's name (W&B run name).
      config: the run's configuration (W&B ``config``).
      fresh: start the JSON-lines file empty (a new run); False keeps the records of the
        run being resumed, up to the first step logged now.
    """

    def __init__(self, run_dir: str | os.PathLike, *, kind: str = "none", name: str = "",
                 config: Mapping[str, Any] | None = None, fresh: bool = True):
        require(kind)
        self.run_dir = Path(run_dir)
        if kind != "none":  # their writers open files now; metrics.jsonl waits for a record
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        if fresh and self.path.exists():
            self.path.unlink()
        self._pending_trim = not fresh
        self._file = None
        self._writer = None
        self._wandb = None
        if kind == "tensorboard":
            import tensorboardX  # optional extra

            self._writer = tensorboardX.SummaryWriter(logdir=str(self.run_dir))
        elif kind == "wandb":
            import wandb  # optional extra

            os.environ.setdefault("WANDB_MODE", "offline")
            self._wandb = wandb.init(project="jaxunlearn", name=name or None,
                                     dir=str(self.run_dir), config=dict(config or {}),
                                     reinit=True)

    def _trim(self, step: int) -> None:
        """Drops records at or after ``step`` (a resumed run logs them again)."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) < step]
        self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def log(self, record: Mapping[str, Any]) -> None:
        """One history record (must hold ``step``) to every destination."""
        step = int(record["step"])
        if self._pending_trim:
            self._trim(step)
            self._pending_trim = False
        if self._file is None:  # created with the first record: a run refused before
            self.run_dir.mkdir(parents=True, exist_ok=True)  # its first update leaves none
            self._file = open(self.path, "a", encoding="utf-8")
        row = {k: _json_value(v) for k, v in record.items()}
        self._file.write(json.dumps(row, sort_keys=True) + "\n")
        self._file.flush()
        scalars = {k: float(v) for k, v in record.items()
                   if k not in _POSITION_KEYS and isinstance(v, (int, float))}
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
