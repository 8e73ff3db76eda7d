"""Reports: ``eval.json`` written atomically, ``report.md`` tables and PNG figures.

Everything here reads the ``eval.json`` layout of DESIGN.md::

    {"config": {...}, "env": {"versions", "devices", "mesh"},
     "models": {"target": {metrics}, "retain": {metrics}, "<method>": {metrics}}}

where each model's entry is an ``eval.results.ModelResult`` written by ``to_json``;
the report reads it back with ``ModelResult.from_json`` and uses its fields. Missing
numbers print as "–", so a partial evaluation still renders. :func:`write_outputs`
stages ``eval.json``, the figures and ``report.md`` together and moves them into the
output directory in one go (``storage.staged_files``): an interrupted command leaves
all of them or none.
Figures use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch, no display needed).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from jaxunlearn import __version__, storage
from jaxunlearn.data.schema import retain_split_of
from jaxunlearn.errors import UserError
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
FIGURES = ("fq_vs_mu.png", "methods.png", "canaries.png", "distributions.png")


# ----------------------------------------------------------------------------- files
def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    return storage.write_file_atomic(path, write)


def write_json(data: Mapping, path: str | os.PathLike) -> Path:
    """``storage.write_json`` (atomic, NaN/inf as null) in ``eval.json``'s layout (indent 1)."""
    return storage.write_json(path, data, indent=1)


def env_info(mesh=None) -> dict:
    """Package versions, devices and mesh shape for ``eval.json``'s ``env`` section."""
    versions: dict[str, str | None] = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "transformers", "numpy", "scipy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    versions["jaxunlearn"] = __version__
    versions["python"] = platform.python_version()
    devices = jax.devices()
    return {
        "versions": versions,
        "devices": {"platform": devices[0].platform, "kind": devices[0].device_kind,
                    "count": len(devices), "process_count": jax.process_count()},
        "mesh": None if mesh is None else {str(k): int(v) for k, v in mesh.shape.items()},
    }


# ----------------------------------------------------------------------------- Markdown
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


def _ordered(models: Mapping[str, ModelResult]) -> list[str]:
    """target, retain, then the methods in their given order."""
    first = [n for n in ("target", "retain") if n in models]
    return first + [n for n in models if n not in first]


def _markdown(data: Mapping, models: Mapping[str, ModelResult], figures: Sequence[str]) -> str:
    names = _ordered(models)
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


# ----------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, tight: bool = True) -> None:
    if tight:
        fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


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


# ----------------------------------------------------------------------------- entry points
def read_models(eval_dict, source: str) -> dict[str, ModelResult]:
    """The typed results of an ``eval.json`` dict; UserError naming ``source`` and the
    field when it is not one."""
    if not isinstance(eval_dict, Mapping):
        raise UserError(f"{source}: expected a JSON object at the top level")
    models = eval_dict.get("models")
    if not isinstance(models, Mapping) or not models:
        raise UserError(f"{source}: field 'models': expected a non-empty object "
                        "{name: metrics}")
    return {name: ModelResult.from_json(m, f"{source}: field 'models.{name}'")
            for name, m in models.items()}


def write_report(eval_dict: Mapping, out_dir: str | os.PathLike) -> Path:
    """Writes ``report.md`` and the PNG figures (``FIGURES``) into ``out_dir``.

    Returns:
      The path of ``report.md``. Figures without data (e.g. no canaries) are skipped.
    """
    models = read_models(eval_dict, "eval_dict")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _ordered(models)
    makers = (_fq_vs_mu, _method_bars, _canary_curves, _distributions)
    written = [f for f, make in zip(FIGURES, makers) if make(models, names, out / f)]
    text = _markdown(eval_dict, models, written)
    return _atomic(out / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_outputs(eval_dict: Mapping, out_dir: str | os.PathLike) -> Path:
    """Writes ``eval.json``, the figures and ``report.md`` into ``out_dir`` as one set.

    They are rendered in a hidden staging directory and moved in after a last interrupt
    check, so ``out_dir`` holds the previous set or the complete new one. Returns the
    path of ``report.md``.
    """
    out = Path(out_dir)
    read_models(eval_dict, "eval_dict")  # a UserError before anything is written
    for name in ("eval.json", "report.md", *FIGURES):  # refuse before rendering anything
        storage.check_file_target(out / name, "output_dir")
    with storage.staged_files(out, "eval") as tmp:
        write_json(eval_dict, tmp / "eval.json")
        write_report(eval_dict, tmp)
    return out / "report.md"


def main_report(path: str | os.PathLike) -> int:
    """``jaxunlearn report EVAL_JSON``: re-renders the report beside the eval.json."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected an eval.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: malformed JSON ({e})") from None
    read_models(data, str(path))  # names the file in a UserError before anything is written
    with storage.staged_files(path.parent, "report") as tmp:  # all figures or none
        write_report(data, tmp)
    print(f"wrote {path.parent / 'report.md'}", file=sys.stdout)
    return 0
