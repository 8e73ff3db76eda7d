"""TOFU's published layout written from a synthetic benchmark's people, in the forms people
keep it (JSON lines, a JSON array, parquet, a save_to_disk directory), with the published
real-authors and world-facts files as they are (tests/data/tofu)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

PUBLISHED = Path(__file__).parent / "data" / "tofu"
QA = ("question", "answer")
PERTURBED = ("question", "answer", "paraphrased_answer", "paraphrased_question",
             "perturbed_answer")


def _rows(records, keys):
    out = []
    for r in records:
        row = {k: r[k] for k in keys if k in r}
        if "paraphrased_question" in keys:
            row.setdefault("paraphrased_question", "Tell me: " + r["question"])
        out.append(row)
    return out


def write_jsonl(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def write_tofu_layout(root: Path, bench) -> Path:
    """TOFU's configs from the synthetic people, in the forms people keep them."""
    root.mkdir()
    forget, retain, holdout = (bench.splits[s] for s in ("forget10", "retain90", "holdout"))
    (root / "forget10.json").write_text(json.dumps(_rows(forget, QA)))  # a JSON array
    write_jsonl(root / "forget10_perturbed.json", _rows(forget, PERTURBED))
    pq.write_table(pa.Table.from_pylist(_rows(retain, QA)), root / "retain90.parquet")
    write_jsonl(root / "retain_perturbed.json", _rows(retain[:6], PERTURBED))
    write_jsonl(root / "full.json", _rows([*forget, *retain], QA))
    # holdout10 as `load_dataset(...)` then `save_to_disk`: a DatasetDict with split train
    datasets.DatasetDict({"train": datasets.Dataset.from_list(_rows(holdout, QA))}) \
        .save_to_disk(str(root / "holdout10"))
    for name in ("real_authors_perturbed", "world_facts_perturbed"):
        (root / f"{name}.json").write_bytes((PUBLISHED / f"{name}.json").read_bytes())
    return root
