"""train.checkpoint: what is written (atomically, the last ``keep``, never a non-finite
state), and every checkpoint that must be refused (other shapes, configs, partial)."""

import dataclasses
import json

import jax.numpy as jnp
import pytest
from flax import nnx

from _loop_runs import CONFIG, TOTAL, make_run, make_source
from jaxunlearn.errors import CheckpointError
from jaxunlearn.models import Llama
from jaxunlearn.train import checkpoint as ckpt
from jaxunlearn.train import loop


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
