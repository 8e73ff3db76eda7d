"""An evaluation's input: the benchmark in any accepted form, normalised to its roles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxunlearn.data import tofu
from jaxunlearn.data.schema import (HOLDOUT, REAL_AUTHORS, RETAIN_PERTURBED, WORLD_FACTS,
                                    holdout_split_of)
from jaxunlearn.data.synthetic import Benchmark
from jaxunlearn.errors import DataError
from jaxunlearn.eval.options import SuiteConfig

__all__ = ["benchmark_splits", "evaluation_splits", "subset", "need"]

def evaluation_splits(options: SuiteConfig) -> dict[str, tuple[str, ...]]:
    """Per evaluation role, the split names that may hold it, preferred first.

    TOFU's published layout (open-unlearning's evaluator): forget metrics on
    ``<forget>_perturbed``, retain metrics on ``retain_perturbed``, MIA against
    ``holdout<NN>`` of the forget split's size, real authors and world facts on their
    ``_perturbed`` files. Our synthetic benchmark keeps the same fields inline in
    ``<forget>``, ``<retain>``, ``holdout`` and ``world_facts``: the fall-backs.
    """
    return {"forget": (f"{options.forget}_perturbed", options.forget),
            "retain": (RETAIN_PERTURBED, options.retain),
            HOLDOUT: (holdout_split_of(options.forget), HOLDOUT),
            WORLD_FACTS: (f"{WORLD_FACTS}_perturbed", WORLD_FACTS),
            REAL_AUTHORS: (f"{REAL_AUTHORS}_perturbed",),
            "canaries": ("canaries",)}


def _tofu_roles(source, options: SuiteConfig) -> dict[str, list[dict]]:
    """Each role's records from a directory without a manifest (TOFU's files, any of the
    accepted forms) or, when ``source`` is not a local path, a hub id."""
    out: dict[str, list[dict]] = {}
    hub = tofu.is_hub_id(source)
    for role, names in evaluation_splits(options).items():
        if hub:  # the hub has TOFU's configs only: the preferred name of each role
            if role != "canaries":
                out[role] = tofu.load_split(source, names[0])
            continue
        found = next((n for n in names if tofu.has_split(source, n)), None)
        if found is not None:
            out[role] = tofu.load_split(source, found)
        elif role in ("forget", "retain"):
            raise DataError(f"{source}: has no split {' or '.join(names)} (data.{role})")
    return out


def benchmark_splits(benchmark, options: SuiteConfig) -> dict[str, list[dict]]:
    """``{"forget", "retain", "holdout", "world_facts", "canaries"} -> records``.

    ``benchmark`` is a directory (checked against its ``manifest.json`` when it has
    one, else TOFU's files are read role by role, :func:`evaluation_splits`), the hub id
    ``locuslab/TOFU`` (or another with TOFU's configs), a ``{split name: records}``
    mapping (``tofu.load_benchmark``), a ``synthetic.Benchmark``, or this function's
    own output. forget and retain are required; the other splits are optional (their
    metrics are then skipped).
    """
    if isinstance(benchmark, (str, Path)):
        directory = Path(benchmark)
        if tofu.is_hub_id(benchmark):
            return _tofu_roles(str(benchmark), options)
        if not directory.is_dir():
            raise DataError(f"{directory}: no such benchmark directory")
        if not (directory / "manifest.json").is_file():
            return _tofu_roles(directory, options)
        raw: Mapping[str, Sequence[dict]] = tofu.load_benchmark(directory)
    elif isinstance(benchmark, Benchmark):
        raw = {**benchmark.splits, "canaries": benchmark.canaries}
    elif isinstance(benchmark, Mapping):
        if "forget" in benchmark and "retain" in benchmark and options.forget not in benchmark:
            return {k: list(v) for k, v in benchmark.items()}  # already normalised
        raw = benchmark
    else:
        raise DataError(f"benchmark: expected a directory, a split mapping or a "
                        f"synthetic.Benchmark, got {type(benchmark).__name__}")
    out: dict[str, list[dict]] = {}
    for role, names in evaluation_splits(options).items():  # the same table as for files
        found = next((n for n in names if n in raw), None)
        if found is not None:
            out[role] = list(raw[found])
        elif role in ("forget", "retain"):
            raise DataError(f"benchmark: has no split {names[-1]!r} (data.{role})")
    return out


def subset(records: Sequence, cap: int | None) -> list:
    """At most ``cap`` records, evenly spaced over the split (no randomness)."""
    if cap is None or len(records) <= cap:
        return list(records)
    return [records[int(i)] for i in np.linspace(0, len(records) - 1, cap).round()]


def need(rec: Mapping, field: str, split: str, i: int, why: str):
    """``rec[field]``, or a DataError naming the split, the 1-based record and the field."""
    value = rec.get(field)
    if value is None or (isinstance(value, (str, list)) and not value):
        raise DataError(f"{split}: record {i + 1}: field '{field}': missing ({why})")
    return value
