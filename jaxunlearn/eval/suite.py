"""The model-level evaluation suite: one model in, one typed :class:`ModelResult` out.

``evaluate_model`` runs a model over the benchmark once (``eval.measure``: one scoring
pass over every sequence, one greedy-decoding pass over every question) and reduces
the measurement with each selected metric group (``eval.groups``), in order:

* ``tofu`` (always): per-split probability, ROUGE-L, truth ratio; forget quality and
  model utility (Maini et al. 2024);
* ``mia``: LOSS, ZLib, Min-K%, Min-K%++ AUC of forget vs holdout, PrivLeak (Shi et al.
  2024);
* ``canaries``: MA, secret accuracy, extraction, ES, exposure per repetition count
  (Carlini et al. 2019; Jang et al. 2023);
* ``extraction``: EL_n of the canaries (Jang et al. 2023);
* ``knowledge``: ReLearn's KFR / KRR and Linguistic Score (Xu et al. 2025);
* ``muse``: on a MUSE source (``data.muse.MuseEvalData``) instead of all the above:
  VerbMem, KnowMem, PrivLeak, extraction strength (Shi et al. 2024), as open-unlearning.

Definitions and the few deliberate differences are documented in each group's module.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

from jaxunlearn.data.muse import MuseEvalData, is_muse_source, load_muse_eval
from jaxunlearn.eval.groups import REGISTRY, GroupInputs
from jaxunlearn.eval.groups import mia as mia_group
from jaxunlearn.eval.groups import muse as muse_group
from jaxunlearn.eval.groups import tofu as tofu_group
from jaxunlearn.eval.groups.canaries import canary_numbers, summarize
from jaxunlearn.eval.inputs import benchmark_splits, subset
from jaxunlearn.eval.measure import measure
from jaxunlearn.eval.options import QA_SPLITS, SuiteConfig
from jaxunlearn.eval.results import ForgetScores, ModelResult, TofuResult

__all__ = ["SuiteConfig", "benchmark_splits", "subset", "load_data", "evaluate_model",
           "evaluate_data", "own_reference", "evaluate_forget"]


def load_data(benchmark, options: SuiteConfig) -> dict[str, list[dict]] | MuseEvalData:
    """What :func:`evaluate_data` reads: MUSE's splits when ``benchmark`` is a MUSE
    directory or hub id (``data.muse.is_muse_source``), else ``benchmark_splits``."""
    if is_muse_source(benchmark):
        return load_muse_eval(benchmark)
    return benchmark_splits(benchmark, options)


def _evaluate_muse(model, tokenizer, data: MuseEvalData, options: SuiteConfig,
                   reference: ModelResult | None) -> ModelResult:
    """The ``muse`` group alone; the TOFU fields stay empty (no QA splits of people)."""
    start = time.perf_counter()
    inputs = GroupInputs(model=model, tokenizer=tokenizer, options=options, measurement=None,
                         reference=reference, muse=data)
    return ModelResult(tofu=TofuResult(splits={}), muse=REGISTRY["muse"].compute(inputs, {}),
                       seconds=round(time.perf_counter() - start, 2))


def evaluate_data(model, tokenizer, data: Mapping[str, list[dict]] | MuseEvalData,
                  options: SuiteConfig, *, retain_truth_ratios=None,
                  reference: ModelResult | None = None, judge=None,
                  judge_name: str | None = None) -> ModelResult:
    """:func:`evaluate_model` on data already normalised by ``benchmark_splits`` (or
    MUSE's splits, ``data.muse.load_muse_eval``)."""
    if isinstance(data, MuseEvalData):
        return _evaluate_muse(model, tokenizer, data, options, reference)
    start = time.perf_counter()
    qa = {s: subset(data[s], options.max_records) for s in QA_SPLITS if s in data}
    canaries = data.get("canaries") if "canaries" in options.groups else None
    measurement = measure(model, tokenizer, qa, canaries, options, exposure=True)
    if retain_truth_ratios is None and reference is not None:
        own = reference.tofu.distributions.get("forget")
        retain_truth_ratios = None if own is None else own.truth_ratio
    inputs = GroupInputs(model=model, tokenizer=tokenizer, options=options,
                         measurement=measurement, reference=reference,
                         retain_truth_ratios=retain_truth_ratios, judge=judge,
                         judge_name=judge_name)
    done: dict = {}
    for name, group in REGISTRY.items():
        if name in options.groups:
            done[name] = group.compute(inputs, done)
    return ModelResult(**done, seconds=round(time.perf_counter() - start, 2))


def evaluate_model(model, tokenizer, benchmark, cfg, *, retain_truth_ratios=None,
                   reference: ModelResult | None = None, judge=None,
                   judge_name: str | None = None) -> ModelResult:
    """Every selected metric of one model; ``.to_json()`` is its ``eval.json`` entry.

    Args:
      model: a ``Llama`` (nnx); never modified.
      tokenizer: its ``PreTrainedTokenizerFast`` (chat template, eos and pad ids).
      benchmark: a benchmark directory, a ``{split: records}`` mapping or a
        ``synthetic.Benchmark`` (see ``benchmark_splits``); or a MUSE directory or hub
        id, which gives ``muse`` alone (``load_data``).
      cfg: a ``RunConfig`` (``SuiteConfig.from_run_config``) or a ``SuiteConfig``.
      retain_truth_ratios: ``[M]`` the retain model's forget-set truth ratios; without
        them (and without ``reference``) forget quality is None.
      reference: the retain model's own result: supplies the truth ratios above when
        not given, and the MIA AUCs PrivLeak is relative to.
      judge: model whose perplexity enters the Linguistic Score; None = ``model``.

    Returns:
      A :class:`ModelResult`: ``tofu`` always; ``mia`` (needs holdout records),
      ``canaries`` and ``extraction`` (need canaries), ``knowledge`` when selected
      (``eval.metrics``); ``seconds``; on MUSE ``muse`` and an empty ``tofu``.
      Definitions: the modules of ``eval.groups``.
    """
    options = SuiteConfig.of(cfg)
    data = load_data(benchmark, options)
    return evaluate_data(model, tokenizer, data, options,
                         retain_truth_ratios=retain_truth_ratios, reference=reference,
                         judge=judge, judge_name=judge_name)


def own_reference(result: ModelResult) -> ModelResult:
    """The retain model's result as its own reference, by the rules every model follows:
    forget quality is the KS p-value of its forget truth ratios against themselves
    (1), PrivLeak its AUC against itself (0; None where that AUC is 1)."""
    if result.muse is not None:
        m = result.muse
        return dataclasses.replace(result, muse=dataclasses.replace(
            m, privleak_reference_auc=m.mia_min_k_auc, privleak_reference="retain model (itself)",
            privleak=muse_group.privleak_of(m.mia_min_k_auc, m.mia_min_k_auc)))
    own = result.tofu.distributions.get("forget")
    ratios = None if own is None else own.truth_ratio
    fq = None if own is None else tofu_group.forget_quality_against(ratios, ratios)
    out = dataclasses.replace(result, tofu=dataclasses.replace(result.tofu, forget_quality=fq))
    if result.mia is not None:
        out = dataclasses.replace(out, mia=dataclasses.replace(
            result.mia, privleak=mia_group.privleak_against(result.mia.auc, result.mia)))
    return out


def evaluate_forget(model, tokenizer, records: Sequence[dict], cfg, *,
                    canaries: Sequence[dict] | None = None) -> ForgetScores:
    """The forget-side numbers an attack compares before/after (``ForgetScores``).

    Same definitions as ``evaluate_model`` on exactly ``records`` (no cap) and on the
    forget canaries among ``canaries`` (no exposure, no EL: one scoring pass and one
    decoding pass).
    """
    options = SuiteConfig.of(cfg)
    forget_canaries = [c for c in (canaries or ()) if c.get("split") == "forget"] or None
    m = measure(model, tokenizer, {"forget": list(records)}, forget_canaries, options,
                exposure=False)
    split, _ = tofu_group.split_scores(m)
    canary = (summarize(canary_numbers(m.canary_plan, m.scores), options).splits.get("forget")
              if m.canary_plan is not None else None)
    f = split["forget"]
    return ForgetScores(prob=f.prob, rouge=f.rouge, truth_ratio=f.truth_ratio,
                        canary_ma=None if canary is None else canary.ma,
                        canary_secret_accuracy=None if canary is None
                        else canary.secret_accuracy)
