"""The README's "new loss in ten lines" snippet runs and composes as it says."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import jax.numpy as jnp
from flax import nnx

from jaxunlearn import losses, methods
from jaxunlearn.data.batch import Batch
from jaxunlearn.models import Llama, LlamaConfig
from jaxunlearn.train.step import objective_value


def _snippet() -> str:
    text = (Path(__file__).parents[1] / "README.md").read_text()
    return re.search(r"```python\n(import dataclasses.*?)```", text, re.S).group(1)


def test_readme_method_snippet_registers_and_composes():
    namespace: dict = {}
    if "half_npo" not in methods.method_names():
        exec(_snippet(), namespace)
    method = methods.get_method({"name": "half_npo", "beta": 1.0})
    assert method.beta == 1.0
    config = LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=24, num_layers=1,
                         num_heads=2, num_kv_heads=1)
    model = Llama(config, rngs=nnx.Rngs(0))
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) % 30
    mask = np.ones((2, 6), np.float32)
    b = Batch(ids, np.roll(ids, -1, 1), mask, np.ones((2, 6), np.int32))
    logits = model(jnp.asarray(ids))
    logp = np.asarray(losses.sequence_logprob(logits, b.labels, b.loss_mask), np.float64)
    ref = (logp + np.array([0.3, -0.7])).astype(np.float32)
    _, params = nnx.split(model, nnx.Param)
    outputs = {"answer": methods.forward(nnx.graphdef(model), params, b)}
    cache = {"ref_logp": {"answer": ref}, "weight": np.ones(2, np.float32)}
    per_answer = method.forget_term(outputs, {"answer": b}, cache)
    # Independent: -(1/beta) * log sigmoid(-beta * (logp - ref)) with beta = 1, per answer.
    want = -np.log(1.0 / (1.0 + np.exp(logp - ref.astype(np.float64))))
    np.testing.assert_allclose(np.asarray(per_answer), want, rtol=1e-5)
    # ... and the objective the loop minimises averages them (alpha = 0: no retain term).
    objective = dataclasses.replace(method, alpha=0.0).objective(nnx.graphdef(model), config)
    loss, _ = objective_value(objective, params, {"forget": {"answer": b}, "retain": b,
                                                  "cache": cache})
    np.testing.assert_allclose(float(loss), want.mean(), rtol=1e-5)
