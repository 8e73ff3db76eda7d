"""Greedy KV-cache decoding equals step-by-step full recomputation."""

import numpy as np
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxunlearn.eval.generate import generate, left_pad
from jaxunlearn.models import Llama, LlamaConfig


def _model(scan: bool = True):
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, scan_layers=scan)
    return Llama(config, rngs=nnx.Rngs(3))


# Full recomputation at one padded width (right padding does not change causal logits),
# so the reference compiles once instead of dispatching every op at every length.
_WIDTH = 32
_full_logits = nnx.jit(lambda model, ids, mask: model(ids, mask))


def _greedy_by_recomputation(model, prompt, n, eos):
    seq = list(prompt)
    out = []
    for _ in range(n):
        ids = np.zeros((1, _WIDTH), np.int32)
        ids[0, :len(seq)] = seq
        mask = (np.arange(_WIDTH) < len(seq)).astype(np.int32)[None]
        logits = _full_logits(model, jnp.asarray(ids), jnp.asarray(mask))
        nxt = int(jnp.argmax(logits[0, len(seq) - 1]))
        out.append(nxt)
        if nxt == eos:
            break
        seq.append(nxt)
    return out


@pytest.mark.parametrize("scan", [True, False], ids=["scanned", "unrolled"])
def test_greedy_with_cache_equals_recomputation_left_padded(scan):
    model = _model(scan)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11]]
    ids, mask = left_pad(prompts, pad_id=0, multiple=4)
    assert ids.shape == (3, 12) and mask.sum() == 13
    eos = 39
    gen = generate(model, ids, mask, max_new_tokens=12, eos_id=eos, pad_id=0)
    for row, prompt in enumerate(prompts):
        ref = _greedy_by_recomputation(model, prompt, 12, eos)
        got = gen.tokens[row, : len(ref)].tolist()
        assert got == ref
        expected_len = ref.index(eos) if eos in ref else 12
        assert gen.lengths[row] == expected_len


def test_stops_at_eos_and_pads_after():
    model = _model()
    ids, mask = left_pad([[1, 2, 3]], pad_id=0)
    first = generate(model, ids, mask, max_new_tokens=3, eos_id=-1, pad_id=0).tokens[0]
    eos = int(first[1])  # make the 2nd greedy token the EOS
    gen = generate(model, ids, mask, max_new_tokens=6, eos_id=eos, pad_id=0)
    assert gen.tokens[0, 1] == eos
    assert gen.lengths[0] == 1 if int(first[0]) != eos else gen.lengths[0] == 0
    assert np.all(gen.tokens[0, 2:] == 0)


def test_per_row_budgets_cut_each_row_and_share_one_program():
    """Row b decodes max_new_tokens[b] tokens of the same greedy continuation; calls whose
    budgets and prompts fit the same buckets reuse one compiled program."""
    from jaxunlearn.eval import generate as generate_lib

    model = _model()
    prompts = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [11]]
    ids, mask = left_pad(prompts, pad_id=0, multiple=16)
    full = generate(model, ids, mask, max_new_tokens=9, eos_id=-1, pad_id=0)
    compiled = generate_lib._decode._cache_size()
    cut = generate(model, ids, mask, max_new_tokens=[2, 9, 5], eos_id=-1, pad_id=0)
    assert generate_lib._decode._cache_size() == compiled  # 9 and [2, 9, 5]: one program
    assert cut.lengths.tolist() == [2, 9, 5]
    for row, n in enumerate([2, 9, 5]):
        assert cut.tokens[row, :n].tolist() == full.tokens[row, :n].tolist()
        assert np.all(cut.tokens[row, n:] == 0)
    for row, prompt in enumerate(prompts):
        assert full.tokens[row].tolist() == _greedy_by_recomputation(model, prompt, 9, -1)


def test_generate_ids_buckets_prompts_and_keeps_order():
    """``generate_ids``: input order, per-prompt budgets, prompts longer than a bucket."""
    from jaxunlearn.eval.generate import PROMPT_BUCKETS, generate_ids

    model = _model()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 39, n).tolist() for n in (3, PROMPT_BUCKETS[0] + 2, 1, 7, 5)]
    budgets = [4, 1, 6, 3, 2]
    got = generate_ids(model, prompts, max_new_tokens=budgets, eos_id=-1, pad_id=0,
                       batch_size=2)
    for prompt, n, tokens in zip(prompts, budgets, got):
        assert tokens == _greedy_by_recomputation(model, prompt, n, -1)
