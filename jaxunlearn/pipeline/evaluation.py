"""The one place that evaluates a command's models and writes ``eval.json`` and the report.

Every command that evaluates (``demo``, ``eval``, ``run``) goes through
:class:`Evaluation`, so the same rules hold everywhere:

* the retain (gold) model, when there is one, is evaluated first and once. It is its
  own reference (forget quality = the KS p-value of its forget truth ratios against
  themselves = 1; PrivLeak = its AUC against itself = 0, None where that AUC is 1) and
  the reference of every other model (their forget quality and PrivLeak are measured
  against it);
* with ``eval.attacks`` every model is attacked (quantisation and fine-tuning recovery),
  the retain model included: it never saw the forget people, so its "after" numbers are
  the control, what the attack alone teaches a model that never knew them;
* ``eval.json`` = ``{"config", "env", "models"}`` (plus ``timings`` when the command
  measured them), written atomically, then ``report.md`` and the figures beside it, and
  open-unlearning's ``TOFU/<name>/TOFU_EVAL.json`` and ``TOFU_SUMMARY.json`` per model;
* on a MUSE source every model gets open-unlearning's MUSE files instead,
  ``muse/<name>/MUSE_EVAL.json`` and ``MUSE_SUMMARY.json`` (written before ``eval.json``,
  each set atomically); the recovery attacks, which relearn QA splits, are not run there.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxunlearn import report, storage, validate
from jaxunlearn.data.muse import MuseEvalData
from jaxunlearn.eval import attacks, suite
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.results import ForgetScores, ModelResult
from jaxunlearn.eval.tofu_logs import TOFU_EVAL, TOFU_SUMMARY, tofu_eval_document, tofu_summary

__all__ = ["MUSE_DIR", "Evaluation"]

MUSE_DIR = "muse"  # <out_dir>/muse/<model name>/MUSE_EVAL.json, MUSE_SUMMARY.json


class Evaluation:
    """Evaluates models one at a time (only one needs to be in memory) and writes them.

    Args:
      cfg: the run's ``RunConfig`` (its ``eval`` section, and what ``eval.json`` records).
      benchmark: a benchmark directory, a ``synthetic.Benchmark`` or a split mapping
        (``eval.inputs.benchmark_splits``), or a MUSE directory or hub id
        (``eval.suite.load_data``), read and checked here, before any model; None when
        every result comes from logs (:meth:`add_logged`).
      options: what to compute (default: ``SuiteConfig.from_run_config(cfg)``).
    """

    def __init__(self, cfg, benchmark, options: SuiteConfig | None = None):
        self.cfg = cfg
        self.options = options or SuiteConfig.from_run_config(cfg)
        self.data = None if benchmark is None else suite.load_data(benchmark, self.options)
        self.results: dict[str, ModelResult] = {}
        self.seconds: dict[str, float] = {}
        self._reference: ModelResult | None = None

    @property
    def is_muse(self) -> bool:
        """True when the benchmark is MUSE (``data.muse``)."""
        return isinstance(self.data, MuseEvalData)

    @property
    def reference(self) -> ModelResult | None:
        """The retain model's result, once :meth:`add_retain` has run."""
        return self._reference

    def add_retain(self, model, tokenizer) -> ModelResult:
        """Evaluates the retain model, its own reference and everyone else's; call it first."""
        if self.results:
            raise ValueError("Evaluation.add_retain: the retain model must come first, "
                             f"before {', '.join(self.results)}")
        start = time.perf_counter()
        own = suite.own_reference(suite.evaluate_data(model, tokenizer, self.data,
                                                      self.options))
        self._reference = self._finish("retain", model, tokenizer, own, None, start)
        return self._reference

    def add_logged(self, name: str, result: ModelResult, *, reference: bool = False) -> ModelResult:
        """Adds a result read from published logs (``eval.tofu_logs``); with
        ``reference=True`` it is the retain model's, the reference of models added later."""
        if name in self.results:
            raise ValueError(f"Evaluation.add_logged: model name {name!r} is taken")
        if reference:
            if self.results:
                raise ValueError("Evaluation.add_logged: the retain reference must come first")
            self._reference = result
        self.results[name] = result
        self.seconds[name] = 0.0
        return result

    def add(self, name: str, model, tokenizer, *,
            unlearn: Mapping[str, Any] | None = None) -> ModelResult:
        """Evaluates ``model`` against the retain model (when added) under ``name``;
        ``unlearn``: how it was made (method, schedule, loss curve), kept in its entry."""
        if name in self.results or name == "retain":
            raise ValueError(f"Evaluation.add: model name {name!r} is taken")
        if self.data is None:
            raise ValueError("Evaluation.add: no benchmark was given")
        start = time.perf_counter()
        result = suite.evaluate_data(model, tokenizer, self.data, self.options,
                                     reference=self._reference)
        return self._finish(name, model, tokenizer, result, unlearn, start)

    def _finish(self, name, model, tokenizer, result: ModelResult, unlearn, start) -> ModelResult:
        if self.cfg.eval.attacks and not self.is_muse:
            result = dataclasses.replace(result, attacks=attacks.run_attacks(
                model, tokenizer, self.data, self.options, before=ForgetScores.of(result)))
        if unlearn is not None:
            result = dataclasses.replace(result, unlearn=dict(unlearn))
        self.results[name] = result
        self.seconds[name] = time.perf_counter() - start
        return result

    def to_json(self, *, mesh, config: Mapping | None = None,
                timings: Mapping[str, float] | None = None) -> dict:
        """The ``eval.json`` document: the config (default: the run's), provenance
        (versions, devices, mesh), every model's entry, and ``timings`` when given."""
        out = {"config": dict(config) if config is not None else self.cfg.to_dict(),
               "env": report.env_info(mesh),
               "models": {name: r.to_json() for name, r in self.results.items()}}
        if timings is not None:
            out["timings"] = {k: round(v, 2) for k, v in timings.items()}
        return out

    def write(self, out_dir: str | Path, *, mesh, config: Mapping | None = None,
              timings: Mapping[str, float] | None = None) -> Path:
        """Writes ``<out_dir>/eval.json``, the figures and ``report.md`` as one set
        (``report.write_outputs``: all of them or none); returns the path of ``report.md``."""
        out = Path(out_dir)
        document = self.to_json(mesh=mesh, config=config, timings=timings)
        for name, result in self.results.items():
            if result.muse is not None:
                where = validate.inside(out, MUSE_DIR, name, field="output_dir")
                with storage.staged_files(where, "muse") as tmp:
                    storage.write_json(tmp / "MUSE_EVAL.json", result.muse.eval_logs(), indent=4)
                    storage.write_json(tmp / "MUSE_SUMMARY.json", result.muse.summary(), indent=4)
        self.write_open_unlearning(out)
        return report.write_outputs(document, out)  # last: eval.json + report mean "done"

    def write_open_unlearning(self, out_dir: str | Path) -> None:
        """Per TOFU model, open-unlearning's files: ``<out_dir>/TOFU/<name>/TOFU_SUMMARY.json``
        and, for a measured model, ``TOFU_EVAL.json`` with every question (which its
        scripts and ``eval --retain-logs <out_dir>/TOFU/retain`` read)."""
        for name, result in self.results.items():
            if result.muse is not None:
                continue
            folder = validate.inside(out_dir, "TOFU", name, field="output_dir")
            with storage.staged_files(folder, "tofu") as tmp:
                storage.write_json(tmp / TOFU_SUMMARY, tofu_summary(result), indent=4)
                if result.tofu.per_record:
                    storage.write_json(tmp / TOFU_EVAL,
                                       tofu_eval_document(result, result.tofu.per_record),
                                       indent=4)
