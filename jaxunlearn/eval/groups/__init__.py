"""The metric groups an evaluation may select (``eval.metrics``), one module each.

Each group reduces the model's one measurement pass (``eval.measure``) to its typed
result (``eval.results``); ``REGISTRY`` lists them in the order they are computed
(``options.GROUPS``), so ``eval.suite`` is a loop over it.
"""

from jaxunlearn.eval.groups import canaries, extraction, knowledge, mia, muse, tofu
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup

__all__ = ["REGISTRY", "GroupInputs", "MetricGroup"]

REGISTRY: dict[str, MetricGroup] = {
    g.name: g for g in (tofu.GROUP, mia.GROUP, canaries.GROUP, extraction.GROUP, knowledge.GROUP,
                        muse.GROUP)}
