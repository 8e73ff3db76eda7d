"""MUSE-style membership inference (Shi et al. 2024): can an attacker tell the forget
answers (members) from the holdout people's (non-members)?

LOSS, ZLib, Min-K% and Min-K%++ scores of every answer, AUC of forget vs holdout, and
PrivLeak: the AUC's relative gap to the retain model's, in % (MUSE's uses Min-K%).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxunlearn.data.schema import HOLDOUT
from jaxunlearn.eval import mia
from jaxunlearn.eval.groups.base import GroupInputs, MetricGroup
from jaxunlearn.eval.results import MIA_ATTACKS, MIAResult

__all__ = ["privleak_against", "compute", "GROUP"]


def privleak_against(auc: Mapping[str, float | None],
                     reference: MIAResult | None) -> dict[str, float | None]:
    """PrivLeak of each attack against the reference AUCs (None where there is no
    reference, or the reference AUC is 1 and PrivLeak undefined)."""
    out = {}
    for attack in MIA_ATTACKS:
        ref = None if reference is None else reference.auc.get(attack)
        value = auc.get(attack)
        out[attack] = (None if ref is None or ref == 1.0 or value is None
                       else mia.privleak(value, ref))
    return out


def compute(inputs: GroupInputs, done: Mapping[str, Any]) -> MIAResult | None:
    m = inputs.measurement
    if HOLDOUT not in m.plans:
        return None
    sides = []
    for split in ("forget", HOLDOUT):
        s = m.scores.take(m.plans[split].answer)
        texts = [inputs.tokenizer.decode(s.labels[i][s.mask[i] > 0].tolist(),
                                         skip_special_tokens=True)
                 for i in range(len(s.labels))]
        sides.append({
            "loss": np.asarray(mia.loss_score(s.token_logp, s.mask)),
            "zlib": np.asarray(mia.zlib_score(s.token_logp, s.mask, texts)),
            "min_k": s.min_k, "min_k_plus_plus": s.min_k_plus_plus})
    auc = {a: mia.auc(sides[0][a], sides[1][a]) for a in MIA_ATTACKS}
    reference = inputs.reference.mia if inputs.reference is not None else None
    return MIAResult(auc=auc, privleak=privleak_against(auc, reference))


GROUP = MetricGroup(name="mia", compute=compute)
