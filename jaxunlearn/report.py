"""Reports: ``eval.json`` written atomically, ``report.md`` tables and PNG figures.

Everything here reads the ``eval.json`` layout of DESIGN.md::

    {"config": {...}, "env": {"versions", "devices", "mesh"},
     "models": {"target": {metrics}, "retain": {metrics}, "<method>": {metrics}}}

where each model's metrics are ``eval.suite.evaluate_model``'s dict (plus
``attacks`` from ``eval.attacks.run_attacks``). Missing numbers print as "–", so a
partial evaluation still renders. :func:`write_outputs` stages ``eval.json``, the
figures and ``report.md`` together and moves them into the output directory in one
go (``storage.staged_files``): an interrupted command leaves all of them or none.
Figures use matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch, no display needed).
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxunlearn import storage
from jaxunlearn.errors import UserError

# (column header, metric key, format); arrows say which direction is better.
SUMMARY_COLUMNS = (
    ("FQ ↑", "forget_quality", "sci"),
    ("MU ↑", "model_utility", "f3"),
    ("forget ROUGE ↓", "forget_rouge", "f3"),
    ("forget prob ↓", "forget_prob", "f3"),
    ("forget TR ↑", "forget_truth_ratio", "f3"),
    ("retain ROUGE ↑", "retain_rouge", "f3"),
    ("retain prob ↑", "retain_prob", "f3"),
    ("MIA AUC (Min-K%)", "mia_min_k_auc", "f3"),
    ("PrivLeak →0", "privleak", "pct"),
    ("canary MA ↓", "canary_forget_ma", "f3"),
    ("KFR ↑", "kfr", "f3"),
    ("KRR ↑", "krr", "f3"),
)
ATTACK_LABELS = {"quantize_8bit": "8-bit", "quantize_4bit": "4-bit", "relearn": "relearn"}
FIGURES = ("fq_vs_mu.png", "methods.png", "canaries.png", "distributions.png")
_RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}


# ----------------------------------------------------------------------------- files
def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    return storage.write_file_atomic(path, write)


def write_json(data: Mapping, path: str | os.PathLike) -> Path:
    """``storage.write_json`` (atomic, NaN/inf as null) in ``eval.json``'s layout (indent 1)."""
    return storage.write_json(path, data, indent=1)


def env_info(mesh=None) -> dict:
    """Package versions, devices and mesh shape for ``eval.json``'s ``env`` section."""
    import importlib.metadata as md

    import jax

    import jaxunlearn

    versions: dict[str, str | None] = {}
    for pkg in ("jax", "jaxlib", "flax", "optax", "transformers", "numpy", "scipy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    versions["jaxunlearn"] = jaxunlearn.__version__
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


def _attack_cell(metrics: Mapping, key: str = "forget_rouge") -> str:
    parts = []
    for name, label in ATTACK_LABELS.items():
        pair = (metrics.get("attacks") or {}).get(name, {}).get(key)
        if pair:
            parts.append(f"{label} {_fmt(pair.get('before'))}→{_fmt(pair.get('after'))}")
    return "; ".join(parts) if parts else "–"


def _ordered(models: Mapping[str, Mapping]) -> list[str]:
    """target, retain, then the methods in their given order."""
    first = [n for n in ("target", "retain") if n in models]
    return first + [n for n in models if n not in first]


def _markdown(data: Mapping, figures: Sequence[str]) -> str:
    models = data["models"]
    names = _ordered(models)
    cfg = data.get("config") or {}
    env = data.get("env") or {}
    lines = ["# jaxunlearn evaluation report", ""]
    d = cfg.get("data") or {}
    if d:
        retain = d.get("retain") or _RETAIN_OF.get(d.get("forget"), "–")
        lines.append(f"Benchmark `{d.get('benchmark')}`, forget split `{d.get('forget')}`, "
                     f"retain split `{retain}`, seed {cfg.get('seed')}.")
    if env:
        v, dev = env.get("versions") or {}, env.get("devices") or {}
        lines.append("Environment: " + ", ".join(f"{k} {x}" for k, x in v.items() if x)
                     + f"; {dev.get('count')} × {dev.get('kind')} ({dev.get('platform')})"
                     + f"; mesh {env.get('mesh')}.")
    lines += ["", "## Summary", ""]
    header = ["model"] + [c[0] for c in SUMMARY_COLUMNS] + ["attacks: forget ROUGE before→after"]
    rows = [[n] + [_fmt(models[n].get(k), f) for _, k, f in SUMMARY_COLUMNS]
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
        attacks = models[n].get("attacks") or {}
        for name, result in attacks.items():
            if not isinstance(result, Mapping):
                continue
            cells = [f"{k}: {_fmt(v.get('before'))}→{_fmt(v.get('after'))}"
                     for k, v in result.items() if isinstance(v, Mapping) and "before" in v]
            attack_rows.append([n, ATTACK_LABELS.get(name, name), "; ".join(cells)])
    if attack_rows:
        lines += ["", "## Recovery attacks (before → after)", ""]
        lines += _table(["model", "attack", "forget metrics"], attack_rows)
    canary_rows, reps = [], sorted({int(r) for n in names
                                   for s in (models[n].get("canaries") or {}).values()
                                   for r in s}, key=int)
    for n in names:
        for split, table in (models[n].get("canaries") or {}).items():
            canary_rows.append([n, split] + [_fmt((table.get(str(r)) or {}).get("ma"))
                                             for r in reps])
    if canary_rows:
        lines += ["", "## Canary memorisation accuracy by repetition count", ""]
        lines += _table(["model", "canaries"] + [f"×{r}" for r in reps], canary_rows)
    if figures:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    samples = [(n, s) for n in names for s in (models[n].get("samples") or [])[:1]]
    if samples:
        lines += ["", "## A forget-set question", ""]
        lines += _table(["model", "question", "answer", "greedy answer"],
                        [[n, s.get("question", ""), s.get("answer", ""),
                          s.get("generation", "")] for n, s in samples])
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _log_floor(values) -> float:
    """Where a p-value of 0 goes on a log axis: a decade below the smallest positive one."""
    positive = [v for v in values if math.isfinite(v) and v > 0]
    return min(positive) / 10 if positive else 1e-30


def _fq_vs_mu(models: Mapping, names: list[str], path: Path) -> bool:
    pts = [(n, _num(models[n].get("model_utility")), _num(models[n].get("forget_quality")))
           for n in names]
    pts = [(n, mu, fq) for n, mu, fq in pts if math.isfinite(mu) and math.isfinite(fq)]
    if not pts:
        return False
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot()
    floor = _log_floor([fq for _, _, fq in pts])
    for n, mu, fq in pts:
        style = {"target": ("tab:red", "*", 180), "retain": ("tab:green", "P", 140)}.get(
            n, ("tab:blue", "o", 50))
        # A p-value of exactly 0 sits at the floor, drawn as a downward triangle.
        marker = style[1] if fq > 0 else "v"
        ax.scatter([mu], [max(fq, floor)], c=style[0], marker=marker, s=style[2], zorder=3)
        ax.annotate(n if fq > 0 else f"{n} (FQ=0)", (mu, max(fq, floor)),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value, log)")
    ax.set_title("Forget quality vs model utility")
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    return True


_BAR_PANELS = (("forget_quality", "forget quality (log)"), ("model_utility", "model utility"),
               ("forget_rouge", "forget ROUGE-L"), ("forget_prob", "forget probability"),
               ("mia_min_k_auc", "MIA AUC (Min-K%)"), ("canary_forget_ma", "forget canary MA"))


def _method_bars(models: Mapping, names: list[str], path: Path) -> bool:
    panels = [(k, t) for k, t in _BAR_PANELS if any(models[n].get(k) is not None for n in names)]
    if not panels:
        return False
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = _figure(4.2 * cols, 0.9 + 0.28 * len(names) * rows + 1.0 * rows)
    colors = ["tab:red" if n == "target" else "tab:green" if n == "retain" else "tab:blue"
              for n in names]
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        vals = np.asarray([_num(models[n].get(key)) for n in names])
        if key == "forget_quality":
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


def _canary_curves(models: Mapping, names: list[str], path: Path) -> bool:
    with_canaries = [n for n in names if models[n].get("canaries")]
    if not with_canaries:
        return False
    splits = [s for s in ("forget", "retain") if any(s in models[n]["canaries"]
                                                     for n in with_canaries)]
    if not splits:
        return False
    fig = _figure(5.0 * len(splits), 4.0)
    for i, split in enumerate(splits):
        ax = fig.add_subplot(1, len(splits), i + 1)
        for n in with_canaries:
            table = models[n]["canaries"].get(split)
            if not table:
                continue
            reps = sorted(table, key=int)
            style = {"target": dict(color="tab:red", lw=2.5), "retain": dict(color="tab:green",
                                                                             lw=2.5)}.get(n, {})
            ax.plot([int(r) for r in reps], [_num(table[r].get("ma")) for r in reps],
                    marker="o", label=n, **style)
            held = models[n]["canaries"].get("heldout", {})
            if n == "target" and held:
                level = np.mean([_num(v.get("ma")) for v in held.values()])
                ax.axhline(level, color="gray", ls="--", lw=1, label="never seen (target)")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("training repetitions")
        ax.set_ylabel("memorisation accuracy")
        ax.set_title(f"{split} canaries")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    return True


def _distributions(models: Mapping, names: list[str], path: Path) -> bool:
    shown = [n for n in names if (models[n].get("distributions") or {}).get("forget_prob")]
    if not shown:
        return False
    fig = _figure(9.0, 1.9 * len(shown) + 0.6)
    for r, n in enumerate(shown):
        dist = models[n]["distributions"]
        for c, (key, label, log) in enumerate((("prob", "answer probability", False),
                                               ("truth_ratio", "log10 truth ratio", True))):
            ax = fig.add_subplot(len(shown), 2, 2 * r + c + 1)
            for split, color in (("forget", "tab:red"), ("retain", "tab:blue")):
                vals = np.asarray(dist.get(f"{split}_{key}") or [], dtype=float)
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
def _check(eval_dict, source: str) -> Mapping[str, Mapping]:
    if not isinstance(eval_dict, Mapping):
        raise UserError(f"{source}: expected a JSON object at the top level")
    models = eval_dict.get("models")
    if not isinstance(models, Mapping) or not models:
        raise UserError(f"{source}: field 'models': expected a non-empty object "
                        "{name: metrics}")
    for name, m in models.items():
        if not isinstance(m, Mapping):
            raise UserError(f"{source}: field 'models.{name}': expected an object of metrics")
    return models


def write_report(eval_dict: Mapping, out_dir: str | os.PathLike) -> Path:
    """Writes ``report.md`` and the PNG figures (``FIGURES``) into ``out_dir``.

    Returns:
      The path of ``report.md``. Figures without data (e.g. no canaries) are skipped.
    """
    models = _check(eval_dict, "eval_dict")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _ordered(models)
    makers = (_fq_vs_mu, _method_bars, _canary_curves, _distributions)
    written = [f for f, make in zip(FIGURES, makers) if make(models, names, out / f)]
    text = _markdown(eval_dict, written)
    return _atomic(out / "report.md", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_outputs(eval_dict: Mapping, out_dir: str | os.PathLike) -> Path:
    """Writes ``eval.json``, the figures and ``report.md`` into ``out_dir`` as one set.

    They are rendered in a hidden staging directory and moved in after a last interrupt
    check, so ``out_dir`` holds the previous set or the complete new one. Returns the
    path of ``report.md``.
    """
    out = Path(out_dir)
    _check(eval_dict, "eval_dict")
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
    _check(data, str(path))
    with storage.staged_files(path.parent, "report") as tmp:  # all figures or none
        write_report(data, tmp)
    print(f"wrote {path.parent / 'report.md'}", file=sys.stdout)
    return 0
