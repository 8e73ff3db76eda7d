"""Benchmark files: written atomically, read back with every name, hash and key checked."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from jaxunlearn import storage
from jaxunlearn.data.schema import (BIOGRAPHY_FIELDS, CANARY_FIELDS, MANIFEST, QA_FIELDS,
                                    QA_SPLITS, WORLD_FACTS)
from jaxunlearn.data.synthetic.benchmark import (FILES, GENERATOR, Benchmark, encode_files,
                                                 fact_tables, manifest_bytes)
from jaxunlearn.errors import BenchmarkError

__all__ = ["write_benchmark", "read_benchmark"]

# The keys every record of a file must have: all of its schema's fields.
_KEYS = {"biographies.json": frozenset(BIOGRAPHY_FIELDS), "canaries.json": frozenset(CANARY_FIELDS)}
_QA_KEYS = frozenset(QA_FIELDS)


def _is_previous_benchmark(path: Path) -> bool:
    names = set(os.listdir(path))
    if MANIFEST not in names or not names <= {*FILES, MANIFEST}:
        return False
    try:
        return json.loads((path / MANIFEST).read_text("utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        return False


def write_benchmark(benchmark: Benchmark, out_dir: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Write every file of ``benchmark`` into ``out_dir`` atomically.

    The files are written and fsynced in a hidden temporary directory beside
    ``out_dir`` which is then renamed into place, so ``out_dir`` is either absent, the
    old contents, or complete. An existing non-empty ``out_dir`` is replaced only if it
    holds a previous benchmark (its files and a manifest from this generator) or when
    ``overwrite=True``. The same benchmark always gives byte-identical files.
    """
    out = Path(out_dir)
    blobs = encode_files(benchmark.splits, benchmark.biographies, benchmark.canaries)
    for f, blob in blobs.items():  # a mutated record would make the manifest lie
        if hashlib.sha256(blob).hexdigest() != benchmark.manifest["sha256"].get(f):
            raise BenchmarkError(f"benchmark: {f} differs from its manifest (records changed?)")
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"out_dir {out}: exists and is not a directory")
    replace = out.is_dir() and bool(os.listdir(out))
    if replace and not overwrite and not _is_previous_benchmark(out):
        raise BenchmarkError(f"out_dir {out}: not empty and not a jaxunlearn benchmark; "
                             "pass overwrite=True to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for name, blob in [*blobs.items(), (MANIFEST, manifest_bytes(benchmark.manifest))]:
            with open(tmp / name, "wb") as fh:
                fh.write(blob)
                fh.flush()
                os.fsync(fh.fileno())
        storage.fsync_dir(tmp)
        # Whether `out` may be replaced was decided above (a previous benchmark, or
        # overwrite=True): the benchmark's own policy, not commit_dir's owner mark.
        storage.replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_benchmark(directory: str | os.PathLike) -> Benchmark:
    """Read a directory written by ``write_benchmark``, checking names, SHA-256 and keys.

    Errors name the file (and ``:line`` for a bad record). For other TOFU-format data
    use ``jaxunlearn.data.tofu``.
    """
    root = Path(directory)
    try:
        manifest = json.loads((root / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"{root / MANIFEST}: cannot read a benchmark manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("generator") != GENERATOR:
        raise BenchmarkError(f"{root / MANIFEST}: field 'generator' is not {GENERATOR!r}")
    data: dict[str, tuple[dict, ...]] = {}
    for f in FILES:
        try:
            blob = (root / f).read_bytes()
        except OSError as e:
            raise BenchmarkError(f"{root / f}: missing or unreadable ({e.strerror})") from None
        if hashlib.sha256(blob).hexdigest() != manifest.get("sha256", {}).get(f):
            raise BenchmarkError(f"{root / f}: SHA-256 differs from manifest.json")
        keys = _KEYS.get(f, _QA_KEYS)
        records = []
        try:
            lines = blob.decode("utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise BenchmarkError(f"{root / f}: not UTF-8 ({e})") from None
        for line_no, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
            except ValueError as e:
                raise BenchmarkError(f"{root / f}:{line_no}: malformed JSON ({e})") from None
            if not isinstance(record, dict) or not keys <= set(record):
                missing = sorted(keys - set(record)) if isinstance(record, dict) else sorted(keys)
                raise BenchmarkError(f"{root / f}:{line_no}: missing field(s) {missing}")
            records.append(record)
        data[f[: -len(".json")]] = tuple(records)
    splits = {s: data[s] for s in (*QA_SPLITS, WORLD_FACTS)}
    return Benchmark(splits=splits, biographies=data["biographies"], canaries=data["canaries"],
                     manifest=manifest, fact_tables=fact_tables(splits))

