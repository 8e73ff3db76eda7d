"""Atomic save / restore of the whole training state, so a run can resume bit for bit.

A checkpoint directory ``<dir>/step_00000120/`` holds

  ``state/``      the ``TrainState`` leaves (params, optimiser state, step, RNG key data),
                  written by orbax-checkpoint (tensorstore/OCDBT, shardings preserved);
  ``meta.json``   a small sidecar: data position (``epoch``, ``batch_index`` within the
                  epoch), the run's config ``fingerprint``, the ``model_config``, the name,
                  shape and dtype of every leaf, the loop's metric ``history``.

Atomicity: both are written into a hidden ``.tmp-step_...`` directory, flushed, and
the directory is renamed to ``step_...`` last, so a killed save never looks complete
(a ``step_*`` directory either has everything or does not exist). Non-finite
parameters or optimiser moments are refused before anything is written.

A job of several processes (``train.distributed``) writes one checkpoint: every process
saves the shards it holds through orbax's multi-process support, process 0 alone
prepares the directory, writes the sidecar and renames. Restore reads into the target's
shardings whatever layout wrote it: a checkpoint of two processes resumes in one, and
one of one process in two.

Restore checks the sidecar against what the caller expects (same fingerprint, same
model config, same leaves with the same shapes and dtypes) and raises
:class:`~jaxunlearn.models.io.CheckpointError` naming the directory and the mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import resources, storage
from jaxunlearn.errors import CheckpointError
from jaxunlearn.train import distributed
from jaxunlearn.train.step import TrainState

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointMeta:
    """The sidecar of one checkpoint (``meta.json``).

    Attributes:
      step: optimiser steps taken (``int(state.step)``).
      epoch, batch_index: where the data stream continues: batch ``batch_index`` of
        epoch ``epoch`` is the next one to train on.
      fingerprint: the run configuration's hash; resume refuses another one.
      model_config: the model's architecture (e.g. ``dataclasses.asdict(LlamaConfig)``).
      history: the loop's per-step metric records up to ``step``.
    """

    step: int
    epoch: int
    batch_index: int
    fingerprint: str = ""
    model_config: Mapping[str, Any] | None = None
    history: tuple[Mapping[str, float], ...] = ()

    def __post_init__(self):
        for name in ("step", "epoch", "batch_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise CheckpointError(f"CheckpointMeta.{name} must be an integer >= 0, got {value!r}")


def _leaf_names(tree: Any) -> list[str]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p, simple=True, separator=".") for p, _ in paths]


def _to_storable(state: TrainState) -> tuple[list[jax.Array], str | None]:
    """The state's leaves, with a typed PRNG key replaced by its raw ``uint32`` data."""
    key, impl = state.key, None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(key))
        key = jax.random.key_data(key)
    return jax.tree.leaves(state._replace(key=key)), impl


def _leaf_specs(leaves: Sequence[Any]) -> list[tuple[tuple[int, ...], str]]:
    return [(tuple(int(d) for d in x.shape), str(np.dtype(x.dtype))) for x in leaves]


@jax.jit
def _finite_flags(leaves):
    return jnp.stack([jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact)
                      else jnp.bool_(True) for x in leaves])


def _check_finite(leaves: Sequence[jax.Array], names: Sequence[str], where: Path) -> None:
    flags = distributed.to_host(_finite_flags(list(leaves)))  # one check for the whole state
    if not flags.all():
        raise CheckpointError(f"{where}: refusing to save non-finite values "
                              f"({names[int(np.argmin(flags))]})")


def _checkpointer():
    import orbax.checkpoint as ocp

    # The synchronous Checkpointer: save() returns only once everything is on disk.
    return ocp.Checkpointer(ocp.StandardCheckpointHandler())


def step_dir(directory: str | os.PathLike, step: int) -> Path:
    return Path(directory) / f"step_{int(step):08d}"


def save_checkpoint(directory: str | os.PathLike, state: TrainState, meta: CheckpointMeta, *,
                    keep: int | None = 3) -> Path:
    """Writes ``state`` and ``meta`` to ``<directory>/step_<meta.step>/`` atomically.

    Args:
      state: the training state (any sharding; shardings are restored from the target).
      meta: the sidecar; ``meta.step`` must equal ``int(state.step)``.
      keep: how many of the newest checkpoints to keep (older ones are deleted after the
        new one is complete); None keeps all.

    Returns:
      The checkpoint's directory.
    """
    # orbax (tensorstore) refuses relative paths; users naturally give relative output dirs.
    directory = Path(directory).absolute()
    if keep is not None and keep < 1:
        raise CheckpointError(f"keep must be >= 1 or None, got {keep}")
    final = step_dir(directory, meta.step)
    if int(state.step) != meta.step:
        raise CheckpointError(f"{final}: meta.step={meta.step} but state.step={int(state.step)}")
    leaves, key_impl = _to_storable(state)
    names = _leaf_names(state)
    _check_finite(leaves, names, final)
    if final.is_symlink():
        raise CheckpointError(f"{final}: a symbolic link where a checkpoint goes; refusing "
                              "to write through it")
    # A job of several processes writes one checkpoint: every process writes its own
    # shards through orbax (which coordinates them); process 0 prepares the directory,
    # writes the sidecar and commits. The barriers keep the others in step with it.
    tmp = directory / f"{_TMP_PREFIX}{final.name}"
    primary = distributed.is_primary()
    if primary:
        directory.mkdir(parents=True, exist_ok=True)
        resources.check_fits(sum(int(x.nbytes) for x in leaves) + (1 << 20),
                             resources.free_disk(directory), subject=f"checkpoint {final}",
                             estimate="disk", where="the free space of its file system")
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save of the same step
        tmp.mkdir()
    distributed.barrier(f"checkpoint {final} prepared")
    try:
        _checkpointer().save(tmp / "state", args=_save_args(leaves))
        if primary:
            _commit(tmp, final, directory, {
                "format_version": FORMAT_VERSION,
                "step": meta.step, "epoch": meta.epoch, "batch_index": meta.batch_index,
                "fingerprint": meta.fingerprint, "model_config": meta.model_config,
                "key_impl": key_impl,
                "leaves": [[n, list(s), d] for n, (s, d) in zip(names, _leaf_specs(leaves))],
                "history": [dict(h) for h in meta.history],
            })
    except BaseException:
        if primary:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if primary and keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            _remove(old)
    distributed.barrier(f"checkpoint {final} committed")
    return final


def _commit(tmp: Path, final: Path, directory: Path, sidecar: dict) -> None:
    """Writes ``meta.json`` into ``tmp``, flushes, renames ``tmp`` to ``final``."""
    with open(tmp / "meta.json", "w", encoding="utf-8") as fh:
        fh.write(storage.json_text(sidecar, indent=None, sort_keys=True))  # NaN -> null
        fh.flush()
        os.fsync(fh.fileno())
    storage.fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. interrupted right after a save)
        _remove(final)
    os.rename(tmp, final)  # the commit point
    storage.fsync_dir(directory)


def _remove(path: Path) -> None:
    """Deletes one checkpoint (or temporary) directory this module wrote; never follows a
    symbolic link out of the checkpoint directory."""
    if path.is_symlink():
        raise CheckpointError(f"{path}: a symbolic link where a checkpoint is; refusing to "
                              "delete through it")
    shutil.rmtree(path, ignore_errors=True)


def remove_checkpoints(directory: str | os.PathLike) -> bool:
    """Deletes what this module wrote in ``directory`` (``step_*`` and unfinished
    ``.tmp-step_*`` directories), then ``directory`` itself if that left it empty.

    Anything else in it is kept. Returns True when a checkpoint was deleted.
    """
    directory = Path(directory)
    if directory.is_symlink() or not directory.is_dir():
        return False
    found = list_checkpoints(directory)
    for p in found:
        _remove(p)
    remove_stale_temps(directory)
    try:
        directory.rmdir()
    except OSError:
        pass
    return bool(found)


def _save_args(leaves):
    import orbax.checkpoint as ocp

    # Flat, index-named leaves: any pytree (nnx.State, optax namedtuples) round-trips
    # through the caller's own tree structure, and names never need escaping.
    return ocp.args.StandardSave({f"leaf_{i:05d}": x for i, x in enumerate(leaves)})


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (unfinished temp dirs ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and not p.is_symlink():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(directory)
    return found[-1] if found else None


def remove_stale_temps(directory: str | os.PathLike) -> int:
    """Deletes leftovers of killed saves (``.tmp-step_*``); returns how many."""
    directory = Path(directory)
    n = 0
    if directory.is_dir():
        for p in directory.iterdir():
            if p.name.startswith(_TMP_PREFIX) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def read_meta(path: str | os.PathLike) -> tuple[CheckpointMeta, dict]:
    """The sidecar of checkpoint ``path`` as ``(CheckpointMeta, raw dict)``; validates presence."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory does not exist")
    if not (path / "meta.json").is_file() or not (path / "state").is_dir():
        raise CheckpointError(f"{path}: partial checkpoint (meta.json or state/ missing)")
    try:
        raw = json.loads((path / "meta.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / 'meta.json'}: malformed JSON ({e})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path / 'meta.json'}: expected a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path / 'meta.json'}: field 'format_version' is "
                              f"{raw.get('format_version')!r}, expected {FORMAT_VERSION}")
    for field in ("step", "epoch", "batch_index", "leaves"):
        if field not in raw:
            raise CheckpointError(f"{path / 'meta.json'}: field {field!r} missing")
    meta = CheckpointMeta(step=raw["step"], epoch=raw["epoch"], batch_index=raw["batch_index"],
                          fingerprint=raw.get("fingerprint", ""),
                          model_config=raw.get("model_config"),
                          history=tuple(raw.get("history", ())))
    return meta, raw


def _first_difference(a: Mapping, b: Mapping) -> str:
    for k in sorted(set(a) | set(b), key=str):
        if a.get(k) != b.get(k):
            return f"{k}: checkpoint has {a.get(k)!r}, this run has {b.get(k)!r}"
    return "(none)"


def restore_checkpoint(path: str | os.PathLike, target: TrainState, *,
                       fingerprint: str | None = None,
                       model_config: Mapping[str, Any] | None = None
                       ) -> tuple[TrainState, CheckpointMeta]:
    """Loads checkpoint ``path`` into the structure, shapes and shardings of ``target``.

    Args:
      target: a state of the run being resumed (e.g. the fresh initial state); only its
        tree structure, shapes, dtypes and shardings are used.
      fingerprint: when given, must equal the checkpoint's.
      model_config: when given, must equal the checkpoint's.

    Raises:
      CheckpointError: missing or partial directory, other config or model shape.
    """
    path = Path(path).absolute()  # orbax refuses relative paths
    meta, raw = read_meta(path)
    if fingerprint is not None and meta.fingerprint != fingerprint:
        raise CheckpointError(f"{path}: written by another run configuration (fingerprint "
                              f"{meta.fingerprint!r}, this run {fingerprint!r}); start without "
                              "resume or use that configuration")
    if model_config is not None and meta.model_config is not None:
        want = json.loads(storage.json_text(dict(model_config)))
        if dict(meta.model_config) != want:
            raise CheckpointError(f"{path}: checkpoint is of another model "
                                  f"({_first_difference(meta.model_config, want)})")
    leaves, key_impl = _to_storable(target)
    names = _leaf_names(target)
    stored = raw["leaves"]
    if len(stored) != len(leaves):
        raise CheckpointError(f"{path}: checkpoint has {len(stored)} arrays, this model and "
                              f"optimiser need {len(leaves)} (another model or optimiser)")
    for (name, shape, dtype), want_name, (want_shape, want_dtype) in zip(
            stored, names, _leaf_specs(leaves)):
        if name != want_name or tuple(shape) != want_shape or dtype != want_dtype:
            raise CheckpointError(f"{path}: {name} is {dtype}{list(shape)} in the checkpoint, "
                                  f"this run needs {want_name} as {want_dtype}{list(want_shape)} "
                                  "(another model shape)")
    if raw.get("key_impl") != key_impl:
        raise CheckpointError(f"{path}: RNG key kind {raw.get('key_impl')!r}, this run uses "
                              f"{key_impl!r}")
    import orbax.checkpoint as ocp

    abstract = {f"leaf_{i:05d}": jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
                for i, x in enumerate(leaves)}
    try:
        loaded = _checkpointer().restore(path / "state", args=ocp.args.StandardRestore(abstract))
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint state ({str(e)[:200]})") from None
    flat = [loaded[f"leaf_{i:05d}"] for i in range(len(leaves))]
    # orbax returns committed arrays; an uncommitted target leaf (plain single-device
    # state) stays uncommitted, or every jitted step would compile a second time.
    flat = [x if getattr(t, "committed", True) else jax.device_put(np.asarray(x))
            for x, t in zip(flat, leaves)]
    # A typed key and its raw data are both a single leaf: the target's structure fits.
    state = jax.tree.unflatten(jax.tree.structure(target), flat)
    if key_impl is not None:
        state = state._replace(key=jax.random.wrap_key_data(state.key, impl=key_impl))
    return state, meta
