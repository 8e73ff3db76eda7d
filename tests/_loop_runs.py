"""Shared by the loop and checkpoint tests: a tiny model's jitted step and a deterministic
batch source (also imported by the loop tests' training subprocesses)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn.models import Llama
from jaxunlearn.models.presets import tiny
from jaxunlearn.train import loop
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.step import (Objective, OptimizerConfig, init_train_state,
                                   make_optimizer, make_train_step, state_shardings)

CONFIG = tiny(vocab_size=64)
T, SPE, TOTAL = 12, 3, 8  # sequence length, batches per epoch, updates in a full run


def _nll_sum(logits, labels, mask):
    # Written out here on purpose: these tests are of the loop, not of jaxunlearn.losses.
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
