"""The report's summary columns: which number of a ``ModelResult`` each shows, its
header (arrows say which direction is better) and its format; the attack labels.

``tables`` prints them in ``report.md``'s summary and ``figures`` draws some as bar panels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from jaxunlearn.eval.results import CanaryScores, ModelResult, SplitScores


def _split(name: str, kind: str) -> Callable[[ModelResult], float | None]:
    return lambda r: getattr(r.tofu.splits.get(name, SplitScores()), kind)


def _forget_canary_ma(r: ModelResult) -> float | None:
    return (r.canaries.splits.get("forget", CanaryScores()) if r.canaries else CanaryScores()).ma


@dataclasses.dataclass(frozen=True)
class Column:
    """A summary-table column: header (arrows say which direction is better), the
    number it shows, and its format (``sci``, ``f3``, ``pct``)."""

    header: str
    value: Callable[[ModelResult], float | None]
    kind: str = "f3"


FQ = Column("FQ ↑", lambda r: r.tofu.forget_quality, "sci")
MU = Column("MU ↑", lambda r: r.tofu.model_utility)
FORGET_ROUGE = Column("forget ROUGE ↓", _split("forget", "rouge"))
FORGET_PROB = Column("forget prob ↓", _split("forget", "prob"))
RETAIN_ROUGE = Column("retain ROUGE ↑", _split("retain", "rouge"))
MIA_AUC = Column("MIA AUC (Min-K%)", lambda r: r.mia.auc.get("min_k") if r.mia else None)
CANARY_MA = Column("canary MA ↓", _forget_canary_ma)
SUMMARY_COLUMNS = (
    FQ, MU, FORGET_ROUGE, FORGET_PROB,
    Column("forget TR ↑", _split("forget", "truth_ratio")),
    RETAIN_ROUGE,
    Column("retain prob ↑", _split("retain", "prob")),
    MIA_AUC,
    Column("PrivLeak →0", lambda r: r.mia.muse_privleak if r.mia else None, "pct"),
    CANARY_MA,
    Column("KFR ↑", lambda r: r.knowledge.kfr if r.knowledge else None),
    Column("KRR ↑", lambda r: r.knowledge.krr if r.knowledge else None),
)
ATTACK_LABELS = {"quantize_8bit": "8-bit", "quantize_4bit": "4-bit", "relearn": "relearn"}
