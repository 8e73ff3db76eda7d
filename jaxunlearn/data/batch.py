"""Batches: token ids, shifted labels and the answer-only loss mask.

Convention used everywhere in jaxunlearn: ``logits[b, t]`` scores ``labels[b, t]``.
The batch builder shifts; losses never do.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Batch(NamedTuple):
    """One batch of sequences, all arrays ``[B, T]``.

    Attributes:
      input_ids: int32 token ids fed to the model.
      labels: int32 ids of the *next* token (``input_ids`` shifted left by one).
      loss_mask: float32, 1.0 on tokens that count in the loss (answer tokens), else 0.0.
      attention_mask: int32, 1 for real tokens, 0 for padding.
    """

    input_ids: np.ndarray
    labels: np.ndarray
    loss_mask: np.ndarray
    attention_mask: np.ndarray
