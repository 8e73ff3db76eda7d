"""What a metric group is: a name, and a function from one measurement to a typed result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.muse import MuseEvalData
from jaxunlearn.eval.measure import Measurement
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.results import ModelResult

__all__ = ["GroupInputs", "MetricGroup"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupInputs:
    """What every group computes from.

    Attributes:
      model, tokenizer: the evaluated model (never modified) and its tokenizer.
      options: what to compute and on how much data.
      measurement: the model's one scoring and decoding pass over the QA data (None
        on MUSE, whose group measures its own data).
      reference: the retain model's result (PrivLeak's reference AUCs), or None.
      retain_truth_ratios: ``[M]`` the retain model's forget truth ratios (forget
        quality's reference), or None.
      judge, judge_name: the model whose perplexity enters the Linguistic Score (None:
        ``model``) and the name it is reported under.
      muse: the MUSE splits (``data.muse.load_muse_eval``) when the benchmark is MUSE.
    """

    model: Any
    tokenizer: Any
    options: SuiteConfig
    measurement: Measurement | None
    reference: ModelResult | None = None
    retain_truth_ratios: np.ndarray | None = None
    judge: Any = None
    judge_name: str | None = None
    muse: MuseEvalData | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricGroup:
    """A metric group selectable with ``eval.metrics``.

    ``compute(inputs, done)`` returns the group's typed result (the ``ModelResult``
    field of the same name), or None when the data it needs is absent; ``done`` holds
    the results of the groups computed before it, by name.
    """

    name: str
    compute: Callable[[GroupInputs, Mapping[str, Any]], Any]
