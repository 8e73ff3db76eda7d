"""Multi-process runs (``train.distributed``): two processes on this machine, one JAX job.

Two processes of 4 simulated CPU devices each join one job over localhost (gloo
collectives) and run ``jaxunlearn unlearn`` (NPO) on a ``data=2 x fsdp=4`` mesh. The run
is stopped and resumed across the two layouts on its way (a checkpoint written by two
processes resumes in one process of 8 devices, and one written by that process resumes
in two), and its weights equal those of one uninterrupted process of 8 devices. The
second process is patched to fail if it ever writes the model or commits a checkpoint:
process 0 is the job's one writer. A failure in one process ends the other with its
message, in bounded time.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file as read_safetensors

from _cliworld import REPO, make_world
from conftest import TEST_XLA_FLAGS
from jaxunlearn import cli, interrupts
from jaxunlearn.config import load_config
from jaxunlearn.pipeline import unlearning
from jaxunlearn.errors import ConfigError, MethodError
from jaxunlearn.train import distributed
from jaxunlearn.train import loop as loop_lib

JOB_TIMEOUT = 240  # seconds for one two-process command; a hang fails the test

# Process 1 must never write what process 0 writes.
NOT_A_WRITER = """
from jaxunlearn.pipeline import unlearning as _unlearning
from jaxunlearn.train import checkpoint as _checkpoint

def _refuse(*args, **kwargs):
    raise AssertionError("process 1 wrote a file that process 0 writes")

_unlearning.save_pretrained = _refuse
_checkpoint._commit = _refuse
"""

# SIGINT as if it arrived during update STOP_AFTER (of this command): the loop
# checkpoints after that update and the command exits 130.
STOP_AFTER = """
import signal
from jaxunlearn import interrupts
from jaxunlearn.train import loop as _loop

_host_metrics, _updates = _loop._host_metrics, [0]

def _stopping(metrics):
    _updates[0] += 1
    if _updates[0] == {n}:
        interrupts._State.received = signal.SIGINT
    return _host_metrics(metrics)

_loop._host_metrics = _stopping
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(args: list[str], cwd: Path, patches: tuple[str, str] = ("", "")
            ) -> list[subprocess.CompletedProcess]:
    """``jaxunlearn *args`` as a job of two processes of 4 CPU devices each."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {TEST_XLA_FLAGS}",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    job = [f"distributed.coordinator_address=127.0.0.1:{_free_port()}",
           "distributed.num_processes=2", "distributed.initialization_timeout=60",
           "distributed.heartbeat_timeout=30"]
    procs = []
    for pid, patch in enumerate(patches):
        argv = [*args, *job, f"distributed.process_id={pid}"]
        code = f"{patch}\nimport sys\nfrom jaxunlearn import cli\nsys.exit(cli.main({argv!r}))\n"
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=JOB_TIMEOUT)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def _log(results) -> str:
    return "\n".join(f"--- process {i}: exit {r.returncode}\n{r.stderr[-2500:]}"
                     for i, r in enumerate(results))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("distributed"))


def _unlearn_args(world, out: Path) -> list[str]:
    return ["unlearn", f"data.benchmark={world.bench}", f"model.path={world.model}",
            f"output_dir={out}", "method=npo", "train.steps=4", "train.batch_size=8",
            "train.optimizer.learning_rate=3e-4", "train.optimizer.schedule=constant",
            "data.max_len=128", "mesh.data=2", "mesh.fsdp=4", "seed=0"]


def _checkpoint_steps(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("unlearn-npo-*/step_*"))


def test_two_processes_unlearn_as_one_and_resume_across_layouts(world, tmp_path, monkeypatch):
    # The reference: one process of 8 devices, uninterrupted.
    ref = tmp_path / "ref"
    assert cli.main(_unlearn_args(world, ref)) == 0

    # Updates 1-2 in two processes, stopped: a two-process checkpoint at step 2.
    out = tmp_path / "job"
    args = _unlearn_args(world, out)
    stop2 = STOP_AFTER.format(n=2)
    first = run_job(args, tmp_path, (stop2, stop2 + NOT_A_WRITER))
    assert [r.returncode for r in first] == [130, 130], _log(first)
    assert "interrupted" in first[0].stderr, _log(first)
    assert _checkpoint_steps(out) == ["step_00000002"]

    # Update 3 in one process of 8 devices, from that checkpoint; stopped again.
    real_metrics, updates = loop_lib._host_metrics, []

    def stopping(metrics):
        updates.append(1)
        interrupts._State.received = signal.SIGINT
        return real_metrics(metrics)

    monkeypatch.setattr(loop_lib, "_host_metrics", stopping)
    assert cli.main([args[0], "--resume", *args[1:]]) == 130
    monkeypatch.setattr(loop_lib, "_host_metrics", real_metrics)
    assert len(updates) == 1 and _checkpoint_steps(out)[-1] == "step_00000003"

    # Update 4 in two processes, from the one-process checkpoint; process 0 writes.
    last = run_job([args[0], "--resume", *args[1:]], tmp_path, ("", NOT_A_WRITER))
    assert [r.returncode for r in last] == [0, 0], _log(last)
    assert _checkpoint_steps(out) == [], "the finished run removes its checkpoints"

    want = read_safetensors(ref / "npo" / "model.safetensors")
    got = read_safetensors(out / "npo" / "model.safetensors")
    start = read_safetensors(world.model / "model.safetensors")
    assert set(got) == set(want)
    for name, w in want.items():
        scale = float(np.abs(w).max())
        moved = float(np.abs(w - start[name]).max())
        # Same partitioned programs; only the collectives' summation order differs, and
        # Adam's normalised step turns that rounding into differences bounded by the
        # distance moved, not by the weights' scale: up to 1.6e-3 of it on an AMD EPYC
        # (2.4e-5 of the scale), where an Intel Xeon stayed under 1e-5 of the scale. A
        # lost or repeated update would differ by a quarter of it (4 updates).
        diff = float(np.abs(got[name] - w).max())
        assert diff <= 1e-2 * moved, f"{name}: {diff:.3g} vs distance moved {moved:.3g}"
        # ... and the run moved every tensor well away from its start.
        assert moved > 5e-4 * scale, name


def test_a_failing_process_ends_the_job_with_its_message(world, tmp_path):
    """Process 1 fails while preparing its data; process 0, already waiting for it in a
    collective, stops with process 1's message and exit code instead of hanging."""
    fail = """
from jaxunlearn.errors import DataError
from jaxunlearn.pipeline import unlearning as _unlearning

def _broken(*args, **kwargs):
    raise DataError("forget10.json: line 3: injected failure")

_unlearning.prepare_data = _broken
"""
    results = run_job(_unlearn_args(world, tmp_path / "out"), tmp_path, ("", fail))
    assert [r.returncode for r in results] == [2, 2], _log(results)
    assert "error: forget10.json: line 3: injected failure" in results[1].stderr
    stopped = [line for line in results[0].stderr.splitlines() if "stopped" in line]
    assert stopped == ["jaxunlearn unlearn: error: stopped: process 1 of the job failed: "
                       "error: forget10.json: line 3: injected failure"], _log(results)
    assert not (tmp_path / "out" / "npo").exists()


# ------------------------------------------------------------------------------ the config


def test_distributed_config_reads_true_false_and_explicit_keys():
    assert load_config(None, ["distributed=false"]).distributed is None
    assert load_config(None, []).distributed is None
    assert load_config(None, ["distributed=true"]).distributed == distributed.DistributedConfig()
    cfg = load_config(None, ["distributed.coordinator_address=10.0.0.1:1234",
                             "distributed.num_processes=4", "distributed.process_id=3"])
    assert cfg.distributed == distributed.DistributedConfig(
        coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3)


@pytest.mark.parametrize("override, needle", [
    ("distributed.coordinator_address=localhost", "distributed.coordinator_address"),
    ("distributed.coordinator_address=host:0", "distributed.coordinator_address"),
    ("distributed.num_processes=0", "distributed.num_processes"),
    ("distributed.process_id=-1", "distributed.process_id"),
    ("distributed.heartbeat_timeout=0", "distributed.heartbeat_timeout"),
    ("distributed.hosts=2", "'hosts'"),
])
def test_bad_distributed_keys_are_refused_by_name(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [override])


def test_process_id_must_be_below_the_process_count():
    with pytest.raises(ConfigError, match="distributed.process_id=2 must be below "
                                          "distributed.num_processes=2"):
        load_config(None, ["distributed.num_processes=2", "distributed.process_id=2"])


def test_commands_other_than_unlearn_refuse_a_job(tmp_path, capsys):
    code = cli.main(["eval", "distributed=true", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "`jaxunlearn eval` runs in one process" in err[0]
    assert not (tmp_path / "out").exists()


def test_procedure_methods_refuse_a_job(world, tmp_path, monkeypatch):
    cfg = load_config(None, [f"data.benchmark={world.bench}", f"model.path={world.model}",
                             f"output_dir={tmp_path / 'out'}", "method=sga"])
    monkeypatch.setattr(unlearning.jax, "process_count", lambda: 2)
    with pytest.raises(MethodError, match="method.name=sga: a multi-process job runs the "
                                          "gradient methods"):
        unlearning.run_unlearning(cfg)
    assert not (tmp_path / "out").exists()
