"""The one output-path policy: atomic commits, nothing foreign deleted, one writer per directory.

Every file and directory a command writes goes through here:

* **Atomic.** A file is written under a hidden temporary name beside its target, flushed
  and renamed over it (:func:`write_file_atomic`, :func:`write_json`); a directory is
  built in a hidden staging directory and renamed into place (:func:`commit_dir`); a
  set of files (``eval.json`` + ``report.md`` + figures) is staged together and moved
  in one go after a last interrupt check (:func:`staged_files`). A reader, or a run
  killed half-way, sees the old outputs or the new ones, never half.
* **Never foreign.** A directory is replaced only when it is empty or carries
  :data:`OWNER_MARK` (written into every directory committed here); a non-empty
  directory without it, a regular file where a directory goes (or the reverse), and a
  symbolic link are refused with one line naming the option and the path.
* **Strict JSON.** NaN and infinities become ``null`` (``allow_nan=False`` underneath),
  so every JSON file written is valid JSON; ``config.json`` asks for an error instead.
* **One writer.** :func:`output_lock` holds an exclusive ``flock`` on
  ``<output_dir>/.jaxunlearn.lock`` for the whole command; a second command on the same
  directory gets one line naming the holder (the lock dies with its process, so a
  killed run never leaves a stale lock).

Errors are :class:`StorageError` (a :class:`~jaxunlearn.errors.UserError`: exit 2).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxunlearn import interrupts
from jaxunlearn.errors import StorageError

__all__ = ["StorageError", "OWNER_MARK", "LOCK_NAME", "fsync_dir", "json_text", "write_json",
           "write_file_atomic", "check_file_target", "check_dir_target", "staging_dir",
           "commit_dir", "replace_dir", "is_owned", "staged_files", "output_lock", "is_disk_full"]

OWNER_MARK = ".jaxunlearn"  # in every directory commit_dir writes: "this tool made it"
LOCK_NAME = ".jaxunlearn.lock"



# ----------------------------------------------------------------------------- JSON
def _plain(value: Any, nonfinite: str, at: str) -> Any:
    """``value`` as JSON-ready Python: NumPy -> Python, tuples -> lists, NaN/inf -> None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, nonfinite, f"{at}.{k}" if at else str(k))
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v, nonfinite, f"{at}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), nonfinite, at)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value), nonfinite, at)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isfinite(value):
            return float(value)
        if nonfinite == "error":
            raise ValueError(f"refusing to write the non-finite value {float(value)} "
                             f"({at or 'top level'}) as JSON")
        return None
    return value


def json_text(obj: Any, *, indent: int | None = 2, sort_keys: bool = False,
              nonfinite: str = "null") -> str:
    """Strict JSON text of ``obj`` (UTF-8 characters kept), ending with a newline.

    Args:
      nonfinite: ``"null"`` writes NaN/inf as ``null`` (metrics that could not be
        computed); ``"error"`` raises ``ValueError`` naming the key (``config.json``,
        where a null would be a different model).
    """
    if nonfinite not in ("null", "error"):
        raise ValueError(f"nonfinite must be 'null' or 'error', got {nonfinite!r}")
    return json.dumps(_plain(obj, nonfinite, ""), indent=indent, sort_keys=sort_keys,
                      ensure_ascii=False, allow_nan=False) + "\n"


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` of a directory: the names written, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_file_target(path: str | os.PathLike, field: str = "output") -> Path:
    """``path`` if a file may be written there: absent, or a regular file (not a link or dir)."""
    path = Path(path)
    if path.is_symlink():
        raise StorageError(f"{field}: {path} is a symbolic link; refusing to write through it")
    if path.exists() and not path.is_file():
        raise StorageError(f"{field}: {path} exists and is not a file; refusing to replace it")
    return path


def write_file_atomic(path: str | os.PathLike, write: Callable[[Path], None], *,
                      field: str = "output") -> Path:
    """``write(tmp)`` to a hidden temporary name beside ``path``, fsync, rename over ``path``."""
    path = check_file_target(path, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2,
               sort_keys: bool = False, nonfinite: str = "null") -> Path:
    """Writes ``obj`` as strict JSON (:func:`json_text`) to ``path`` atomically."""
    text = json_text(obj, indent=indent, sort_keys=sort_keys, nonfinite=nonfinite)
    return write_file_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------------- directories
def is_owned(directory: str | os.PathLike) -> bool:
    """True when ``directory`` was committed by this tool (it holds :data:`OWNER_MARK`)."""
    mark = Path(directory) / OWNER_MARK
    return mark.is_file() and not mark.is_symlink()


def check_dir_target(path: str | os.PathLike, field: str = "output") -> Path:
    """``path`` if a directory may be committed there (see :func:`commit_dir`), else raise.

    Call it before the work whose result goes there, so a refusal costs nothing.
    """
    path = Path(path)
    if path.is_symlink():
        raise StorageError(f"{field}: {path} is a symbolic link; refusing to replace it "
                           "(give a real directory)")
    if not path.exists():
        return path
    if not path.is_dir():
        raise StorageError(f"{field}: {path} exists and is a file, not a directory; "
                           "refusing to replace it")
    if any(path.iterdir()) and not is_owned(path):
        raise StorageError(f"{field}: {path} is not empty and was not written by jaxunlearn "
                           f"(no {OWNER_MARK} file in it); refusing to replace it: choose "
                           "another path or empty it")
    return path


def staging_dir(final: str | os.PathLike) -> Path:
    """A new hidden directory beside ``final`` to build its contents in (then :func:`commit_dir`)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))


def commit_dir(tmp: str | os.PathLike, final: str | os.PathLike, *,
               field: str = "output") -> Path:
    """Renames the staged directory ``tmp`` to ``final``: readers see the old or the new one.

    ``final`` may be absent, empty, or a directory this tool committed before (it is
    replaced); anything else is refused (:func:`check_dir_target`). :data:`OWNER_MARK` is
    added to ``tmp`` first. A pending SIGINT/SIGTERM stops here, before anything is
    visible. On error ``tmp`` is left for the caller to remove.
    """
    tmp, final = Path(tmp), Path(final)
    (tmp / OWNER_MARK).write_text('{"written_by": "jaxunlearn"}\n', encoding="utf-8")
    fsync_dir(tmp)
    check_dir_target(final, field)
    interrupts.check(f"before writing {final}")
    return replace_dir(tmp, final)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Renames directory ``tmp`` to ``final``, replacing what is there, with no check of
    whose it is (the caller's :func:`commit_dir` or own policy decides that): an old
    non-empty ``final`` is moved aside, the new one renamed in, the old one removed; on
    error the old one is put back. Then the parent's names are fsynced."""
    tmp, final = Path(tmp), Path(final)
    if final.is_dir() and any(final.iterdir()):
        # rename(2) cannot replace a non-empty directory: move the old one aside first.
        aside = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rename(final, aside / "old")
        try:
            os.rename(tmp, final)
        except BaseException:
            os.rename(aside / "old", final)
            raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, final)  # also replaces an empty directory
    fsync_dir(final.parent)
    return final


@contextlib.contextmanager
def staged_files(root: str | os.PathLike, name: str = "outputs", *,
                 field: str = "output_dir") -> Iterator[Path]:
    """Yields a hidden staging directory in ``root``; on success moves every file in it
    into ``root`` (replacing files of the same name), after a last interrupt check.

    The files move one ``rename`` each while SIGINT/SIGTERM are deferred, so an
    interrupt leaves either all of them or none. On error nothing moves.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
    try:
        yield tmp
        files = sorted(p.name for p in tmp.iterdir() if not p.name.startswith("."))
        for f in files:
            check_file_target(root / f, field)
        interrupts.check(f"before writing {', '.join(files)} in {root}")
        with interrupts.deferred():
            for f in files:
                os.replace(tmp / f, root / f)
        fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- the lock
def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        text = ""
    return text or "another process"


def _make_dirs(root: Path) -> list[Path]:
    """Creates ``root`` and missing parents; returns the ones created, outermost first."""
    missing = []
    p = root.absolute()
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    root.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


def _remove_if_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def output_lock(root: str | os.PathLike, *, field: str = "output_dir",
                command: str = "jaxunlearn") -> Iterator[Path]:
    """Holds the exclusive lock of output directory ``root`` for the block.

    Creates ``root`` when needed (and removes it again, if still empty, when the block
    ends), checks that it is a writable directory, and takes ``flock(LOCK_EX)`` on
    ``root/.jaxunlearn.lock``, which records the holder (pid, host, command, start).

    Raises:
      StorageError: ``root`` is a file, not writable, or held by another command.
    """
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise StorageError(f"{field}: {root} exists and is not a directory")
    try:
        created = _make_dirs(root)
    except OSError as e:
        raise StorageError(f"{field}: cannot create {root} ({e.strerror})") from None
    lock_path = root / LOCK_NAME
    fd = -1
    try:
        if not os.access(root, os.W_OK | os.X_OK):
            raise StorageError(f"{field}: {root} is not writable")
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            except OSError as e:
                raise StorageError(f"{field}: cannot create {lock_path} ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                fd = -1
                raise StorageError(f"{field}: {root} is in use by {_holder(lock_path)}; wait "
                                   f"for it to finish or choose another {field}") from None
            try:  # the holder may have unlinked the file between our open and flock
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            fd = -1
        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        info = f"pid {os.getpid()} on {socket.gethostname()} ({command}, since {stamp})\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        yield root
    finally:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)
            os.close(fd)
        _remove_if_empty(created)


# ----------------------------------------------------------------------------- faults
def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the disk is full.

    ``OSError`` with ``ENOSPC``/``EDQUOT``, or a wrapped library error (tensorstore,
    safetensors) whose text says "No space left on device".
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
