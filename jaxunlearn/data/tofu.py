"""TOFU / MUSE-format benchmarks: find, load and cross-check splits before any work starts.

A benchmark directory holds one JSON-lines file per split (``forget10.json``,
``retain90.json``, ``holdout.json``, ``world_facts.json``, ``biographies.json``,
``canaries.json``) plus ``manifest.json``, laid out as :mod:`jaxunlearn.data.schema` says;
each split may be in any format :mod:`jaxunlearn.data.records` reads (re-exported here:
``read_records``, ``validate_records``).
Real TOFU files (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for
LLMs", hub id ``locuslab/TOFU``) use the same ``question`` / ``answer`` /
``paraphrased_answer`` / ``perturbed_answer`` keys, may lack the synthetic
benchmark's ``person_id`` / ``topic`` / ``idk_answer`` / ``facts``, and keep the
evaluation answers in a separate ``<split>_perturbed`` file; both are accepted.

Every problem raises :class:`DataError` with one line naming the file, the record and
the field, so the CLI can print it and exit with code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxunlearn.data.records import (
    is_saved_dataset,
    parse_file,
    read_records,
    validate_records,
)
from jaxunlearn.data.schema import (
    QA_FIELDS,
    RETAIN_OF,
    SUFFIXES,
    check_int,
    check_str,
    record_kind,
)
from jaxunlearn.errors import DataError

__all__ = [
    "DataError",
    "QA_FIELDS",
    "read_records",
    "validate_records",
    "load_split",
    "has_split",
    "is_hub_id",
    "load_benchmark",
    "load_muse_corpus",
    "check_disjoint",
]


def _find_file(directory: Path, split: str) -> Path | None:
    for suffix in SUFFIXES:
        if (directory / f"{split}{suffix}").is_file():
            return directory / f"{split}{suffix}"
    return directory / split if is_saved_dataset(directory / split) else None


def has_split(directory: str | os.PathLike, split: str) -> bool:
    """Whether ``directory`` holds ``split`` as a file of ``SUFFIXES`` or a saved dataset."""
    return _find_file(Path(directory), split) is not None


def is_hub_id(source: str | os.PathLike) -> bool:
    """``owner/name`` that is not a local path (then ``datasets.load_dataset`` reads it)."""
    return not Path(source).exists() and looks_like_hub_id(str(source))


def _merge_perturbed(base: list[dict], extra: list[dict], source: str) -> list[dict]:
    """Add the perturbed file's fields to the base records with the same question."""
    by_question: dict[str, deque[int]] = defaultdict(deque)
    for i, rec in enumerate(base):
        if isinstance(rec.get("question"), str):
            by_question[rec["question"].strip()].append(i)
    merged = [dict(r) for r in base]
    for n, rec in enumerate(extra, start=1):
        queue = by_question.get(rec["question"].strip())
        if not queue:
            raise DataError(f"{source}: record {n}: field 'question': not in the base split "
                            f"({rec['question']!r:.60})")
        target = merged[queue.popleft()]
        for key, value in rec.items():
            if key not in target:
                target[key] = value
            elif key == "answer" and target[key].strip() != value.strip():
                raise DataError(f"{source}: record {n}: field 'answer': differs from the "
                                "base split")
    return merged


def looks_like_hub_id(source: str) -> bool:
    """``owner/name``: one slash, not a relative or absolute path."""
    return source.count("/") == 1 and not source.startswith((".", "/", "~"))


def _hub_rows(hub_id: str, config: str, split: str = "train") -> list:
    """Rows of ``datasets.load_dataset(hub_id, config, split=split)``, or DataError."""
    try:
        import datasets  # heavy, and only needed for hub ids

        return list(datasets.load_dataset(hub_id, config, split=split))
    except Exception as e:  # network, auth, missing config: all mean "not available"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{hub_id}: '{config}': not a local path and could not be loaded "
                        f"from the Hugging Face hub (offline or no access?): {msg}") from None


def _validate_hub(rows: list, label: str, split: str, required: Sequence[str] | None) -> list[dict]:
    fields, default_required, record_check = record_kind(split)
    return validate_records(((f"record {i + 1}", r) for i, r in enumerate(rows)), label,
                            fields=fields, record_check=record_check,
                            required=default_required if required is None else required)


def load_split(source: str | os.PathLike, split: str, *,
               required: Sequence[str] | None = None) -> list[dict]:
    """Load one split (e.g. ``"forget10"``) from a benchmark directory or a hub id.

    ``source`` is a local directory holding ``<split>.json|.jsonl|.parquet``; only
    when no such path exists locally is it treated as a hub id and passed to
    ``datasets.load_dataset(source, split)``. When ``<split>_perturbed`` exists
    (TOFU's layout) its paraphrased/perturbed answers are merged into the records
    with the same question. ``required`` defaults to ``("question", "answer")``
    for QA splits and to every schema field for ``canaries`` / ``biographies``.

    Returns:
      The validated records, in file order.
    """
    if not split or any(c in split for c in "/\\") or split.startswith("."):
        raise DataError(f"split {split!r}: must be a plain split name such as 'forget10'")
    path = Path(source)
    if not path.exists():
        if not looks_like_hub_id(str(source)):
            raise DataError(f"{source}: no such benchmark directory")
        rows = _hub_rows(str(source), split)
        records = _validate_hub(rows, f"hub:{source}/{split}", split, required)
        if split.endswith("_perturbed"):
            return records
        try:
            extra_rows = _hub_rows(str(source), f"{split}_perturbed")
        except DataError:
            return records  # most splits have no perturbed companion
        label = f"hub:{source}/{split}_perturbed"
        return _merge_perturbed(records, _validate_hub(extra_rows, label, split, None), label)
    if not path.is_dir():
        raise DataError(f"{source}: expected a benchmark directory, got a file")
    file = _find_file(path, split)
    if file is None:
        raise DataError(f"{path}: split '{split}': no {split}.json, .jsonl or .parquet file "
                        "or save_to_disk directory")
    records = read_records(file, split=split, required=required)
    companion = _find_file(path, f"{split}_perturbed")
    if companion is not None and not split.endswith("_perturbed"):
        extra = read_records(companion, split=f"{split}_perturbed")
        records = _merge_perturbed(records, extra, str(companion))
    return records


def check_disjoint(forget: Sequence[Mapping], retain: Sequence[Mapping], *,
                   names: tuple[str, str] = ("forget", "retain")) -> None:
    """Raise :class:`DataError` when the two splits share a question, person_id or name.

    Questions and names compare in Unicode normal form NFC after stripping whitespace
    (``"Zoë"`` typed as ``e`` + combining diaeresis is the same name); ``person_id`` -1
    (world facts) and empty names are ignored. Record numbers in the message are 1-based.
    """
    def text(value) -> str | None:
        return unicodedata.normalize("NFC", value).strip() or None if value else None

    keys = (
        ("question", lambda r: text(r.get("question", ""))),
        ("person_id", lambda r: r.get("person_id") if r.get("person_id", -1) != -1 else None),
        ("name", lambda r: text(r.get("name"))),
    )
    for field, key in keys:
        seen = {}
        for i, rec in enumerate(forget, start=1):
            k = key(rec)
            if k is not None:
                seen.setdefault(k, i)
        for j, rec in enumerate(retain, start=1):
            k = key(rec)
            if k is not None and k in seen:
                raise DataError(f"{names[0]} and {names[1]} overlap: field '{field}' = {k!r:.60} "
                                f"({names[0]} record {seen[k]}, {names[1]} record {j})")


def _manifest(directory: Path) -> dict:
    path = directory / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: missing (not a benchmark directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: malformed JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: expected a JSON object")
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DataError(f"{path}: field 'splits': expected a non-empty object {{file: count}}")
    for file, count in splits.items():
        if check_int(count) is not None or count < 1:
            raise DataError(f"{path}: field 'splits': {file!r} must map to a record count >= 1")
    if not isinstance(manifest.get("sha256", {}), dict):
        raise DataError(f"{path}: field 'sha256': expected an object {{file: hex}}")
    return manifest


def load_benchmark(directory: str | os.PathLike) -> dict[str, list[dict]]:
    """Load every split listed in ``<directory>/manifest.json``, checked against it.

    Checks per file: present, record count equal to ``manifest["splits"]``, SHA-256
    equal to ``manifest["sha256"]`` when listed, schema (QA / canaries /
    biographies); then forget/retain complements and holdout are disjoint.

    Returns:
      ``{split name (file stem): records}``, e.g. ``{"forget10": [...], ...}``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such benchmark directory")
    manifest = _manifest(directory)
    out: dict[str, list[dict]] = {}
    for file, count in sorted(manifest["splits"].items()):
        path = directory / file
        if not path.is_file():
            raise DataError(f"{directory / 'manifest.json'}: lists {file!r}, which is missing")
        want = manifest.get("sha256", {}).get(file)
        if want is not None and hashlib.sha256(path.read_bytes()).hexdigest() != want:
            raise DataError(f"{path}: SHA-256 differs from manifest.json "
                            "(file changed since generation)")
        records = read_records(path)
        if len(records) != count:
            raise DataError(f"{path}: {len(records)} records, manifest.json says {count}")
        out[path.stem] = records
    for forget, retain in RETAIN_OF.items():
        if forget in out and retain in out:
            check_disjoint(out[forget], out[retain], names=(forget, retain))
        if forget in out and "holdout" in out:
            check_disjoint(out[forget], out["holdout"], names=(forget, "holdout"))
        if retain in out and "holdout" in out:
            check_disjoint(out[retain], out["holdout"], names=(retain, "holdout"))
    return out


def load_muse_corpus(path: str | os.PathLike, *, split: str = "forget",
                     config: str = "raw") -> list[str]:
    """Raw-text documents in MUSE's format (Shi et al. 2024, "MUSE: Machine Unlearning
    Six-Way Evaluation for Language Models").

    ``path`` is a ``.txt`` file (one document), a ``.json``/``.jsonl``/``.parquet``
    file of records with a ``text`` field, a directory of such files (read in name
    order), or, when nothing exists at ``path``, a hub id loaded as
    ``datasets.load_dataset(path, config, split=split)``.
    """
    p = Path(path)
    text_fields = {"text": check_str}
    if not p.exists():
        if not looks_like_hub_id(str(path)):
            raise DataError(f"{path}: no such file or directory")
        rows = _hub_rows(str(path), config, split)
        recs = validate_records(((f"record {i + 1}", r) for i, r in enumerate(rows)),
                                f"hub:{path}/{config}/{split}", fields=text_fields,
                                required=("text",))
        return [r["text"] for r in recs]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".txt",) + SUFFIXES)
    else:
        files = [p]
    if not files:
        raise DataError(f"{path}: no .txt, .json, .jsonl or .parquet files")
    docs: list[str] = []
    for f in files:
        if f.suffix == ".txt":
            try:
                text = f.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{f}: not UTF-8 text (bad byte at offset {e.start})") from None
            if not text.strip():
                raise DataError(f"{f}: empty document")
            docs.append(text)
        else:
            recs = validate_records(parse_file(f), str(f), fields=text_fields, required=("text",))
            docs.extend(r["text"] for r in recs)
    return docs
