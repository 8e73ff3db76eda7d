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

This module holds the entry points and ``eval.json``'s own pieces; ``columns`` the
summary columns, ``tables`` the Markdown and ``figures`` the PNGs (re-exported here).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import jax

from jaxunlearn import __version__, storage
from jaxunlearn.errors import UserError
from jaxunlearn.eval.results import ModelResult
from jaxunlearn.report.columns import (
    ATTACK_LABELS,
    CANARY_MA,
    FORGET_PROB,
    FORGET_ROUGE,
    FQ,
    MIA_AUC,
    MU,
    RETAIN_ROUGE,
    SUMMARY_COLUMNS,
    Column,
)
from jaxunlearn.report.figures import FIGURES, spread_labels, write_figures
from jaxunlearn.report.tables import markdown, ordered

__all__ = ["Column", "FQ", "MU", "FORGET_ROUGE", "FORGET_PROB", "RETAIN_ROUGE", "MIA_AUC",
           "CANARY_MA", "SUMMARY_COLUMNS", "ATTACK_LABELS", "FIGURES", "spread_labels",
           "write_json", "env_info", "read_models", "write_report", "write_outputs",
           "main_report"]


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
    written = write_figures(models, ordered(models), out)
    text = markdown(eval_dict, models, written)
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
