"""ReLearn (jaxunlearn.methods.relearn): the objective against NumPy, config checks, and a
tiny end-to-end run through the shared gradient loop (injected into its context):
forget-answer probability goes down, no augmented item holds a fact."""

import functools
import re
import unicodedata

import numpy as np
import jax
import pytest
from flax import nnx

from _training import train_nll
from jaxunlearn import methods
from jaxunlearn.methods import relearn, runner
from jaxunlearn.config import TrainConfig
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data import synthetic
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.eval import scoring
from jaxunlearn.models import Llama, LlamaConfig
from jaxunlearn.train.step import OptimizerConfig, objective_value

TINY = dict(hidden_size=64, intermediate_size=128, num_layers=1, num_heads=4, num_kv_heads=2,
            max_position_embeddings=128, tie_word_embeddings=True)


def _log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, params, ids, mask):
    return nnx.merge(graphdef, params)(ids, mask)


def _batch(vocab, B, T, seed, answer_from):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, vocab, (B, T + 1)).astype(np.int32)
    mask = np.zeros((B, T), np.float32)
    mask[:, answer_from:] = 1.0
    mask[0, -2:] = 0.0
    att = np.ones((B, T), np.int32)
    att[0, -2:] = 0
    return batch_lib.Batch(ids[:, :-1], ids[:, 1:], mask, att)


def _token_nll(logits, b):
    lp = np.take_along_axis(_log_softmax(logits), b.labels[..., None], -1)[..., 0]
    return -(lp * b.loss_mask).sum() / b.loss_mask.sum()


@pytest.mark.parametrize("retain_loss", ["kl+nll", "kl", "nll"])
def test_objective_matches_numpy(retain_loss):
    config = LlamaConfig(vocab_size=48, **TINY)
    graphdef, params = nnx.split(Llama(config, rngs=nnx.Rngs(0)), nnx.Param)
    _, ref_params = nnx.split(Llama(config, rngs=nnx.Rngs(1)), nnx.Param)
    fb, rb = _batch(48, 3, 9, 0, 4), _batch(48, 3, 9, 1, 2)
    ref_logp = _log_softmax(_logits(graphdef, ref_params, rb.input_ids, rb.attention_mask))
    method = relearn.ReLearnObjective(gamma=0.7, alpha=1.3, retain_loss=retain_loss,
                                             ref_top_k=0)
    cache = {"retain_dist": methods.RefDist(logp=ref_logp.astype(np.float32)),
             "weight": np.ones(3, np.float32)}
    objective = method.objective(graphdef, config)
    loss, metrics = jax.jit(lambda p, b: objective_value(objective, p, b))(
        params, {"forget": {"answer": fb}, "retain": rb, "cache": cache})

    f_logits = _logits(graphdef, params, fb.input_ids, fb.attention_mask)
    r_logits = _logits(graphdef, params, rb.input_ids, rb.attention_mask)
    model_lp = _log_softmax(r_logits)
    kl_tok = (np.exp(ref_logp) * (ref_logp - model_lp)).sum(-1)  # KL(reference || model)
    kl = (kl_tok * rb.loss_mask).sum() / rb.loss_mask.sum()
    nll_r = _token_nll(r_logits, rb)
    retain = {"kl+nll": kl + nll_r, "kl": kl, "nll": nll_r}[retain_loss]
    np.testing.assert_allclose(float(metrics["forget_loss"]), _token_nll(f_logits, fb), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["retain_loss"]), retain, rtol=1e-5)
    np.testing.assert_allclose(float(loss), 0.7 * _token_nll(f_logits, fb) + 1.3 * retain,
                               rtol=1e-5)
    assert method.cache_spec(config).retain_dist == ("kl" in retain_loss)


def test_config_registered_and_validated():
    cfg = methods.get_method({"name": "relearn", "alpha": 0.5, "retain_loss": "kl"})
    assert isinstance(cfg, relearn.ReLearn) and cfg.objective_method().alpha == 0.5
    for spec, field in (({"name": "relearn", "retain_loss": "activation"}, "method.retain_loss"),
                        ({"name": "relearn", "alpha": -1}, "method.alpha"),
                        ({"name": "relearn", "ref_top_k": -2}, "method.ref_top_k"),
                        ({"name": "relearn", "num_typos": 0}, "method.num_typos"),
                        ({"name": "relearn", "completions": "yes"}, "method.completions")):
        with pytest.raises(methods.MethodError, match=field):
            methods.get_method(spec)


def _words(text):
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())


def _leaks(text, fact):
    """Independent of data.augment: the fact's words appear contiguously in the text, or
    (facts with >= 4 digits) its digits appear among the text's digits."""
    t, f = _words(text), _words(fact)
    if any(t[i:i + len(f)] == f for i in range(len(t) - len(f) + 1)):
        return True
    digits = re.sub(r"\D", "", fact)
    return len(digits) >= 4 and digits in re.sub(r"\D", "", text)


@pytest.fixture(scope="module")
def people():
    bench = synthetic.generate(synthetic.SyntheticConfig(
        num_people=4, qa_per_person=4, num_world_facts=2, canary_repetitions=(1,),
        canaries_per_repetition=1))
    forget, retain = list(bench.splits["forget01"]), list(bench.splits["retain99"])
    # The augmentation's templates join the corpus, so augmented items stay short.
    aug = relearn.augmented_forget_records(forget, seed=0)
    texts = tok_lib.corpus_texts(bench.splits) + [f"Question: {r['question']}\nAnswer: "
                                                  for r in aug] + [r["answer"] for r in aug]
    tok = tok_lib.train_tokenizer(texts, vocab_size=512)
    config = LlamaConfig(vocab_size=len(tok), **TINY)
    docs = batch_lib.encode_qa_records(tok, forget + retain)
    model = train_nll(Llama(config, rngs=nnx.Rngs(0)), docs, steps=100, learning_rate=5e-3,
                      warmup_steps=5, batch_size=8, seq_len=64)
    return model, tok, forget, retain


def test_augmented_forget_set_holds_no_fact(people):
    _, _, forget, _ = people
    aug = relearn.augmented_forget_records(forget, seed=0)
    facts = sorted({f for r in forget for f in r["facts"]})
    assert all(_leaks(r["answer"], f) for r in forget for f in r["facts"])  # the check can fail
    assert len(aug) >= 4 * len(forget)
    for item in aug:
        for text in (item["question"], item["answer"]):
            assert not [f for f in facts if _leaks(text, f)], text


def test_relearn_lowers_forget_answer_probability(people):
    model, tok, forget, retain = people
    questions, answers = [r["question"] for r in forget], [r["answer"] for r in forget]

    def prob(m, qs, ans):
        s = scoring.score_qa(m, tok, qs, ans, batch_size=8)
        return float(np.exp(s.mean_logprob).mean())

    before = prob(model, questions, answers)
    train = TrainConfig(epochs=2, batch_size=4, optimizer=OptimizerConfig(
        learning_rate=1e-3, schedule="constant", weight_decay=0.0))
    res = runner.unlearn_model(model, tok, forget, retain, {"name": "relearn", "ref_top_k": 16},
                               train, seed=0, max_len=128)
    after = prob(res.model, questions, answers)
    retain_before = prob(model, [r["question"] for r in retain], [r["answer"] for r in retain])
    retain_after = prob(res.model, [r["question"] for r in retain], [r["answer"] for r in retain])
    print(f"\nReLearn: forget-answer prob {before:.3f} -> {after:.3f}; retain "
          f"{retain_before:.3f} -> {retain_after:.3f}; {len(res.history)} updates")
    assert before > 0.2, "the target should have learnt the forget answers"
    assert after < before
    assert {"forget_loss", "retain_loss"} <= set(res.history[-1])
