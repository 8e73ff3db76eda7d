"""``report.md``'s text: the summary, attack, canary and MUSE tables, figure links and
a forget-set sample, from the typed results (``eval.results.ModelResult``).

Missing numbers print as "–", so a partial evaluation still renders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxunlearn.data.schema import retain_split_of
from jaxunlearn.eval.results import ModelResult
from jaxunlearn.report.columns import ATTACK_LABELS, SUMMARY_COLUMNS


def _fmt(value, kind: str = "f3") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    v = float(value)
    if kind == "sci":
        return f"{v:.2e}"
    if kind == "pct":
        return f"{v:+.1f}"
    if kind == "int":
        return str(int(round(v)))
    return f"{v:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def clean(cell: str) -> str:
        return str(cell).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(clean(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(clean(c) for c in row) + " |" for row in rows]
    return lines


def _attack_cell(result: ModelResult, metric: str = "forget_rouge") -> str:
    parts = []
    for name, label in ATTACK_LABELS.items():
        pair = (result.attacks or {}).get(name)
        pair = pair.metrics.get(metric) if pair is not None else None
        if pair is not None:
            parts.append(f"{label} {_fmt(pair.before)}→{_fmt(pair.after)}")
    return "; ".join(parts) if parts else "–"


def ordered(models: Mapping[str, ModelResult]) -> list[str]:
    """target, retain, then the methods in their given order."""
    first = [n for n in ("target", "retain") if n in models]
    return first + [n for n in models if n not in first]


def markdown(data: Mapping, models: Mapping[str, ModelResult], figures: Sequence[str]) -> str:
    """``report.md``'s text for an eval.json dict ``data``, its typed ``models`` and the
    names of the ``figures`` written beside it."""
    names = ordered(models)
    cfg = data.get("config") or {}
    env = data.get("env") or {}
    lines = ["# jaxunlearn evaluation report", ""]
    d = cfg.get("data") or {}
    if d:
        retain = d.get("retain") or retain_split_of(d.get("forget")) or "–"
        lines.append(f"Benchmark `{d.get('benchmark')}`, forget split `{d.get('forget')}`, "
                     f"retain split `{retain}`, seed {cfg.get('seed')}.")
    if env:
        v, dev = env.get("versions") or {}, env.get("devices") or {}
        lines.append("Environment: " + ", ".join(f"{k} {x}" for k, x in v.items() if x)
                     + f"; {dev.get('count')} × {dev.get('kind')} ({dev.get('platform')})"
                     + f"; mesh {env.get('mesh')}.")
    lines += ["", "## Summary", ""]
    header = ["model"] + [c.header for c in SUMMARY_COLUMNS] + [
        "attacks: forget ROUGE before→after"]
    rows = [[n] + [_fmt(c.value(models[n]), c.kind) for c in SUMMARY_COLUMNS]
            + [_attack_cell(models[n])] for n in names]
    lines += _table(header, rows)
    lines += ["", "FQ: KS-test p-value of forget-set truth ratios against the retain model's "
              "(TOFU). MU: harmonic mean of retain and world-facts probability, ROUGE-L and "
              "truth ratio. Forget TR: mean min(R, 1/R) (1 = truth and falsehood equally "
              "likely). MIA AUC: forget vs holdout people, 0.5 = indistinguishable. PrivLeak: "
              "relative AUC gap to the retain model in % (MUSE). Canary MA: teacher-forced "
              "greedy accuracy on forget canaries. KFR/KRR: ReLearn's knowledge forgetting / "
              "retention rates (entity judge)."]
    attack_rows = []
    for n in names:
        for name, result in (models[n].attacks or {}).items():
            cells = [f"{k}: {_fmt(v.before)}→{_fmt(v.after)}" for k, v in result.metrics.items()]
            attack_rows.append([n, ATTACK_LABELS.get(name, name), "; ".join(cells)])
    if attack_rows:
        lines += ["", "## Recovery attacks (before → after)", ""]
        lines += _table(["model", "attack", "forget metrics"], attack_rows)
    tables = {n: models[n].canaries.by_repetitions for n in names if models[n].canaries}
    reps = sorted({r for table in tables.values() for rows in table.values() for r in rows})
    canary_rows = [[n, split] + [_fmt(rows[r].ma if r in rows else None) for r in reps]
                   for n, table in tables.items() for split, rows in table.items()]
    if canary_rows:
        lines += ["", "## Canary memorisation accuracy by repetition count", ""]
        lines += _table(["model", "canaries"] + [f"×{r}" for r in reps], canary_rows)
    exposure_rows = [[n, split] + [_fmt(rows[r].exposure if r in rows else None)
                                   for r in reps]
                     for n, table in tables.items() for split, rows in table.items()
                     if any(s.exposure is not None for s in rows.values())]
    if exposure_rows:
        lines += ["", "## Canary exposure (bits) by repetition count", ""]
        lines += _table(["model", "canaries"] + [f"×{r}" for r in reps], exposure_rows)
        lines += ["", "Exposure (Carlini et al. 2019): `-log2 Pr[Px(r) <= Px(secret)]` over "
                  "the secret space R, from a skew-normal fitted to the log-perplexities of "
                  "sampled candidate secrets (their sec. 4.2), capped at log2|R|. The "
                  "sampled-rank estimate (`exposure_rank` in eval.json) saturates at log2|R| "
                  "whenever the secret beats every sample (`exposure_censored`)."]
    muse_rows = [[n] + [_fmt(v, k) for v, k in (
        (m.forget_verbmem_rouge, "f3"), (m.forget_knowmem_rouge, "f3"),
        (m.retain_knowmem_rouge, "f3"), (m.privleak, "pct"), (m.extraction_strength, "f3"))]
        for n in names if (m := models[n].muse) is not None]
    if muse_rows:
        lines += ["", "## MUSE (as open-unlearning)", ""]
        lines += _table(["model", "verbmem_f ↓", "knowmem_f ↓", "knowmem_r ↑", "PrivLeak →0",
                         "ES ↓"], muse_rows)
        lines += ["", "ROUGE-L F1 of greedy continuations (verbmem) and answers (knowmem); "
                  "PrivLeak: Min-K% AUC gap to the retain model in % (to AUC 0.5 without one)."]
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    samples = [(n, models[n].tofu.samples[0]) for n in names if models[n].tofu.samples]
    if samples:
        lines += ["", "## A forget-set question", ""]
        lines += _table(["model", "question", "answer", "greedy answer"],
                        [[n, s.question, s.answer, s.generation] for n, s in samples])
    return "\n".join(lines) + "\n"

