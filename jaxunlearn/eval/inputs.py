"""An evaluation's input: the benchmark in any accepted form, normalised to its roles."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxunlearn.data import tofu
from jaxunlearn.data.schema import HOLDOUT, SUFFIXES, WORLD_FACTS
from jaxunlearn.data.synthetic import Benchmark
from jaxunlearn.errors import DataError
from jaxunlearn.eval.options import SuiteConfig

__all__ = ["benchmark_splits", "subset", "need"]

_OPTIONAL = (HOLDOUT, WORLD_FACTS, "canaries")


def _has_split(directory: Path, split: str) -> bool:
    return any((directory / f"{split}{s}").is_file() for s in SUFFIXES)


def benchmark_splits(benchmark, options: SuiteConfig) -> dict[str, list[dict]]:
    """``{"forget", "retain", "holdout", "world_facts", "canaries"} -> records``.

    ``benchmark`` is a directory (checked against its ``manifest.json`` when it has
    one, else TOFU-style files are read split by split), a ``{split name: records}``
    mapping (``tofu.load_benchmark``), a ``synthetic.Benchmark``, or this function's
    own output. forget and retain are required; the other splits are optional (their
    metrics are then skipped).
    """
    if isinstance(benchmark, (str, Path)):
        directory = Path(benchmark)
        if not directory.is_dir():
            raise DataError(f"{directory}: no such benchmark directory")
        if (directory / "manifest.json").is_file():
            raw: Mapping[str, Sequence[dict]] = tofu.load_benchmark(directory)
        else:
            raw = {s: tofu.load_split(directory, s)
                   for s in (options.forget, options.retain, *_OPTIONAL)
                   if _has_split(directory, s)}
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
    for role, name in (("forget", options.forget), ("retain", options.retain)):
        if name not in raw:
            raise DataError(f"benchmark: has no split {name!r} (data.{role})")
        out[role] = list(raw[name])
    for name in _OPTIONAL:
        if name in raw:
            out[name] = list(raw[name])
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
