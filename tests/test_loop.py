"""train.loop: bitwise resume (in process, after SIGTERM, after SIGKILL at a random step),
clean stop on a non-finite step, history, and the training NLL objective."""

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from _loop_runs import SPE, TOTAL, assert_bitwise, host, make_run, make_source
from jaxunlearn.errors import UserError
from jaxunlearn.train import checkpoint as ckpt
from jaxunlearn.train import loop
from jaxunlearn.train import mesh as mesh_lib

REPO = Path(__file__).resolve().parents[1]
_CACHE = Path(tempfile.gettempdir()) / f"jaxunlearn-test-loop-cache-{os.getuid()}"


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted run of TOTAL updates, and its state after 4 updates."""
    state, step = make_run()
    after4 = loop.run_loop(step, state, make_source(), total_steps=4, progress=False)
    params4 = host(after4.state.params)
    state, step = make_run()
    full = loop.run_loop(step, state, make_source(), total_steps=TOTAL, progress=False)
    return full, params4


def test_reference_run_learns_and_records_history(reference):
    full, _ = reference
    assert [h["step"] for h in full.history] == list(range(1, TOTAL + 1))
    assert [(h["epoch"], h["index"]) for h in full.history] == [divmod(s, SPE) for s in range(TOTAL)]
    assert int(full.state.step) == TOTAL
    assert full.history[-1]["loss"] < full.history[0]["loss"]


def test_stream_starts_mid_epoch():
    src = make_source()
    it = src.stream(0, 0)
    whole = [next(it) for _ in range(7)]
    it = src.stream(1, 1)
    part = [next(it) for _ in range(3)]
    assert [(e, i) for e, i, _ in part] == [(1, 1), (1, 2), (2, 0)]
    for (e, i, b), (e2, i2, b2) in zip(part, whole[4:]):
        assert (e, i) == (e2, i2) and np.array_equal(b["ids"], b2["ids"])


def test_resume_mid_epoch_on_a_mesh_is_bitwise(tmp_path):
    mesh = mesh_lib.make_mesh(data=1, fsdp=2)  # weights split in two: restore must re-shard
    place = loop.batch_placer(mesh)
    state, step = make_run(mesh)
    ref = loop.run_loop(step, state, make_source(), total_steps=TOTAL, place_batch=place,
                        progress=False)
    state, step = make_run(mesh)
    first = loop.run_loop(step, state, make_source(), total_steps=5, place_batch=place,
                          checkpoint_dir=tmp_path, progress=False)
    meta, _ = ckpt.read_meta(first.checkpoint)
    assert (meta.step, meta.epoch, meta.batch_index) == (5, 1, 2)  # mid-epoch
    state, step = make_run(mesh)
    resumed = loop.run_loop(step, state, make_source(), total_steps=TOTAL,
                            place_batch=place, checkpoint_dir=tmp_path, resume=True,
                            progress=False)
    assert resumed.start_step == 5
    assert resumed.state.params["embed"][...].sharding == ref.state.params["embed"][...].sharding
    assert_bitwise(resumed.state, ref.state)
    assert resumed.history == ref.history


def test_sigterm_in_process_checkpoints_then_resumes_bitwise(tmp_path, reference):
    def send_term(step, state):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    state, step = make_run()
    with pytest.raises(loop.Interrupted) as info:
        loop.run_loop(step, state, make_source(), total_steps=TOTAL, checkpoint_dir=tmp_path,
                      hooks=[loop.Hook(every=1, fn=send_term)], progress=False)
    assert isinstance(info.value, KeyboardInterrupt)
    assert "SIGTERM" in str(info.value) and info.value.checkpoint.name == "step_00000003"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
    state, step = make_run()
    resumed = loop.run_loop(step, state, make_source(), total_steps=TOTAL,
                            checkpoint_dir=tmp_path, resume=True, progress=False)
    assert_bitwise(resumed.state, reference[0].state)


def test_non_finite_step_stops_at_last_good_state(tmp_path, reference):
    _, params4 = reference
    state, step = make_run()
    with pytest.raises(loop.NonFiniteError) as info:  # update 5 is (epoch 1, batch 1)
        loop.run_loop(step, state, make_source(poison_at=(1, 1)), total_steps=TOTAL,
                      checkpoint_dir=tmp_path, progress=False)
    err = info.value
    assert isinstance(err, UserError)
    assert err.step == 5 and "update 5" in str(err) and "non-finite" in str(err)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004"]
    restored, meta = ckpt.restore_checkpoint(err.checkpoint, make_run()[0])
    assert meta.step == 4 and len(meta.history) == 4
    for saved, good in zip(host(restored.params), params4):
        assert np.isfinite(saved).all()
        assert saved.tobytes() == good.tobytes()


_CHILD = """
import sys, time, jax
jax.config.update("jax_default_matmul_precision", "highest")
sys.path.insert(0, {tests!r})
import _loop_runs
from jaxunlearn.train import loop
state, step = _loop_runs.make_run()
def tick(s, st):
    print("step", s, flush=True)
    time.sleep(0.15)  # slow enough for the parent to hit a given step
try:
    loop.run_loop(step, state, _loop_runs.make_source(), total_steps={total},
                  checkpoint_dir={ckdir!r}, checkpoint_every=1,
                  hooks=[loop.Hook(every=1, fn=tick)], progress=False)
except loop.Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(130)
"""


def _child_until(ckdir: Path, step: int, sig: int) -> subprocess.CompletedProcess:
    """Starts a training subprocess and sends ``sig`` once it reports update ``step``."""
    code = _CHILD.format(tests=str(REPO / "tests"), total=TOTAL, ckdir=str(ckdir))
    # The children share a compilation cache: the second one need not compile again.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(_CACHE),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.strip() == f"step {step}" or time.monotonic() > deadline:
            break
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigkill_at_a_random_step_then_resume_is_bitwise(tmp_path, reference):
    k = random.Random().randint(2, TOTAL - 2)
    done = _child_until(tmp_path, k, signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL, (k, done.stderr[-2000:])
    found = ckpt.list_checkpoints(tmp_path)
    assert found and k - 1 <= ckpt.read_meta(found[-1])[0].step < TOTAL, (k, found)
    state, step = make_run()
    resumed = loop.run_loop(step, state, make_source(), total_steps=TOTAL,
                            checkpoint_dir=tmp_path, resume=True, progress=False)
    assert_bitwise(resumed.state, reference[0].state)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in reference[0].history]


def test_sigterm_subprocess_writes_checkpoint_and_exits(tmp_path, reference):
    done = _child_until(tmp_path, 3, signal.SIGTERM)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "SIGTERM" in done.stderr
    meta, _ = ckpt.read_meta(ckpt.latest_checkpoint(tmp_path))
    assert 3 <= meta.step < TOTAL
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    state, step = make_run()
    resumed = loop.run_loop(step, state, make_source(), total_steps=TOTAL,
                            checkpoint_dir=tmp_path, resume=True, progress=False)
    assert_bitwise(resumed.state, reference[0].state)
