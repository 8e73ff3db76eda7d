"""Record files: read one split's file in any accepted format and validate its records.

A split is a JSON-lines file (``.json`` or ``.jsonl``), a JSON array, a ``.parquet``
file, or a directory written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a
``DatasetDict`` whose ``train`` split is read, as the hub's TOFU configs have one split
``train``); its records follow the schema :mod:`jaxunlearn.data.schema` gives the split
(QA, ``canaries`` or ``biographies``). Finding splits in a benchmark directory or on the
hub is :mod:`jaxunlearn.data.tofu`'s.

Every problem raises :class:`DataError` with one line naming the file, the record
(``line N`` for JSON lines, ``record N`` for arrays and parquet, both 1-based) and
the field, so the CLI can print it and exit with code 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxunlearn.data.schema import (
    NONBLANK,
    QA_FIELDS,
    QA_REQUIRED,
    FieldCheck,
    record_kind,
)
from jaxunlearn.errors import DataError

__all__ = ["parse_file", "validate_records", "is_saved_dataset", "read_records"]


def _parse_json(path: Path) -> list[tuple[str, Any]]:
    """Parse a JSON-lines or JSON-array file into ``(location, value)`` pairs."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # tolerate a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {e.start})") from None
    stripped = text.lstrip(" \t\r\n")
    if stripped.startswith("["):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError as e:
            first = stripped.splitlines()[0]
            try:  # a JSON-lines file whose first line happens to be an array
                json.loads(first)
            except json.JSONDecodeError:
                raise DataError(f"{path}: line {e.lineno}: malformed JSON ({e.msg}, "
                                f"column {e.colno})") from None
        else:
            return [(f"record {i + 1}", v) for i, v in enumerate(whole)]
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            # Ran off the end of the line: most likely a file cut short while writing.
            cut = e.pos >= len(line.rstrip()) or e.msg.startswith("Unterminated string")
            kind = "truncated" if cut else "malformed"
            raise DataError(f"{path}: line {n}: {kind} JSON ({e.msg}, column {e.colno})") from None
    return out


def _parse_parquet(path: Path) -> list[tuple[str, Any]]:
    import pyarrow.parquet as pq  # heavy; only when a parquet file is read

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({str(e).splitlines()[0]})") from None
    return [(f"record {i + 1}", v) for i, v in enumerate(rows)]


def parse_file(path: Path) -> list[tuple[str, Any]]:
    """``(location, value)`` pairs of a ``.parquet`` file, else of a JSON-lines or JSON
    array file."""
    return _parse_parquet(path) if path.suffix == ".parquet" else _parse_json(path)


def validate_records(
    items: Iterable[tuple[str, Any]],
    source: str,
    *,
    fields: Mapping[str, FieldCheck] = QA_FIELDS,
    required: Sequence[str] = QA_REQUIRED,
    record_check: Callable[[dict], tuple[str, str] | None] | None = None,
) -> list[dict]:
    """Check ``(location, record)`` pairs; return the records or raise on the first problem.

    A record must be a JSON object; every ``required`` field present and non-empty;
    every known field that is present of its schema type; known free-text fields
    (question, answer, ...) non-blank; then ``record_check(record)``, which returns
    ``(field, problem)`` or None, for rules across fields. Unknown keys are kept unchecked.
    """
    records = []
    for where, rec in items:
        at = f"{source}: {where}"
        if not isinstance(rec, dict):
            raise DataError(f"{at}: expected a JSON object, got {type(rec).__name__}")
        for key in required:
            if key not in rec or rec[key] is None:
                raise DataError(f"{at}: field '{key}': missing")
            v = rec[key]
            if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
                raise DataError(f"{at}: field '{key}': empty")
        for key, check in fields.items():
            if key not in rec:
                continue
            problem = check(rec[key])
            if problem is None and key in NONBLANK and not rec[key].strip():
                problem = "empty"
            if problem is not None:
                raise DataError(f"{at}: field '{key}': {problem}")
        found = record_check(rec) if record_check is not None else None
        if found is not None:
            raise DataError(f"{at}: field '{found[0]}': {found[1]}")
        records.append(rec)
    if not records:
        raise DataError(f"{source}: no records (empty file or split)")
    return records


# Files ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write.
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS)


def _parse_saved(path: Path) -> list[tuple[str, Any]]:
    """Rows of a ``save_to_disk`` directory (a DatasetDict: its ``train`` split, or its
    only split)."""
    import datasets  # heavy; only when such a directory is read

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as e:  # corrupt arrow files, version mismatch: not readable
        raise DataError(f"{path}: cannot read a datasets save_to_disk directory "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data and len(data) != 1:
            raise DataError(f"{path}: a DatasetDict without a 'train' split "
                            f"(has {', '.join(data)})")
        data = data["train"] if "train" in data else next(iter(data.values()))
    return [(f"record {i + 1}", row) for i, row in enumerate(data)]


def read_records(path: str | os.PathLike, *, split: str | None = None,
                 required: Sequence[str] | None = None) -> list[dict]:
    """Read and validate one ``.json`` (lines or array), ``.jsonl`` or ``.parquet`` file,
    or a ``datasets`` ``save_to_disk`` directory.

    ``split`` (default: the file's stem) picks the schema: ``canaries``,
    ``biographies``, else QA. ``required`` defaults to that schema's required fields.
    """
    path = Path(path)
    saved = is_saved_dataset(path)
    if not path.is_file() and not saved:
        raise DataError(f"{path}: no such file")
    fields, default_required, record_check = record_kind(split or path.stem)
    if saved:
        items = _parse_saved(path)
    else:
        items = parse_file(path)
    return validate_records(items, str(path), fields=fields, record_check=record_check,
                            required=default_required if required is None else required)
