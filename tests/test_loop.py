"""The training loop and its checkpoints: bitwise resume (in process, after SIGTERM, after
SIGKILL at a random step), clean stop on a non-finite step, refused checkpoints."""

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.errors import UserError
from jaxunlearn.models import Llama
from jaxunlearn.models.io import CheckpointError
from jaxunlearn.models.presets import tiny
from jaxunlearn.train import checkpoint as ckpt
from jaxunlearn.train import loop
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import (Objective, OptimizerConfig, init_train_state,
                                   make_optimizer, make_train_step, state_shardings)

CONFIG = tiny(vocab_size=64)
T, SPE, TOTAL = 12, 3, 8  # sequence length, batches per epoch, updates in a full run
REPO = Path(__file__).resolve().parents[1]
_CACHE = Path(tempfile.gettempdir()) / f"jaxunlearn-test-loop-cache-{os.getuid()}"


def _nll_sum(logits, labels, mask):
    # Written out here on purpose: this file tests the loop, not jaxunlearn.losses.
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    tok = jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
    return -(tok * mask).sum()


def make_source(rows=4, poison_at=None):
    """SPE batches per epoch of learnable rows (arithmetic progressions mod 61), a pure
    function of the epoch; the batch at ``poison_at = (epoch, index)`` carries a flag
    that makes the loss NaN."""

    def epoch_batches(epoch):
        rng = np.random.default_rng([11, epoch])
        for i in range(SPE):
            start, stride = rng.integers(0, 61, (rows, 1)), rng.integers(1, 4, (rows, 1))
            ids = ((start + stride * np.arange(T + 1)) % 61 + 3).astype(np.int32)
            yield {"ids": ids[:, :-1], "labels": ids[:, 1:],
                   "poison": np.full((rows,), float((epoch, i) == poison_at), np.float32)}

    return loop.BatchSource(steps_per_epoch=SPE, epoch_batches=epoch_batches)


_STEPS: dict = {}  # one jitted step per mesh, shared by every test: compile once


def make_run(mesh=None):
    """Fresh (state, step_fn). The loss uses the step's RNG key (random token dropout), so
    a resume that restored the wrong key could not match."""
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)

    def counts(batch):
        return {"tokens": jnp.asarray(batch["labels"].size, jnp.float32)}

    def loss(p, batch, key, totals):
        logits = nnx.merge(graphdef, p)(batch["ids"])
        keep = jax.random.bernoulli(key, 0.8, batch["labels"].shape).astype(jnp.float32)
        share = _nll_sum(logits, batch["labels"], keep) / totals["tokens"]
        return jnp.where(batch["poison"].max() > 0, jnp.nan, share), {"kept": keep.sum()}

    if mesh is not None:
        params = jax.device_put(params, mesh_lib.param_shardings(params, mesh))
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-2, warmup_steps=2), total_steps=TOTAL)
    state = init_train_state(params, opt, jax.random.key(3), mesh)
    if mesh not in _STEPS:
        _STEPS[mesh] = make_train_step(Objective(counts=counts, loss=loss), opt, mesh=mesh,
                                       state_sharding=state_shardings(state) if mesh else None)
    return state, _STEPS[mesh]


def host(tree):
    keys_as_data = jax.tree.map(lambda x: jax.random.key_data(x)
                                if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x, tree)
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(keys_as_data))]


def assert_bitwise(a, b):
    la, lb = host(a), host(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


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
import test_loop
from jaxunlearn.train import loop
state, step = test_loop.make_run()
def tick(s, st):
    print("step", s, flush=True)
    time.sleep(0.15)  # slow enough for the parent to hit a given step
try:
    loop.run_loop(step, state, test_loop.make_source(), total_steps={total},
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


# ------------------------------------------------------------------ checkpoint checks


@pytest.fixture
def saved(tmp_path):
    state, step = make_run()
    res = loop.run_loop(step, state, make_source(), total_steps=2, checkpoint_dir=tmp_path,
                        fingerprint="abc", model_config=dataclasses.asdict(CONFIG),
                        progress=False)
    return tmp_path, res


def test_checkpoint_of_another_model_shape_is_refused(saved):
    directory, res = saved
    other = CONFIG.replace(hidden_size=32, intermediate_size=64)
    state, _ = make_run()
    params = nnx.to_pure_dict(state.params)
    params["embed"] = jnp.zeros((64, 32))  # the first leaf, as in a model of width 32
    target = state._replace(params=params)
    with pytest.raises(CheckpointError, match=r"step_00000002.*embed.*\[64, 64\].*\[64, 32\]"):
        ckpt.restore_checkpoint(res.checkpoint, target)
    # Through the loop, the stored model config is compared first and named.
    with pytest.raises(CheckpointError, match=r"another model \(hidden_size: checkpoint has 64"):
        loop.run_loop(lambda s, b: None, target, make_source(), total_steps=4,
                      checkpoint_dir=directory, resume=True, fingerprint="abc",
                      model_config=dataclasses.asdict(other), progress=False)


def test_checkpoint_of_the_other_layer_layout_is_refused(saved):
    # Scanned layers store [L, ...] arrays, unrolled ones L arrays: the sidecar's model
    # config names the difference before any array is read.
    directory, _ = saved
    unrolled = CONFIG.replace(scan_layers=False)
    _, params = nnx.split(Llama(unrolled, rngs=nnx.Rngs(0)), nnx.Param)
    state, _ = make_run()
    with pytest.raises(CheckpointError, match=r"another model \(scan_layers: checkpoint has True"):
        loop.run_loop(lambda s, b: None, state._replace(params=params), make_source(),
                      total_steps=4, checkpoint_dir=directory, resume=True, fingerprint="abc",
                      model_config=dataclasses.asdict(unrolled), progress=False)


def test_checkpoint_of_another_config_is_refused(saved):
    directory, _ = saved
    state, step = make_run()
    with pytest.raises(CheckpointError, match="fingerprint 'abc', this run 'xyz'"):
        loop.run_loop(step, state, make_source(), total_steps=4, checkpoint_dir=directory,
                      resume=True, fingerprint="xyz", progress=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        loop.run_loop(step, state, make_source(), total_steps=4, checkpoint_dir=directory,
                      resume=False, fingerprint="abc", progress=False)


def test_partial_and_missing_checkpoints_are_refused(saved, tmp_path):
    directory, res = saved
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt.read_meta(tmp_path / "nope")
    (res.checkpoint / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"step_00000002: partial checkpoint"):
        ckpt.restore_checkpoint(res.checkpoint, make_run()[0])


def test_unfinished_save_is_ignored_and_cleaned(saved):
    directory, res = saved
    junk = directory / ".tmp-step_00000009-killed"
    (junk / "state").mkdir(parents=True)
    assert ckpt.latest_checkpoint(directory) == res.checkpoint
    state, step = make_run()
    out = loop.run_loop(step, state, make_source(), total_steps=3, checkpoint_dir=directory,
                        resume=True, fingerprint="abc", progress=False)
    assert out.start_step == 2 and not junk.exists()


def test_non_finite_state_is_never_written(tmp_path):
    state, _ = make_run()
    params = nnx.to_pure_dict(state.params)
    params["final_norm"]["scale"] = jnp.full((CONFIG.hidden_size,), jnp.nan)
    bad = state._replace(params=params)
    meta = ckpt.CheckpointMeta(step=0, epoch=0, batch_index=0)
    with pytest.raises(CheckpointError, match="non-finite"):
        ckpt.save_checkpoint(tmp_path, bad, meta)
    assert list(tmp_path.iterdir()) == []


def test_keep_last_n_and_sidecar_contents(tmp_path):
    state, step = make_run()
    loop.run_loop(step, state, make_source(), total_steps=TOTAL, checkpoint_dir=tmp_path,
                  checkpoint_every=2, keep=2, fingerprint="fp", progress=False)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000006", "step_00000008"]
    raw = json.loads((tmp_path / "step_00000008" / "meta.json").read_text())
    assert (raw["step"], raw["epoch"], raw["batch_index"], raw["fingerprint"]) == (8, 2, 2, "fp")
    assert raw["leaves"][0][0] == "params.embed.value" and raw["leaves"][0][1] == [64, 64]


# ------------------------------------------------------------------ grouped batches


def test_choose_lengths_hand_worked():
    lengths = [10, 12, 30, 100]
    # Without a compilation cost {32, 112} pads to 32 + 32 + 32 + 112 = 208 tokens, fewer
    # than any other pair; {112} alone pads to 448.
    assert loop.choose_lengths(lengths, compile_tokens=0, max_shapes=2) == (32, 112)
    assert loop.choose_lengths(lengths, compile_tokens=0, max_shapes=1) == (112,)
    # 208 + 2 * 100 < 448 + 100, but 208 + 2 * 300 > 448 + 300.
    assert loop.choose_lengths(lengths, compile_tokens=100) == (32, 112)
    assert loop.choose_lengths(lengths, compile_tokens=300) == (112,)
    # Ten epochs of padding outweigh the compilation: 10 * 208 + 600 < 10 * 448 + 300.
    assert loop.choose_lengths(lengths, compile_tokens=300, epochs=10, max_shapes=2) == (32, 112)
    # A third shape {16, 32, 112}: 10 * 176 + 900 = 2660 < 2680.
    assert loop.choose_lengths(lengths, compile_tokens=300, epochs=10) == (16, 32, 112)
    assert loop.choose_lengths([5, 5]) == (16,)


def test_grouped_source_is_deterministic_and_covers_every_sequence():
    from jaxunlearn.data.batch import Encoded

    lengths = [5, 9, 30, 31, 7, 40, 3, 33, 8, 6]
    enc = [Encoded(np.arange(n + 1, dtype=np.int32) + 100 * i, np.ones(n + 1, np.float32))
           for i, n in enumerate(lengths)]
    src = loop.grouped_source(enc, 3, seed=1, pad_id=0, lengths=(16, 48))
    assert src.steps_per_epoch == 2 + 2  # 6 short -> 2 batches, 4 long -> 2 (wrapped)
    e0 = list(src.epoch_batches(0))
    assert len(e0) == src.steps_per_epoch
    seen = set()
    for b in e0:
        real = b.attention_mask.sum(1)
        assert b.input_ids.shape[1] in (16, 48)
        assert (real <= b.input_ids.shape[1]).all() and (b.input_ids.shape[1] == 16) == (real <= 16).all()
        seen |= {int(r[0]) // 100 for r in b.input_ids}
    assert seen == set(range(len(lengths)))
    again = list(src.epoch_batches(0))
    assert all(np.array_equal(a.input_ids, b.input_ids) for a, b in zip(e0, again))
    def rows(batches):
        return [int(r[0]) // 100 for b in batches for r in b.input_ids]

    assert rows(src.epoch_batches(1)) != rows(e0)  # reshuffled every epoch

    # A sequence inactive in an epoch keeps its row but has no loss there.
    gated = loop.grouped_source(enc, 3, seed=1, pad_id=0, lengths=(16, 48),
                                active=lambda epoch: [i != 2 or epoch == 1 for i in range(10)])
    for epoch in (0, 1):
        batches = list(gated.epoch_batches(epoch))
        assert len(batches) == src.steps_per_epoch
        assert rows(batches) == rows(src.epoch_batches(epoch))
        for b, plain in zip(batches, src.epoch_batches(epoch)):
            np.testing.assert_array_equal(b.input_ids, plain.input_ids)
            is_2 = (b.input_ids[:, 0] // 100 == 2)
            np.testing.assert_array_equal(b.loss_mask[~is_2], plain.loss_mask[~is_2])
            assert (b.loss_mask[is_2].sum() > 0) == (epoch == 1 and plain.loss_mask[is_2].sum() > 0)
