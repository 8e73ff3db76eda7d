"""The report's PNG figures: forget quality against model utility, per-method bars,
canary memorisation curves and per-record distributions, from the typed results.

Figures use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch, no display needed); each is written atomically, and one without data
(e.g. no canaries) is skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxunlearn import storage
from jaxunlearn.eval.results import ModelResult
from jaxunlearn.report.columns import (
    CANARY_MA,
    FORGET_PROB,
    FORGET_ROUGE,
    FQ,
    MIA_AUC,
    MU,
)

FIGURES = ("fq_vs_mu.png", "methods.png", "canaries.png", "distributions.png")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    storage.write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _log_floor(values) -> float:
    """Where a p-value of 0 goes on a log axis: a decade below the smallest positive one."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return min(positive) / 10 if positive else 1e-30


Results = Mapping[str, ModelResult]


def spread_labels(ys: Sequence[float], gap: float, low: float = 0.0,
                  high: float = 1.0) -> list[float]:
    """Label heights near ``ys`` (axes fractions), in the same order, at least ``gap`` apart
    and inside ``[low, high]`` (needs ``(len(ys) - 1) * gap <= high - low``): pushed up from
    the bottom where they crowd, then down from the top where that ran over ``high``."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    out = [0.0] * len(ys)
    level = low - gap
    for i in order:
        level = max(min(max(ys[i], low), high), level + gap)
        out[i] = level
    level = high + gap
    for i in reversed(order):
        level = min(out[i], level - gap)
        out[i] = level
    return out


def _fq_vs_mu(models: Results, names: list[str], path: Path) -> bool:
    pts = [(n, _num(models[n].tofu.model_utility), _num(models[n].tofu.forget_quality))
           for n in names]
    pts = [(n, mu, fq) for n, mu, fq in pts if math.isfinite(mu) and math.isfinite(fq)]
    if not pts:
        return False
    fig = _figure(7.5, 5.0)
    ax = fig.add_axes((0.1, 0.11, 0.6, 0.8))
    floor = _log_floor([fq for _, _, fq in pts])
    ys = [max(fq, floor) for _, _, fq in pts]
    for (n, mu, fq), y in zip(pts, ys):
        style = {"target": ("tab:red", "*", 180), "retain": ("tab:green", "P", 140)}.get(
            n, ("tab:blue", "o", 50))
        # A p-value of exactly 0 sits at the floor, drawn as a downward triangle.
        marker = style[1] if fq > 0 else "v"
        ax.scatter([mu], [y], c=style[0], marker=marker, s=style[2], zorder=3)
    ax.set_yscale("log")
    xs = [mu for _, mu, _ in pts]
    pad = max(0.02, 0.05 * (max(xs) - min(xs)))
    ax.set_xlim(min(xs) - pad, max(xs) + pad)
    lo, hi = math.log10(min(ys)), math.log10(max(ys))
    margin = max(0.3, 0.06 * (hi - lo))
    ax.set_ylim(10 ** (lo - margin), 10 ** (hi + margin))
    # Labels in a column right of the plot, each joined to its point by a thin line: they
    # cannot overlap however close the points are.
    to_axes = ax.transAxes.inverted()
    fracs = [to_axes.transform(ax.transData.transform((mu, y)))[1] for (_, mu, _), y in
             zip(pts, ys)]
    heights = spread_labels(fracs, gap=min(0.06, 1.0 / max(len(pts) - 1, 1)))
    for (n, mu, fq), y, h in zip(pts, ys, heights):
        label = f"{n}  (FQ {fq:.1e}, MU {mu:.2f})" if fq > 0 else f"{n}  (FQ=0, MU {mu:.2f})"
        ax.annotate(label, (mu, y), xytext=(1.03, h), textcoords="axes fraction",
                    fontsize=7.5, va="center", annotation_clip=False,
                    arrowprops=dict(arrowstyle="-", color="0.7", lw=0.5, shrinkA=0,
                                    shrinkB=4))
    ax.set_xlabel("model utility \u2192 better")
    ax.set_ylabel("forget quality (KS p-value, log) \u2192 better")
    ax.set_title("Forget quality vs model utility")
    ax.grid(True, alpha=0.3)
    _save(fig, path, tight=False)
    return True


_BAR_PANELS = ((FQ, "forget quality (log)"), (MU, "model utility"),
               (FORGET_ROUGE, "forget ROUGE-L"), (FORGET_PROB, "forget probability"),
               (MIA_AUC, "MIA AUC (Min-K%)"), (CANARY_MA, "forget canary MA"))


def _method_bars(models: Results, names: list[str], path: Path) -> bool:
    panels = [(c, t) for c, t in _BAR_PANELS
              if any(c.value(models[n]) is not None for n in names)]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 0.9 + 0.28 * len(names) * rows + 1.0 * rows)
    colors = ["tab:red" if n == "target" else "tab:green" if n == "retain" else "tab:blue"
              for n in names]
    for i, (column, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        vals = np.asarray([_num(column.value(models[n])) for n in names])
        if column is FQ:
            ax.set_xscale("log")
            vals = np.maximum(vals, _log_floor(vals.tolist()))
        y = np.arange(len(names))
        ax.barh(y, np.nan_to_num(vals, nan=0.0), color=colors)
        ax.set_yticks(y, names, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    _save(fig, path)
    return True


def _canary_curves(models: Results, names: list[str], path: Path) -> bool:
    """Small multiples: one panel per model, its forget and retain canaries' MA against
    the repetition count, over the target's forget curve in grey (what unlearning starts
    from) and the target's never-seen level (dashed); one legend for all panels."""
    tables = {n: models[n].canaries.by_repetitions for n in names
              if models[n].canaries and models[n].canaries.by_repetitions}
    tables = {n: t for n, t in tables.items() if t.get("forget") or t.get("retain")}
    if not tables:
        return False
    cols = min(6, len(tables))
    rows = -(-len(tables) // cols)
    fig = _figure(2.0 * cols + 0.4, 1.75 * rows + 0.9)
    target = tables.get("target", {})
    held = target.get("heldout", {})
    never_seen = np.mean([_num(v.ma) for v in held.values()]) if held else None
    handles = {}
    for i, (n, table) in enumerate(tables.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        if target.get("forget") and n != "target":
            reps = sorted(target["forget"])
            handles["target, forget"], = ax.plot(
                reps, [_num(target["forget"][r].ma) for r in reps], color="0.75", lw=2.5)
        if never_seen is not None:
            handles["never seen (target)"] = ax.axhline(never_seen, color="0.5", ls="--", lw=0.8)
        for split, color in (("retain", "tab:orange"), ("forget", "tab:blue")):
            rows_ = table.get(split)
            if rows_:
                reps = sorted(rows_)
                handles[f"{split} canaries"], = ax.plot(
                    reps, [_num(rows_[r].ma) for r in reps], color=color, marker="o", ms=2.5,
                    lw=1.4)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(n, fontsize=8.5, color={"target": "tab:red",
                                              "retain": "tab:green"}.get(n, "black"))
        ax.tick_params(labelsize=6.5)
        if i % cols:
            ax.set_yticklabels([])
        else:
            ax.set_ylabel("MA", fontsize=7.5)
        if i // cols == rows - 1 or i + cols >= len(tables):
            ax.set_xlabel("repetitions", fontsize=7.5)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Canary memorisation accuracy by training repetitions", fontsize=10)
    order = [k for k in ("forget canaries", "retain canaries", "target, forget",
                         "never seen (target)") if k in handles]
    fig.legend([handles[k] for k in order], order, loc="lower center", ncol=len(order),
               fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    _save(fig, path, tight=False)
    return True


def _distributions(models: Results, names: list[str], path: Path) -> bool:
    shown = [n for n in names if "forget" in models[n].tofu.distributions
             and models[n].tofu.distributions["forget"].prob]
    if not shown:
        return False
    fig = _figure(9.0, 1.9 * len(shown) + 0.6)
    for r, n in enumerate(shown):
        dist = models[n].tofu.distributions
        for c, (kind, label, log) in enumerate((("prob", "answer probability", False),
                                                ("truth_ratio", "log10 truth ratio", True))):
            ax = fig.add_subplot(len(shown), 2, 2 * r + c + 1)
            for split, color in (("forget", "tab:red"), ("retain", "tab:blue")):
                values = getattr(dist[split], kind) if split in dist else ()
                vals = np.asarray(values, dtype=float)
                vals = vals[np.isfinite(vals)]
                if log:
                    vals = np.log10(vals[vals > 0])
                if vals.size:
                    ax.hist(vals, bins=20, alpha=0.5, color=color, label=split, density=True)
            ax.set_title(f"{n}: {label}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.legend(fontsize=7)
    _save(fig, path)
    return True


def write_figures(models: Results, names: list[str], out: Path) -> list[str]:
    """Draws the ``FIGURES`` that have data into ``out``, models in ``names``' order.

    Returns:
      The names of the figures written, in ``FIGURES``' order.
    """
    makers = (_fq_vs_mu, _method_bars, _canary_curves, _distributions)
    return [f for f, make in zip(FIGURES, makers) if make(models, names, out / f)]
