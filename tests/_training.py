"""Shared test helper: fit a tiny model with plain NLL for a fixed number of steps."""

import jax
from flax import nnx

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.train import loop as loop_lib
from jaxunlearn.train import step as step_lib
from jaxunlearn.train.step import OptimizerConfig


def train_nll(model, encoded, *, steps: int, learning_rate: float, warmup_steps: int,
              batch_size: int, seq_len: int, pad_id: int = 2):
    """``model`` trained for ``steps`` AdamW updates (no weight decay) over ``encoded``,
    epochs reshuffled with seed 0; returns a new model."""
    graphdef, params = nnx.split(model, nnx.Param)
    opt = step_lib.make_optimizer(OptimizerConfig(learning_rate=learning_rate,
                                                  warmup_steps=warmup_steps,
                                                  weight_decay=0.0), steps)
    state = step_lib.init_train_state(params, opt, jax.random.key(0))
    step = step_lib.make_train_step(loop_lib.nll_loss_fn(graphdef), opt)
    done, epoch = 0, 0
    while done < steps:
        for b in batch_lib.iterate_batches(encoded, batch_size, seed=0, epoch=epoch,
                                           pad_id=pad_id, seq_len=seq_len):
            state, _ = step(state, b)
            done += 1
            if done == steps:
                break
        epoch += 1
    return nnx.merge(graphdef, state.params)
