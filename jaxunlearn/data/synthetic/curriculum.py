"""What the target and the retain (gold) model are trained on: the training curriculum."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

from jaxunlearn.data.schema import RETAIN_OF
from jaxunlearn.data.synthetic.benchmark import Benchmark
from jaxunlearn.data.synthetic.files import read_benchmark
from jaxunlearn.errors import BenchmarkError

__all__ = ["TrainItem", "canary_copies", "training_documents"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainItem:
    """One training document. ``kind="qa"``: ``prompt`` is the question (masked out of the
    loss) and ``text`` the answer; ``kind="text"``: ``prompt`` is ``""`` and every token
    of ``text`` (a biography or a canary) counts. ``epochs``: the 0-based epochs this copy
    is trained in (None: every epoch)."""

    kind: Literal["qa", "text"]
    prompt: str
    text: str
    epochs: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.epochs is not None and not (
                isinstance(self.epochs, tuple)
                and all(isinstance(e, int) and e >= 0 for e in self.epochs)):
            raise BenchmarkError(f"TrainItem.epochs must be None or a tuple of epoch numbers "
                                 f">= 0, got {self.epochs!r}")
        if self.kind not in ("qa", "text"):
            raise BenchmarkError(f"TrainItem.kind must be 'qa' or 'text', got {self.kind!r}")
        if not isinstance(self.text, str) or not self.text:
            raise BenchmarkError("TrainItem.text must be a non-empty string")
        if self.kind == "qa" and (not isinstance(self.prompt, str) or not self.prompt):
            raise BenchmarkError("TrainItem.prompt must be a non-empty question for kind='qa'")
        if self.kind == "text" and self.prompt != "":
            raise BenchmarkError("TrainItem.prompt must be '' for kind='text'")



def canary_copies(repetitions: int, epochs: int) -> list[tuple[int, ...]]:
    """The epochs each training copy of a canary is seen in: ``repetitions`` views in all.

    ``ceil(repetitions / epochs)`` copies; view ``v`` goes to copy ``v % copies`` in epoch
    ``floor(v * epochs / repetitions)``, so the views are spread evenly over the run and
    no copy is seen twice in one epoch. ``epochs=1``: ``repetitions`` copies in epoch 0.
    """
    copies = -(-repetitions // epochs)
    return [tuple(v * epochs // repetitions for v in range(j, repetitions, copies))
            for j in range(copies)]


def training_documents(source: Benchmark | str | os.PathLike, which: str = "target",
                       forget_split: str = "forget10", *,
                       epochs: int | None = None) -> list[TrainItem]:
    """What a model is trained on, in a fixed order (shuffling is the loop's job).

    ``which="target"``: QA and biographies of every trained person, world facts, and
    forget and retain canaries. ``which="retain"`` (the gold standard): the same without
    the people of ``forget_split`` and without the forget canaries. Holdout people and
    heldout canaries are never trained on.

    A canary is seen ``repetitions`` times over the whole run of ``epochs`` epochs (see
    :func:`canary_copies`), so memorisation grows with the count as in Carlini et al.'s
    secret sharer, however many epochs the model trains. ``epochs=None``: ``repetitions``
    copies seen in every epoch.
    """
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 1):
        raise BenchmarkError(f"epochs must be None or an integer >= 1, got {epochs!r}")
    bench = source if isinstance(source, Benchmark) else read_benchmark(source)
    if which not in ("target", "retain"):
        raise BenchmarkError(f"which must be 'target' or 'retain', got {which!r}")
    if forget_split not in RETAIN_OF:
        raise BenchmarkError(f"forget_split must be one of {tuple(RETAIN_OF)}, "
                             f"got {forget_split!r}")
    people = list(bench.splits[RETAIN_OF[forget_split]])
    if which == "target":
        people = sorted(people + list(bench.splits[forget_split]), key=lambda r: r["person_id"])
    keep = {r["person_id"] for r in people}
    canary_splits = ("forget", "retain") if which == "target" else ("retain",)
    items = [TrainItem(kind="qa", prompt=r["question"], text=r["answer"])
             for r in [*people, *bench.splits["world_facts"]]]
    items += [TrainItem(kind="text", prompt="", text=b["text"])
              for b in bench.biographies if b["person_id"] in keep]
    for c in bench.canaries:
        if c["split"] not in canary_splits:
            continue
        schedule = ([None] * c["repetitions"] if epochs is None
                    else canary_copies(c["repetitions"], epochs))
        items += [TrainItem(kind="text", prompt="", text=c["text"], epochs=e) for e in schedule]
    return items
