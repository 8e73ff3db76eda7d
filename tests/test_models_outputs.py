"""``jaxunlearn.models.outputs``: one forward pass and the label log-probabilities read from
it, against NumPy's log-softmax of the model's own logits."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.data.batch import Batch
from jaxunlearn.models import Llama
from jaxunlearn.models.outputs import ModelOutput, forward
from jaxunlearn.models.presets import tiny

CONFIG = tiny(vocab_size=50)


@pytest.fixture(scope="module")
def run():
    """Model params, a batch with a prompt, a padded row and an empty row, the ModelOutput
    quantities (jitted) and NumPy float64 token log-probs from the model's logits."""
    graphdef, params = nnx.split(Llama(CONFIG, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, (4, 11)).astype(np.int32)
    mask = np.ones((4, 10), np.float32)
    mask[:, :3] = 0.0  # prompts
    att = np.ones((4, 10), np.int32)
    att[1, 7:] = 0  # a right-padded row
    mask[1, 7:] = 0.0
    mask[3] = 0.0  # a row without loss tokens
    b = Batch(ids[:, :-1], ids[:, 1:], mask, att)

    @jax.jit
    def quantities(p):
        out = forward(graphdef, p, b)
        return {"logits": out.logits, "label_logprobs": out.label_logprobs,
                "sequence_logprob": out.sequence_logprob(), "token_counts": out.token_counts(),
                "nll_sum": out.nll_sum(), "token_nll": out.token_nll(),
                "token_prob": out.token_prob(), "answer_prob": out.answer_prob()}

    got = {k: np.asarray(v, np.float64) for k, v in quantities(params).items()}
    logits = np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(b.input_ids, b.attention_mask))(
        params), np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    token = np.take_along_axis(logp, b.labels[..., None], -1)[..., 0] * mask
    return got, logits, token, mask


def test_logits_equal_the_models_call(run):
    got, logits, _, _ = run
    np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=1e-5 * np.abs(logits).max())


def test_label_logprobs_and_reductions_equal_numpy(run):
    got, _, token, mask = run
    np.testing.assert_allclose(got["label_logprobs"], token, atol=2e-5)
    assert np.all(got["label_logprobs"][mask == 0] == 0.0)
    seq = token.sum(-1)
    n = mask.sum(-1)
    np.testing.assert_allclose(got["sequence_logprob"], seq, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got["token_counts"], n)
    np.testing.assert_allclose(got["nll_sum"], -token.sum(), rtol=1e-5)
    np.testing.assert_allclose(got["token_nll"], -token.sum() / n.sum(), rtol=1e-5)
    prob = np.exp(seq / np.maximum(n, 1))  # the empty row: exp(0) = 1
    np.testing.assert_allclose(got["token_prob"], prob, rtol=1e-5)
    np.testing.assert_allclose(got["answer_prob"], prob.mean(), rtol=1e-5)


def test_logits_are_formed_once_and_only_when_read():
    out = ModelOutput(batch=None, final=np.ones((1, 2, 8), np.float32),
                      head=np.ones((8, 50), np.float32))
    assert out._logits is None  # label-only objectives never form them
    first = out.logits
    assert first.shape == (1, 2, 50) and out.logits is first
    np.testing.assert_array_equal(np.asarray(first), 8.0)
