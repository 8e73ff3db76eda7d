"""Published per-question TOFU logs in, TOFU's numbers out, and open-unlearning's files.

Two log formats are read, each with one model's per-question numbers:

* open-unlearning's ``TOFU_EVAL.json``: ``{metric: {"agg_value", "value_by_index":
  {"<i>": {...}}}}``; per question we read ``forget_Q_A_Prob`` / ``retain_Q_A_Prob``
  ``prob``, ``{forget,retain,ra,wf}_Q_A_ROUGE`` ``rougeL_recall``, ``forget_truth_ratio``
  / ``{retain,ra,wf}_Truth_Ratio`` ``score`` (``R = P(perturbed)/P(paraphrased)``),
  ``{ra,wf}_Q_A_Prob_normalised`` ``prob``, and the aggregates ``mia_min_k`` (AUC) and
  ``extraction_strength``; only the forget metrics are required (a role whose metrics
  are all absent, e.g. real authors in a synthetic-benchmark run, is left out);
* the TOFU repository's ``eval_log_aggregated.json``: ``{"eval_log_forget.json",
  "eval_log.json", "eval_real_author_wo_options.json", "eval_real_world_wo_options.json"}``,
  each ``{field: {"<i>": value}}`` with per-token losses ``avg_gt_loss``,
  ``avg_paraphrased_loss``, ``average_perturb_loss`` (a list) and ``rougeL_recall``.
  Per question, as TOFU's ``aggregate_eval_stat.py``: probability ``exp(-avg_gt_loss)``;
  real authors / world facts ``p / (p + sum_k p_k)`` over the perturbed answers' ``p_k =
  exp(-average_perturb_loss_k)``; ``R = exp(avg_paraphrased_loss - mean_k
  average_perturb_loss_k)``.

Both become the per-record arrays ``groups.tofu.tofu_result`` reduces, the same
function a measured model goes through, so forget quality and model utility are
computed one way. :func:`tofu_eval_document` / :func:`tofu_summary` write a result in
open-unlearning's layout, so their scripts (and ``--retain-logs``) read our runs.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxunlearn.errors import DataError
from jaxunlearn.eval import metrics, mia
from jaxunlearn.eval.groups.tofu import tofu_result
from jaxunlearn.eval.results import MIA_ATTACKS, MIAResult, ModelResult, Sample, TofuResult

__all__ = ["TofuLogs", "TOFU_TASKS", "OU_PREFIX", "SUMMARY_KEYS", "read_tofu_logs",
           "logs_result", "tofu_summary", "tofu_eval_document", "TOFU_EVAL", "TOFU_SUMMARY"]

TOFU_EVAL, TOFU_SUMMARY = "TOFU_EVAL.json", "TOFU_SUMMARY.json"
# TOFU repository task file -> our QA role.
TOFU_TASKS = {"eval_log_forget.json": "forget", "eval_log.json": "retain",
              "eval_real_author_wo_options.json": "real_authors",
              "eval_real_world_wo_options.json": "world_facts"}
# Our QA role -> open-unlearning's metric-name prefix.
OU_PREFIX = {"forget": "forget", "retain": "retain", "real_authors": "ra", "world_facts": "wf"}
_OPTIONS = ("real_authors", "world_facts")


def _ou_names(role: str) -> dict[str, str]:
    """open-unlearning's metric names of one role: prob, rouge, truth ratio."""
    p = OU_PREFIX[role]
    return {"prob": f"{p}_Q_A_Prob_normalised" if role in _OPTIONS else f"{p}_Q_A_Prob",
            "rouge": f"{p}_Q_A_ROUGE",
            "truth_ratio": "forget_truth_ratio" if role == "forget" else f"{p}_Truth_Ratio"}


# TOFU_SUMMARY.json: open-unlearning's key -> (role, kind) of our split scores, or a name.
SUMMARY_KEYS = ("forget_quality", "model_utility", "forget_Q_A_Prob", "forget_Q_A_ROUGE",
                "forget_truth_ratio", "privleak", "extraction_strength", "retain_Q_A_Prob",
                "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised",
                "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE",
                "wf_Truth_Ratio")


class TofuLogs:
    """One model's per-question TOFU numbers read from a log file.

    Attributes:
      path: the file read.
      qa: ``{role: {"prob", "rouge", "truth_ratio"[, "norm_prob"]} -> [N] float64}``.
      mia_min_k_auc: forget-vs-holdout Min-K% AUC (open-unlearning's ``mia_min_k``), or None.
      extraction_strength: open-unlearning's ``extraction_strength`` aggregate, or None.
      samples: up to three forget questions with their answer and the model's generation.
    """

    def __init__(self, path: str, qa: dict[str, dict[str, np.ndarray]], *,
                 mia_min_k_auc: float | None = None, extraction_strength: float | None = None,
                 samples: tuple[Sample, ...] = ()):
        self.path, self.qa = path, qa
        self.mia_min_k_auc, self.extraction_strength = mia_min_k_auc, extraction_strength
        self.samples = samples


def _load(path: Path) -> Any:
    if path.is_dir():
        for name in (TOFU_EVAL, "eval_log_aggregated.json"):
            if (path / name).is_file():
                return _load(path / name)
        raise DataError(f"{path}: no {TOFU_EVAL} or eval_log_aggregated.json in this directory")
    if not path.is_file():
        raise DataError(f"{path}: no such log file")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None


def _number(value, at: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DataError(f"{at}: expected a finite number, got {value!r:.40}")
    return float(value)


def _by_index(table, at: str) -> dict[str, Any]:
    if not isinstance(table, Mapping) or not table:
        raise DataError(f"{at}: expected a non-empty object keyed by question index")
    return dict(table)


def _tofu_task(task: Mapping, where: str, role: str) -> tuple[dict[str, np.ndarray], list]:
    """Per-record arrays of one task of TOFU's aggregated log."""
    def field(name):
        if name not in task:
            raise DataError(f"{where}: field '{name}': missing")
        return _by_index(task[name], f"{where}: field '{name}'")

    gt, para, pert, rouge = (field(n) for n in ("avg_gt_loss", "avg_paraphrased_loss",
                                                  "average_perturb_loss", "rougeL_recall"))
    prob, norm, ratio, rl = [], [], [], []
    for i in gt:
        at = f"{where}: question {i}"
        for name, table in (("avg_paraphrased_loss", para), ("average_perturb_loss", pert),
                            ("rougeL_recall", rouge)):
            if i not in table:
                raise DataError(f"{at}: field '{name}': missing")
        losses = pert[i]
        if not isinstance(losses, list) or not losses:
            raise DataError(f"{at}: field 'average_perturb_loss': expected a non-empty list")
        k = np.asarray([_number(v, f"{at}: field 'average_perturb_loss'") for v in losses])
        g = _number(gt[i], f"{at}: field 'avg_gt_loss'")
        prob.append(math.exp(-g))
        ratio.append(math.exp(_number(para[i], f"{at}: field 'avg_paraphrased_loss'") - k.mean()))
        norm.append(metrics.normalized_probability(np.asarray([-g]), -k[None])[0])
        rl.append(_number(rouge[i], f"{at}: field 'rougeL_recall'"))
    out = {"prob": np.asarray(prob), "rouge": np.asarray(rl), "truth_ratio": np.asarray(ratio)}
    if role in _OPTIONS:
        out["norm_prob"] = np.asarray(norm)
    generated = task.get("generated_text")
    return out, list(generated.values())[:3] if isinstance(generated, Mapping) else []


def _read_tofu(path: Path, doc: Mapping) -> TofuLogs:
    qa, samples = {}, ()
    for task, role in TOFU_TASKS.items():
        if task not in doc:
            raise DataError(f"{path}: field '{task}': missing (TOFU's aggregated log has "
                            f"{', '.join(TOFU_TASKS)})")
        if not isinstance(doc[task], Mapping):
            raise DataError(f"{path}: field '{task}': expected an object")
        qa[role], generated = _tofu_task(doc[task], f"{path}: {task}", role)
        if role == "forget":  # TOFU's generated_text: [input, generation, ground truth]
            samples = tuple(Sample(question=str(g[0]), answer=str(g[2]), generation=str(g[1]))
                            for g in generated if isinstance(g, list) and len(g) == 3)
    return TofuLogs(str(path), qa, samples=samples)


def _ou_values(doc: Mapping, metric: str, key: str, path: Path) -> np.ndarray:
    """``doc[metric]["value_by_index"][*][key]`` in index order; None values dropped, as
    open-unlearning's aggregation drops them."""
    entry = doc.get(metric)
    if not isinstance(entry, Mapping):
        raise DataError(f"{path}: field '{metric}': missing")
    rows = _by_index(entry.get("value_by_index"), f"{path}: field '{metric}.value_by_index'")
    out = []
    for i, row in rows.items():
        at = f"{path}: field '{metric}.value_by_index.{i}.{key}'"
        if not isinstance(row, Mapping) or key not in row:
            raise DataError(f"{at}: missing")
        if row[key] is not None:
            out.append(_number(row[key], at))
    if not out:
        raise DataError(f"{path}: field '{metric}': every value is null")
    return np.asarray(out)


def _ou_aggregate(doc: Mapping, metric: str, path: Path) -> float | None:
    entry = doc.get(metric)
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise DataError(f"{path}: field '{metric}': expected an object")
    value = entry.get("agg_value")
    return None if value is None else _number(value, f"{path}: field '{metric}.agg_value'")


def _read_ou(path: Path, doc: Mapping) -> TofuLogs:
    qa = {}
    for role in OU_PREFIX:
        names = _ou_names(role)
        if role != "forget" and not any(n in doc for n in names.values()):
            continue  # e.g. our synthetic benchmark's file: no real authors
        nums = {"rouge": _ou_values(doc, names["rouge"], "rougeL_recall", path),
                "truth_ratio": _ou_values(doc, names["truth_ratio"], "score", path)}
        if role in _OPTIONS:
            nums["norm_prob"] = _ou_values(doc, names["prob"], "prob", path)
            nums["prob"] = (_ou_values(doc, f"{OU_PREFIX[role]}_Q_A_Prob", "prob", path)
                            if f"{OU_PREFIX[role]}_Q_A_Prob" in doc else nums["norm_prob"])
        else:
            nums["prob"] = _ou_values(doc, names["prob"], "prob", path)
        qa[role] = nums
    rows = doc["forget_Q_A_ROUGE"]["value_by_index"]
    samples = tuple(Sample(question=str(r.get("input", "")), answer=str(r.get("ground_truth", "")),
                           generation=str(r.get("generation", "")))
                    for r in list(rows.values())[:3] if isinstance(r, Mapping))
    return TofuLogs(str(path), qa, mia_min_k_auc=_ou_aggregate(doc, "mia_min_k", path),
                    extraction_strength=_ou_aggregate(doc, "extraction_strength", path),
                    samples=samples)


def read_tofu_logs(path: str | Path) -> TofuLogs:
    """Reads open-unlearning's ``TOFU_EVAL.json`` or TOFU's ``eval_log_aggregated.json``
    (a directory holding either works too); the format is told by the top-level keys.

    Raises:
      DataError: one line naming the file and the field, for any missing or mistyped value.
    """
    file, doc = _load(Path(path))
    if not isinstance(doc, Mapping):
        raise DataError(f"{file}: expected a JSON object")
    if any(task in doc for task in TOFU_TASKS):
        return _read_tofu(file, doc)
    if "forget_truth_ratio" in doc or "forget_Q_A_Prob" in doc:
        return _read_ou(file, doc)
    raise DataError(f"{file}: neither open-unlearning's {TOFU_EVAL} (no field "
                    "'forget_truth_ratio') nor TOFU's eval_log_aggregated.json (no field "
                    "'eval_log_forget.json')")


def logs_result(logs: TofuLogs, retain: TofuLogs | None = None) -> ModelResult:
    """The eval.json entry of a model known only by its logs.

    Forget quality: the KS p-value of its forget truth ratios against ``retain``'s
    (None without). PrivLeak: MUSE's, from the two ``mia_min_k`` AUCs (None unless both
    logs have them).
    """
    ratios = None if retain is None else retain.qa["forget"]["truth_ratio"]
    tofu = tofu_result(logs.qa, retain_truth_ratios=ratios, samples=logs.samples,
                       extraction_strength=logs.extraction_strength)
    result = ModelResult(tofu=tofu)
    if logs.mia_min_k_auc is not None:
        ref = None if retain is None else retain.mia_min_k_auc
        leak = None if ref is None or ref == 1.0 else mia.privleak(logs.mia_min_k_auc, ref)
        result = ModelResult(tofu=tofu, mia=MIAResult(
            auc={a: logs.mia_min_k_auc if a == "min_k" else None for a in MIA_ATTACKS},
            privleak={a: leak if a == "min_k" else None for a in MIA_ATTACKS}))
    return result


def tofu_summary(result: ModelResult) -> dict[str, float]:
    """open-unlearning's ``TOFU_SUMMARY.json`` of a result: ``SUMMARY_KEYS`` that are
    defined, sorted by key (its own file drops undefined values and sorts keys too)."""
    tofu: TofuResult = result.tofu
    values: dict[str, Any] = {"forget_quality": tofu.forget_quality,
                              "model_utility": tofu.model_utility,
                              "extraction_strength": tofu.extraction_strength,
                              "privleak": None if result.mia is None else result.mia.muse_privleak}
    for role in OU_PREFIX:
        scores = tofu.splits.get(role)
        if scores is None:
            continue
        names = _ou_names(role)
        values.update({names["prob"]: scores.prob, names["rouge"]: scores.rouge,
                       names["truth_ratio"]: scores.truth_ratio})
    return {k: values[k] for k in sorted(SUMMARY_KEYS) if values.get(k) is not None}


def tofu_eval_document(result: ModelResult, per_record: Mapping[str, Mapping[str, Any]]) -> dict:
    """open-unlearning's ``TOFU_EVAL.json`` of a measured model.

    ``per_record[role]`` holds the arrays ``prob``, ``avg_loss``, ``rouge``,
    ``truth_ratio`` (``norm_prob`` for real authors and world facts) and the lists
    ``input``, ``ground_truth``, ``generation``; every metric is written as
    ``{"agg_value", "value_by_index": {"<i>": {...}}}`` under open-unlearning's name,
    the aggregate-only ones (``forget_quality``, ``model_utility``, ``privleak``,
    ``extraction_strength``) as ``{"agg_value"}``; keys sorted, as its writer does.
    """
    summary = tofu_summary(result)
    doc: dict[str, Any] = {}
    for role, rec in per_record.items():
        if role not in OU_PREFIX:
            continue
        names, p = _ou_names(role), OU_PREFIX[role]
        n = len(rec["truth_ratio"])
        doc[f"{p}_Q_A_Prob"] = {
            "agg_value": float(np.mean(rec["prob"])),
            "value_by_index": {str(i): {"prob": float(rec["prob"][i]),
                                        "avg_loss": float(rec["avg_loss"][i])} for i in range(n)}}
        if role in _OPTIONS:
            doc[names["prob"]] = {"agg_value": summary.get(names["prob"]), "value_by_index": {
                str(i): {"prob": float(rec["norm_prob"][i])} for i in range(n)}}
        doc[names["rouge"]] = {"agg_value": summary.get(names["rouge"]), "value_by_index": {
            str(i): {"rougeL_recall": float(rec["rouge"][i]), "input": rec["input"][i],
                     "ground_truth": rec["ground_truth"][i],
                     "generation": rec["generation"][i]} for i in range(n)}}
        doc[names["truth_ratio"]] = {"agg_value": summary.get(names["truth_ratio"]),
                                     "value_by_index": {str(i): {"score": float(rec["truth_ratio"][i])}
                                                        for i in range(n)}}
    for name in ("forget_quality", "model_utility", "privleak", "extraction_strength"):
        if summary.get(name) is not None:
            doc[name] = {"agg_value": summary[name]}
    if result.mia is not None and result.mia.auc.get("min_k") is not None:
        doc["mia_min_k"] = {"agg_value": result.mia.auc["min_k"]}
    return dict(sorted(doc.items()))
