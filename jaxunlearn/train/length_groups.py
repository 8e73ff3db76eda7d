"""Length-grouped batches for training on documents of very different lengths.

Padding every batch to the longest document wastes compute; a padded length per batch
compiles the step once per length. :func:`choose_lengths` picks a few lengths that
balance the two, and :func:`grouped_source` batches sequences of similar length as a
deterministic, resumable :class:`~jaxunlearn.train.loop.BatchSource`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from jaxunlearn.data.batch import collate
from jaxunlearn.train.loop import BatchSource

__all__ = ["choose_lengths", "grouped_source"]


def choose_lengths(lengths: Sequence[int], *, epochs: float = 1.0,
                   compile_tokens: int = 50_000, max_shapes: int = 4,
                   multiple: int = 16) -> tuple[int, ...]:
    """Padded lengths (multiples of ``multiple``, the largest fitting the longest sequence)
    for length-grouped batches.

    Each extra length saves padding but costs one more compilation of the train step;
    the choice minimises ``epochs * sum(padded lengths) + compile_tokens * len(shapes)``
    (a compilation costs about as much CPU time as ``compile_tokens`` trained tokens of
    a small model), over at most ``max_shapes`` lengths.
    """
    if not lengths:
        raise ValueError("lengths: no sequences")
    top = -(-max(lengths) // multiple) * multiple
    candidates = range(multiple, top, multiple)
    lengths = np.sort(np.asarray(lengths))
    best, best_cost = (top,), None
    for k in range(0, max_shapes):
        for cut in itertools.combinations(candidates, k):
            bounds = np.asarray(cut + (top,))
            cost = epochs * bounds[np.searchsorted(bounds, lengths)].sum() + compile_tokens * (k + 1)
            if best_cost is None or cost < best_cost:
                best, best_cost = tuple(int(b) for b in bounds), cost
    return best


def grouped_source(encoded, rows: int, *, seed: int, pad_id: int, lengths: Sequence[int],
                   active: Callable[[int], Sequence[bool]] | None = None) -> BatchSource:
    """Batches of ``rows`` sequences of similar length, a pure function of ``(seed, epoch)``.

    Each epoch: sequences are shuffled by ``default_rng([seed, epoch])``, grouped by the
    smallest of ``lengths`` they fit, cut into batches within each group (the last batch
    of a group wraps around to the group's start, so every row is real), and the batches
    are shuffled by ``default_rng([seed, epoch, 1])``. Batches are ``[rows, L]``.
    ``active(epoch)[i]`` False keeps sequence ``i`` in its place with a zero loss mask
    that epoch (a canary copy scheduled for other epochs): batches, shapes and the
    number of steps stay those of every epoch.
    """
    bounds = np.asarray(sorted(lengths))
    group_of = np.searchsorted(bounds, [e.length for e in encoded])
    if group_of.max() >= len(bounds):
        raise ValueError(f"lengths: {bounds[-1]} is shorter than the longest sequence")
    sizes = np.bincount(group_of, minlength=len(bounds))
    per_group = [-(-int(n) // rows) for n in sizes]

    def epoch_batches(epoch: int):
        on = [True] * len(encoded) if active is None else list(active(epoch))
        seqs = [e if keep else e._replace(counted=np.zeros_like(e.counted))
                for e, keep in zip(encoded, on, strict=True)]
        order = np.random.default_rng([seed, epoch]).permutation(len(encoded))
        chunks = []
        for g, n in enumerate(per_group):
            members = order[group_of[order] == g]
            members = np.resize(members, n * rows)  # cyclic fill of the last batch
            chunks += [(int(bounds[g]), members[i * rows:(i + 1) * rows]) for i in range(n)]
        for j in np.random.default_rng([seed, epoch, 1]).permutation(len(chunks)):
            length, idx = chunks[j]
            yield collate([seqs[i] for i in idx], length, pad_id)

    return BatchSource(steps_per_epoch=sum(per_group), epoch_batches=epoch_batches)

