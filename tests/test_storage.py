"""jaxunlearn.storage: atomic commits, foreign data never replaced, strict JSON, one writer.

Unit tests of the policy, then the CLI through the faults it exists for: a second run on
a held output directory, a full disk, a file system without room for the run, and a
rerun that drops an earlier run's checkpoints.
"""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from _cliworld import make_world, run_cli, stderr_lines, tree
from jaxunlearn import interrupts, storage


def strict_json(path: Path):
    """Parses ``path`` refusing NaN/Infinity, which are not JSON."""
    def refuse(name):
        raise ValueError(f"non-JSON constant {name}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


# ------------------------------------------------------------------------------ JSON
def test_write_json_writes_non_finite_values_as_null(tmp_path):
    obj = {"loss": float("nan"), "auc": np.float32("inf"), "n": np.int64(3),
           "curve": np.array([1.0, -np.inf]), "pair": (1, 2.5), "ok": np.bool_(True)}
    storage.write_json(tmp_path / "a.json", obj)
    assert strict_json(tmp_path / "a.json") == {"loss": None, "auc": None, "n": 3,
                                                 "curve": [1.0, None], "pair": [1, 2.5],
                                                 "ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary left


def test_config_json_mode_refuses_non_finite_values_naming_the_key():
    with pytest.raises(ValueError, match=r"rms_norm_eps"):
        storage.json_text({"rms_norm_eps": float("nan")}, nonfinite="error")


def test_the_old_json_writers_are_the_strict_one(tmp_path):
    """``train.loop.write_json_atomic`` wrote ``NaN`` (invalid JSON) into quality.json
    and unlearn.json; it is gone, and ``report.write_json`` and the pipeline's writers
    share ``storage.write_json``."""
    from jaxunlearn import report
    from jaxunlearn.train import loop

    assert not hasattr(loop, "write_json_atomic")
    storage.write_json(tmp_path / "quality.json", {"fact_recall": float("nan")})
    report.write_json({"forget_quality": float("-inf")}, tmp_path / "eval.json")
    assert strict_json(tmp_path / "quality.json") == {"fact_recall": None}
    assert strict_json(tmp_path / "eval.json") == {"forget_quality": None}


# ------------------------------------------------------------------------------ directories
def staged(parent: Path, content: str) -> Path:
    tmp = storage.staging_dir(parent / "final")
    (tmp / "weights.bin").write_text(content)
    return tmp


def test_commit_dir_creates_replaces_its_own_and_keeps_no_temporaries(tmp_path):
    final = tmp_path / "final"
    storage.commit_dir(staged(tmp_path, "one"), final)
    assert (final / "weights.bin").read_text() == "one" and storage.is_owned(final)
    storage.commit_dir(staged(tmp_path, "two"), final)  # ours: replaced
    assert (final / "weights.bin").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    (tmp_path / "empty").mkdir()
    storage.commit_dir(staged(tmp_path, "three"), tmp_path / "empty")  # empty: replaced
    assert (tmp_path / "empty" / "weights.bin").read_text() == "three"


@pytest.mark.parametrize("kind", ["foreign_dir", "file", "symlink"])
def test_commit_dir_refuses_what_it_did_not_write(tmp_path, kind):
    final = tmp_path / "final"
    if kind == "foreign_dir":
        final.mkdir()
        (final / "thesis.tex").write_text("years of work")
        why = "not written by jaxunlearn"
    elif kind == "file":
        final.write_text("years of work")
        why = "is a file"
    else:
        (tmp_path / "elsewhere").mkdir()
        final.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
        why = "symbolic link"
    before = tree(tmp_path)
    with pytest.raises(storage.StorageError, match=why):
        storage.check_dir_target(final, "--out")
    tmp = staged(tmp_path, "new")
    with pytest.raises(storage.StorageError, match=f"--out: {final}.*{why}"):
        storage.commit_dir(tmp, final, field="--out")
    assert tmp.is_dir()  # the caller removes its staging directory
    import shutil

    shutil.rmtree(tmp)
    assert tree(tmp_path) == before
    if kind != "symlink":
        assert "years of work" in (final.read_text() if kind == "file"
                                   else (final / "thesis.tex").read_text())


def test_commit_dir_stops_for_a_pending_interrupt_before_anything_is_visible(tmp_path):
    tmp = staged(tmp_path, "new")
    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(interrupts.Interrupted, match="SIGINT"):
            storage.commit_dir(tmp, tmp_path / "final")
    assert not (tmp_path / "final").exists()


def test_staged_files_move_all_or_none(tmp_path):
    out = tmp_path / "out"
    with storage.staged_files(out, "eval") as tmp:
        (tmp / "eval.json").write_text("{}")
        (tmp / "report.md").write_text("# report")
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "report.md"]
    with pytest.raises(RuntimeError):
        with storage.staged_files(out, "eval") as tmp:
            (tmp / "eval.json").write_text('{"new": 1}')
            raise RuntimeError("figure failed")
    assert (out / "eval.json").read_text() == "{}"  # nothing moved
    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
            with storage.staged_files(out, "eval") as tmp:
                (tmp / "eval.json").write_text('{"new": 2}')
                (tmp / "report.md").write_text("# new")
    assert (out / "eval.json").read_text() == "{}" and (out / "report.md").read_text() == "# report"
    assert sorted(p.name for p in out.iterdir()) == ["eval.json", "report.md"]


def test_remove_checkpoints_deletes_only_what_checkpoint_wrote(tmp_path):
    from jaxunlearn.train import checkpoint

    d = tmp_path / "ckpt"
    (d / "step_00000003" / "state").mkdir(parents=True)
    (d / ".tmp-step_00000004-x").mkdir()
    (d / "notes.txt").write_text("keep me")
    (tmp_path / "outside").mkdir()
    (d / "step_00000009").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert checkpoint.remove_checkpoints(d)
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt", "step_00000009"]
    assert (tmp_path / "outside").is_dir()
    (d / "notes.txt").unlink()
    (d / "step_00000009").unlink()
    assert not checkpoint.remove_checkpoints(d) and not d.exists()


# ------------------------------------------------------------------------------ the lock
def test_output_lock_is_exclusive_names_its_holder_and_leaves_nothing(tmp_path):
    root = tmp_path / "runs" / "x"
    with storage.output_lock(root, command="jaxunlearn unlearn"):
        assert (root / storage.LOCK_NAME).is_file()
        with pytest.raises(storage.StorageError,
                           match=rf"output_dir: {root} is in use by pid {os.getpid()} .*"
                                 r"jaxunlearn unlearn"):
            with storage.output_lock(root):
                pass
    assert not (tmp_path / "runs").exists()  # created for the run, removed when empty
    with storage.output_lock(root):  # released: free again
        (root / "eval.json").write_text("{}")
    assert sorted(p.name for p in root.iterdir()) == ["eval.json"]


def test_output_lock_refuses_a_file(tmp_path):
    (tmp_path / "out").write_text("mine")
    with pytest.raises(storage.StorageError, match="not a directory"):
        with storage.output_lock(tmp_path / "out"):
            pass


def test_disk_full_is_recognised_through_wrappers():
    assert storage.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    try:
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise RuntimeError("orbax: save failed") from e
    except RuntimeError as wrapped:
        assert storage.is_disk_full(wrapped)
    assert storage.is_disk_full(ValueError("tensorstore: ... No space left on device [os]"))
    assert not storage.is_disk_full(OSError(errno.EACCES, "Permission denied"))


# ------------------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("storage"))


def unlearn_args(world, out: Path, *extra) -> list:
    return ["unlearn", f"data.benchmark={world.bench}", f"model.path={world.model}",
            f"output_dir={out}", "method=npo", "train.batch_size=2", "data.max_len=128",
            *extra]


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = stderr_lines(result)
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr[-3000:]
    return errors[0]


def test_second_run_on_a_held_output_dir_gets_one_line_naming_the_holder(world, tmp_path):
    out = tmp_path / "out"
    with storage.output_lock(out, command="jaxunlearn unlearn"):
        (out / "checkpoints" / "unlearn-npo-0123456789abcdef" / "step_00000001").mkdir(
            parents=True)  # the first run's work, which the second deleted before
        before = tree(tmp_path)
        result = run_cli(unlearn_args(world, out, "train.steps=1"), cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        line = one_error_line(result)
        assert f"is in use by pid {os.getpid()}" in line and "jaxunlearn unlearn" in line
        assert tree(tmp_path) == before


def test_disk_full_while_saving_is_one_line_and_nothing_half_written(world, tmp_path):
    patch = ("import errno, safetensors.numpy\n"
             "def save_file(*a, **k):\n"
             "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "safetensors.numpy.save_file = save_file\n")
    before = tree(tmp_path)
    result = run_cli(["convert", world.model, "--out", tmp_path / "hf"], cwd=tmp_path,
                     patch=patch)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no space left on device" in one_error_line(result)
    assert tree(tmp_path) == before  # no half-written directory, no temporaries


def test_disk_full_in_a_checkpoint_is_one_line(world, tmp_path):
    patch = ("import errno\n"
             "from jaxunlearn.train import checkpoint\n"
             "class Full:\n"
             "    def save(self, *a, **k):\n"
             "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
             "checkpoint._checkpointer = Full\n")
    result = run_cli(unlearn_args(world, tmp_path / "out", "train.steps=2",
                                  "train.checkpoint_every=1"), cwd=tmp_path, patch=patch)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "no space left on device" in one_error_line(result)
    assert not (tmp_path / "out" / "npo").exists()
    assert not [p for p in tree(tmp_path / "out") if "step_" in p]


def test_free_space_is_checked_before_any_work(world, tmp_path):
    patch = ("import collections, shutil\n"
             "Usage = collections.namedtuple('Usage', 'total used free')\n"
             "shutil.disk_usage = lambda path: Usage(10**12, 10**12 - 4096, 4096)\n")
    before = tree(tmp_path)
    result = run_cli(unlearn_args(world, tmp_path / "out", "train.steps=1"), cwd=tmp_path,
                     patch=patch)
    assert result.returncode == 2, result.stderr[-3000:]
    line = one_error_line(result)
    assert f"output_dir={tmp_path / 'out'}" in line and "free space" in line, line
    assert tree(tmp_path) == before


def test_out_of_memory_is_one_line(monkeypatch, capsys):
    """XLA's RESOURCE_EXHAUSTED (a batch that does not fit after all) is exit 2, one line."""
    from jaxunlearn import cli

    class XlaRuntimeError(RuntimeError):
        pass

    def dispatch(args):
        raise XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                              "68719476736 bytes.\nBufferAssignment OOM Debugging.")

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    assert cli.main(["report", "eval.json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory" in err and "train.batch_size" in err
