"""Shared test helper: fit a tiny model with plain NLL for a fixed number of steps."""

from flax import nnx

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.train import finetune, loop
from jaxunlearn.train.step import OptimizerConfig


def train_nll(model, encoded, *, steps: int, learning_rate: float, warmup_steps: int,
              batch_size: int, seq_len: int, pad_id: int = 2):
    """``model`` trained for ``steps`` AdamW updates (no weight decay) over ``encoded``,
    epochs reshuffled with seed 0 (``train.finetune.nll_finetune``); returns a new model."""
    graphdef, params = nnx.split(model, nnx.Param)
    source = loop.BatchSource(
        steps_per_epoch=batch_lib.steps_per_epoch(len(encoded), batch_size),
        epoch_batches=lambda epoch: batch_lib.iterate_batches(
            encoded, batch_size, seed=0, epoch=epoch, pad_id=pad_id, seq_len=seq_len))
    result = finetune.nll_finetune(
        graphdef, params, source, total_steps=steps, optimizer=OptimizerConfig(
            learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=0.0))
    return nnx.merge(graphdef, result.state.params)
