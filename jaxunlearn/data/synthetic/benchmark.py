"""The benchmark as data (:class:`Benchmark`) and its byte encoding, shared by the
generator (which hashes the files into the manifest) and the file reader/writer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from jaxunlearn.data.schema import MANIFEST, QA_SPLITS, WORLD_FACTS
from jaxunlearn.errors import BenchmarkError

__all__ = ["GENERATOR", "FILES", "MANIFEST", "Benchmark", "encode_files", "manifest_bytes",
           "fact_tables"]

GENERATOR = "jaxunlearn.data.synthetic"  # manifest.json's "generator" (keep: files compare on it)
FILES = tuple(f"{s}.json" for s in QA_SPLITS) + (f"{WORLD_FACTS}.json", "biographies.json",
                                                 "canaries.json")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Benchmark:
    """A generated (or read) benchmark, one field per file of the shared schema.

    Attributes:
      splits: ``{"forget01", ..., "holdout", "world_facts"}`` -> QA records.
      biographies: one ``{"person_id", "name", "text"}`` per person (trained and holdout).
      canaries: ``{"canary_id", "format", "prefix", "secret", "text", "repetitions", "split"}``.
      manifest: the contents of ``manifest.json`` (counts and SHA-256 of every file).
      fact_tables: ``{person_id: {topic: facts}}``, the private facts asked about per person.
    """

    splits: Mapping[str, tuple[dict, ...]]
    biographies: tuple[dict, ...]
    canaries: tuple[dict, ...]
    manifest: Mapping[str, Any]
    fact_tables: Mapping[int, Mapping[str, tuple[str, ...]]]

    def person_ids(self, split: str) -> tuple[int, ...]:
        """Sorted ids of the people in a QA split (e.g. ``"forget10"``)."""
        if split not in QA_SPLITS:
            raise BenchmarkError(f"split must be one of {QA_SPLITS}, got {split!r}")
        return tuple(sorted({r["person_id"] for r in self.splits[split]}))



def fact_tables(splits: Mapping[str, tuple[dict, ...]]) -> dict[int, dict[str, tuple[str, ...]]]:
    tables: dict[int, dict[str, tuple[str, ...]]] = {}
    for split in ("forget10", "retain90", "holdout"):
        for r in splits[split]:
            tables.setdefault(r["person_id"], {})[r["topic"]] = tuple(r["facts"])
    return dict(sorted(tables.items()))



def _jsonl(records) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                   for r in records).encode("utf-8")


def encode_files(splits, bios, canaries) -> dict[str, bytes]:
    blobs = {f"{s}.json": _jsonl(splits[s]) for s in (*QA_SPLITS, WORLD_FACTS)}
    blobs["biographies.json"] = _jsonl(bios)
    blobs["canaries.json"] = _jsonl(canaries)
    return blobs


def manifest_bytes(manifest: Mapping) -> bytes:
    return (json.dumps(manifest, sort_keys=True, ensure_ascii=False, indent=2) + "\n").encode()

