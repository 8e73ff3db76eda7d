"""Evaluation during unlearning (``train.eval_every``) and keeping the best model
(``train.keep_best``): a ``train.loop.Hook`` over ``eval.progress``.

Every ``eval_every`` updates (and after the last) the model being unlearned is scored on
the fixed ``eval.progress`` subset; the numbers go into that step's history record as
``eval/<metric>`` (so into ``unlearn.json`` and ``metrics.jsonl``). With ``keep_best`` the
model of the best evaluation so far is saved (an HF directory written atomically, with
``best.json``: step, metric, value) beside the checkpoints, so a resumed run still knows
it; the command then saves that model instead of the last one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from flax import nnx

from jaxunlearn import storage
from jaxunlearn.eval import progress
from jaxunlearn.models import load_pretrained, save_pretrained
from jaxunlearn.train.loop import Hook

__all__ = ["BEST_FILE", "ProgressMonitor"]

BEST_FILE = "best.json"


class ProgressMonitor:
    """Builds the evaluation hook of one unlearning run and remembers the best step.

    Args:
      model: the target (its graph gives the structure the loop's parameters fill).
      config: its ``LlamaConfig`` (to save the best model).
      tokenizer: the model's tokenizer.
      subset: the fixed records (``eval.progress.ProgressSet``).
      every: evaluate after every ``every``-th update (and after the last).
      batch_size, max_new_tokens: ``eval.batch_size`` / ``eval.max_new_tokens``.
      retain_truth_ratios: the retain model's forget truth ratios on ``subset`` (enables
        ``forget_quality``), or None.
      keep_best: the metric to keep the best model by, or None.
      best_dir: where the best model is kept (required with ``keep_best``).
      resume: keep what an earlier, interrupted run found best (else it is cleared).
    """

    def __init__(self, model, config, tokenizer, subset: progress.ProgressSet, *, every: int,
                 batch_size: int, max_new_tokens: int,
                 retain_truth_ratios: np.ndarray | None = None, keep_best: str | None = None,
                 best_dir: Path | None = None, resume: bool = False):
        if keep_best is not None and best_dir is None:
            raise ValueError("ProgressMonitor: keep_best needs best_dir")
        self.graphdef, _ = nnx.split(model, nnx.Param)
        self.config, self.tokenizer, self.subset = config, tokenizer, subset
        self.every, self.batch_size, self.max_new_tokens = every, batch_size, max_new_tokens
        self.retain_truth_ratios = retain_truth_ratios
        self.keep_best, self.best_dir = keep_best, best_dir
        self.best: dict | None = None  # {"metric", "step", "value"}
        if best_dir is not None:
            if resume and (best_dir / BEST_FILE).is_file():
                self.best = json.loads((best_dir / BEST_FILE).read_text(encoding="utf-8"))
            else:
                self.clear()

    def evaluate(self, step: int, state) -> dict[str, float]:
        """The progress metrics after update ``step``; saves the model when it is the best."""
        model = nnx.merge(self.graphdef, state.params)
        numbers = progress.progress_numbers(
            model, self.tokenizer, self.subset, batch_size=self.batch_size,
            max_new_tokens=self.max_new_tokens, retain_truth_ratios=self.retain_truth_ratios)
        if self.keep_best is not None:
            value = numbers[self.keep_best]
            if progress.is_better(self.keep_best, value, self.best and self.best["value"]):
                self.best = {"metric": self.keep_best, "step": step, "value": value}
                save_pretrained(model, self.config, self.best_dir, tokenizer=self.tokenizer,
                                extra_json={BEST_FILE: self.best}, field="output_dir")
        return numbers

    def hook(self) -> Hook:
        return Hook(every=self.every, fn=self.evaluate, name="eval")

    def best_model(self):
        """The saved best model (None without ``keep_best`` or before any evaluation)."""
        if self.best is None or self.best_dir is None:
            return None
        model, _ = load_pretrained(self.best_dir)
        return model

    def clear(self) -> None:
        """Removes the kept best model (only a directory this tool wrote)."""
        if self.best_dir is not None and self.best_dir.is_dir() and storage.is_owned(self.best_dir):
            shutil.rmtree(self.best_dir)
