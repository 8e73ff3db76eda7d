"""Shared test helpers: tiny model configs, benchmark tokenizers, a plain NLL fit.

Test modules import these directly (``from _training import ...``); ``conftest.py``
builds its shared fixtures from them.
"""

from flax import nnx

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.models import LlamaConfig
from jaxunlearn.train import finetune, loop
from jaxunlearn.train.step import OptimizerConfig

# The widths the unit tests use: two layers, 4 query / 2 kv heads of size 8.
TINY = dict(hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2)


def tiny_config(vocab_size: int, **overrides) -> LlamaConfig:
    """A ``LlamaConfig`` of ``TINY`` widths (each overridable) and ``vocab_size`` tokens."""
    return LlamaConfig(vocab_size=vocab_size, **{**TINY, **overrides})


def bench_tokenizer(bench, *, vocab_size: int = 1000):
    """A BPE tokenizer trained on a synthetic benchmark's QA splits and canaries."""
    return tok_lib.train_tokenizer(
        tok_lib.corpus_texts({**bench.splits, "canaries": bench.canaries}),
        vocab_size=vocab_size)


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
