"""The padding-free layout (``models.compact``): index bookkeeping against hand-worked
examples and NumPy, and the model / objectives run padding-free against the padded
computation (values and gradients at the real tokens)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from _training import tiny_config
from jaxunlearn import methods
from jaxunlearn.data.batch import Batch
from jaxunlearn.models import Llama, compact
from jaxunlearn.models.compact import Compaction
from jaxunlearn.models.outputs import forward
from jaxunlearn.train.step import objective_value

# ------------------------------------------------------------------------------ bookkeeping


def test_token_order_puts_kept_tokens_first_in_row_major_order():
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    # One group: flat mask 1 1 0 1 0 0 -> kept 0 1 3, then the others 2 4 5.
    np.testing.assert_array_equal(compact.token_order(mask, 1, 4), [[0, 1, 3, 2]])
    np.testing.assert_array_equal(compact.token_order(mask, 1, 6), [[0, 1, 3, 2, 4, 5]])
    # Two groups (one row each), indices within the group.
    np.testing.assert_array_equal(compact.token_order(mask, 2, 2), [[0, 1], [0, 1]])
    np.testing.assert_array_equal(compact.token_order(mask, 2, 3), [[0, 1, 2], [0, 1, 2]])
    # Left padding keeps the order too.
    np.testing.assert_array_equal(compact.token_order(np.array([[0, 1, 1]]), 1, 2), [[1, 2]])


def test_overflow_flags_a_group_with_more_kept_tokens_than_capacity():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert not bool(compact.overflow(mask, 1, 4))
    assert bool(compact.overflow(mask, 1, 3))
    assert not bool(compact.overflow(mask, 2, 3))
    assert bool(compact.overflow(mask, 2, 2))


def test_gather_and_scatter_match_numpy_indexing():
    rng = np.random.default_rng(0)
    B, T, F, G = 4, 5, 3, 2
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    mask = rng.integers(0, 2, size=(B, T))
    C = 6
    order = np.asarray(compact.token_order(mask, G, C))
    grouped = x.reshape(G, B // G * T, F)
    expected = np.stack([grouped[g, order[g]] for g in range(G)])
    got = np.asarray(compact.gather(jnp.asarray(x), jnp.asarray(order)))
    np.testing.assert_array_equal(got, expected)
    back = np.zeros_like(grouped)
    for g in range(G):
        back[g, order[g]] = expected[g]
    np.testing.assert_array_equal(np.asarray(compact.scatter(jnp.asarray(got), order, B, T)),
                                  back.reshape(B, T, F))


def test_group_counts_and_covering_round_up():
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(compact.group_counts(mask, 1), [6])
    np.testing.assert_array_equal(compact.group_counts(mask, 2), [5, 1])
    np.testing.assert_array_equal(compact.group_counts(mask, 4), [2, 3, 1, 0])
    assert compact.covering(2, [5, 1], [[3, 9]]) == Compaction(2, 8, 16)
    assert compact.covering(1, [8], [0], multiple=4) == Compaction(1, 8, 4)
    assert compact.covering(1, [], [], multiple=8) == Compaction(1, 8, 8)
    with pytest.raises(ValueError, match="groups=3"):
        compact.group_counts(mask, 3)


@pytest.mark.parametrize("field,value", [("groups", 0), ("tokens", -1), ("labels", 2.0),
                                         ("tokens", True)])
def test_compaction_rejects_bad_capacities_by_name(field, value):
    kw = dict(groups=1, tokens=8, labels=8)
    kw[field] = value
    with pytest.raises(ValueError, match=f"Compaction.{field}"):
        Compaction(**kw)


def test_compaction_is_static_in_a_batch():
    b = Batch(*(np.zeros((2, 4), dt) for dt in (np.int32, np.int32, np.float32, np.int32)),
              compaction=Compaction(1, 8, 8))
    assert len(jax.tree.leaves(b)) == 4
    mapped = jax.tree.map(lambda x: x[None], b)
    assert mapped.compaction == Compaction(1, 8, 8) and mapped.input_ids.shape == (1, 2, 4)
    traces = []

    @jax.jit
    def f(batch):
        traces.append(batch.compaction)
        return batch.input_ids.sum()

    f(b)
    f(b)
    f(b._replace(compaction=Compaction(1, 16, 8)))
    assert traces == [Compaction(1, 8, 8), Compaction(1, 16, 8)]  # a new capacity retraces


# ------------------------------------------------------------------------------ the model


def _model(**kw):
    config = tiny_config(61, intermediate_size=64, max_position_embeddings=64, **kw)
    return Llama(config, rngs=nnx.Rngs(0))


def _batch(left: bool, seed: int = 0, rows: int = 4, T: int = 12) -> Batch:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, T + 1, size=rows)
    lengths[0] = T  # one full row
    pos = np.arange(T)[None]
    att = pos < lengths[:, None]
    if left:
        att = att[:, ::-1]
    prompt = rng.integers(1, 3, size=rows)
    first = np.argmax(att, axis=1)
    loss = att & (pos >= (first + prompt)[:, None])
    ids = rng.integers(1, 61, size=(rows, T))
    return Batch(np.where(att, ids, 0).astype(np.int32),
                 np.where(loss, np.roll(ids, -1, 1), 0).astype(np.int32),
                 loss.astype(np.float32), att.astype(np.int32))


def _plan(b: Batch, groups: int) -> Compaction:
    return compact.covering(groups, compact.group_counts(b.attention_mask, groups),
                            compact.group_counts(b.loss_mask, groups), multiple=1)


@pytest.mark.parametrize("left,groups,remat,scan", [(False, 1, "none", True),
                                                   (True, 2, "full", True),
                                                   (True, 2, "none", False)])
def test_padding_free_trunk_equals_the_padded_one_at_real_tokens(left, groups, remat, scan):
    model = _model(remat=remat, scan_layers=scan)
    b = _batch(left)
    real = np.asarray(b.attention_mask, bool)[..., None]
    trunk = nnx.jit(lambda m, plan: m.trunk(b.input_ids, b.attention_mask, hidden_layer=0,
                                            compaction=plan), static_argnums=1)
    final0, hidden0 = trunk(model, None)
    final1, hidden1 = trunk(model, _plan(b, groups))
    np.testing.assert_allclose(np.where(real, final1, 0), np.where(real, final0, 0), atol=2e-5)
    np.testing.assert_allclose(np.where(real, hidden1, 0), np.where(real, hidden0, 0), atol=2e-5)
    assert np.all(np.isfinite(final1))


def test_padding_free_trunk_with_too_small_a_capacity_is_nan():
    model = _model()
    b = _batch(False)
    final, _ = model.trunk(b.input_ids, b.attention_mask, compaction=Compaction(1, 8, 8))
    assert np.all(np.isnan(final))


def _objective_value_and_grad(model, forget: Batch, retain: Batch, method: str):
    graphdef, params = nnx.split(model, nnx.Param)
    spec = methods.get_method(method)
    cache = {"ref_logp": {"answer": np.full(forget.input_ids.shape[0], -20.0, np.float32)},
             "weight": np.ones(forget.input_ids.shape[0], np.float32)}
    objective = spec.objective(graphdef, model.config)
    batch = {"forget": {"answer": forget}, "retain": retain, "cache": cache}
    return jax.jit(jax.value_and_grad(lambda p: objective_value(objective, p, batch),
                                      has_aux=True))(params)


@pytest.mark.parametrize("method,groups", [("npo", 1), ("grad_diff", 2), ("simnpo", 2)])
def test_objectives_padding_free_equal_padded_in_value_and_gradient(method, groups):
    model = _model()
    forget, retain = _batch(False, seed=1), _batch(True, seed=2)
    (v0, m0), g0 = _objective_value_and_grad(model, forget, retain, method)
    forget1 = forget._replace(compaction=_plan(forget, groups))
    retain1 = retain._replace(compaction=_plan(retain, groups))
    (v1, _), g1 = _objective_value_and_grad(model, forget1, retain1, method)
    # grad_diff's loss is a difference of two NLLs of similar size: float32 rounding of
    # each term (relative 1e-5 after the model's reductions) bounds the difference, so
    # the bound scales with the terms, not with what is left after they cancel.
    spec = methods.get_method(method)
    terms = spec.gamma * abs(float(m0["forget_loss"])) + spec.alpha * abs(float(m0["retain_loss"]))
    np.testing.assert_allclose(float(v1), float(v0), rtol=0, atol=1e-5 * terms)
    for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(c), np.asarray(a), rtol=1e-4, atol=1e-6)


def test_label_logprobs_padding_free_equal_numpy_log_softmax():
    model = _model()
    b = _batch(False, seed=3)
    graphdef, params = nnx.split(model, nnx.Param)
    label_logprobs = jax.jit(lambda p, batch: forward(graphdef, p, batch).label_logprobs)
    got = label_logprobs(params, b._replace(compaction=_plan(b, 1)))
    logits = np.asarray(nnx.jit(lambda m: m(b.input_ids, b.attention_mask))(model), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    expected = np.take_along_axis(logp, b.labels[..., None], -1)[..., 0] * b.loss_mask
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-5)
    # Too few label slots poison the label log-probs.
    small = label_logprobs(params, b._replace(compaction=Compaction(1, 64, 1)))
    assert np.all(np.isnan(np.asarray(small)))
