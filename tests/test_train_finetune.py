"""NLL fine-tuning (``jaxunlearn.train.finetune``): the routine equals the step it wraps,
run by hand, and leaves the caller's weights untouched."""

import jax
import numpy as np
from flax import nnx

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.batch import Encoded
from jaxunlearn.models import Llama
from jaxunlearn.models.presets import tiny
from jaxunlearn.train import finetune, loop
from jaxunlearn.train.nll import nll_objective
from jaxunlearn.train.step import OptimizerConfig, init_train_state, make_optimizer, \
    make_train_step

CONFIG = tiny(vocab_size=64)


def _encoded(n=6, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt, answer = int(rng.integers(2, 5)), int(rng.integers(2, 7))
        ids = rng.integers(3, 64, prompt + answer).astype(np.int32)
        out.append(Encoded(ids, np.r_[np.zeros(prompt), np.ones(answer)].astype(np.float32)))
    return out


def test_nll_finetune_equals_the_step_run_by_hand():
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    before = jax.tree.map(np.asarray, params)
    enc = _encoded()
    source = loop.BatchSource(steps_per_epoch=2, epoch_batches=lambda e: batch_lib.iterate_batches(
        enc, 4, seed=1, epoch=e, pad_id=0, seq_len=16))
    opt_cfg = OptimizerConfig(learning_rate=1e-2, schedule="constant", weight_decay=0.0)
    result = finetune.nll_finetune(graphdef, params, source, optimizer=opt_cfg, total_steps=5,
                                   seed=3)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, np.asarray(b))  # the caller's weights are untouched
    # By hand: the same optimiser and step over the same batches.
    opt = make_optimizer(opt_cfg, 5)
    state = init_train_state(jax.tree.map(np.array, before), opt, jax.random.key(3))
    step = make_train_step(nll_objective(graphdef), opt, donate=False)
    losses = []
    for epoch in range(3):
        for b in batch_lib.iterate_batches(enc, 4, seed=1, epoch=epoch, pad_id=0, seq_len=16):
            if len(losses) < 5:
                state, m = step(state, b)
                losses.append(float(m["loss"]))
    np.testing.assert_allclose([h["loss"] for h in result.history], losses, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(result.state.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert losses[-1] < losses[0]
