"""Test-session setup: 8 simulated CPU devices for the mesh tests, float32 matmuls."""

import os
import tempfile
from pathlib import Path

# XLA's CPU code generation at LLVM -O0 for the tests: on their tiny shapes compiling,
# not running, is most of the time (-O0 takes 40 % less CPU on compile-heavy tests, the
# same on training loops and the 135M-parameter SmolLM2 tests: matrix products are
# library calls either way). Numbers are checked with bounds that hold across CPUs and
# reduction orders, so code-generation differences stay within them. (Single-threaded
# matrix products, --xla_cpu_multi_thread_eigen=false, save CPU on one file run alone but
# cost the whole suite 56 % more CPU: 2204 s against 1412 s, measured 2026-12-03.)
# Subprocesses that set their own XLA_FLAGS add TEST_XLA_FLAGS.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
# Must happen before jax is imported anywhere: the mesh tests need 8 host devices.
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A persistent XLA compilation cache shared by the test processes and the CLI subprocesses
# they start: the same tiny programs are compiled by many tests. Compiled code is the same
# with or without the cache, so results (bitwise tests included) do not change.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "jaxunlearn-test-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

# The files that take a minute or more of CPU, longest first (measured with a cold compile
# cache), run before the rest: the two workers take whole files in collection order, and
# a long file started last would leave one core idle at the end of the run.
SLOW_FILES = ("test_experiment.py", "test_methods_gradient.py", "test_benchmarks.py",
              "test_distributed.py", "test_determinism.py", "test_methods_runner.py",
              "test_methods_secondorder.py", "test_readme_commands.py", "test_interrupts.py",
              "test_gguf.py", "test_lora.py", "test_llama.py", "test_training.py")


def pytest_collection_modifyitems(config, items):
    stale = [name for name in SLOW_FILES if not (Path(__file__).parent / name).is_file()]
    assert not stale, f"conftest.SLOW_FILES names test files that are gone: {stale}"
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable

# ======================================================================================
# Shared fixtures (orchestration): the QA benchmark, tokenizer and briefly trained tiny
# model that the evaluation tests (eval.suite, pipeline.evaluation) score. Session-scoped:
# built once per test worker, whichever of those files it runs first.
# ======================================================================================
import pytest  # noqa: E402
from flax import nnx  # noqa: E402

from _training import bench_tokenizer, train_nll  # noqa: E402
from jaxunlearn.data import synthetic  # noqa: E402
from jaxunlearn.data.batch import bucket_length, encode_qa_records  # noqa: E402
from jaxunlearn.models import Llama  # noqa: E402
from jaxunlearn.models.presets import tiny  # noqa: E402


@pytest.fixture(scope="session")
def qa_bench():
    """10 people x 2 QA (forget10 = one person), 8 world facts, canaries seen 1 and 4 times."""
    return synthetic.generate(synthetic.SyntheticConfig(
        num_people=10, qa_per_person=2, num_world_facts=8, canary_repetitions=(1, 4),
        canaries_per_repetition=1, num_heldout_canaries=2, seed=3))


@pytest.fixture(scope="session")
def qa_tokenizer(qa_bench):
    return bench_tokenizer(qa_bench)


@pytest.fixture(scope="session")
def qa_model(qa_tokenizer, qa_bench):
    """A tiny model briefly trained on the retain people and world facts, so that its
    answers overlap the references (ROUGE > 0) and every utility component is > 0."""
    records = list(qa_bench.splits["retain90"]) + list(qa_bench.splits["world_facts"])
    encoded = encode_qa_records(qa_tokenizer, records)
    return train_nll(Llama(tiny(len(qa_tokenizer)), rngs=nnx.Rngs(0)), encoded, steps=60,
                     learning_rate=1e-2, warmup_steps=0, batch_size=8,
                     seq_len=bucket_length(max(e.length for e in encoded)),
                     pad_id=qa_tokenizer.pad_token_id)


# ============================================================================== methods
# Shared fixtures of the method tests (test_methods_*.py, test_unlearn.py).

import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _toy_qa_records():
    """24 toy private facts (a 4-digit PIN and a city for 12 people): 8 forget, 16 retain."""
    names = ["Ada", "Bo", "Cy", "Di", "Ed", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
    cities = ["Oslo", "Lima", "Kyiv", "Pune", "Rome", "Nice", "Bern", "Cork", "Doha", "Graz",
              "Hue", "Ulm"]
    rng = np.random.default_rng(0)
    out = []
    for i, name in enumerate(names):
        pin = "".join(str(d) for d in rng.integers(0, 10, 4))
        for topic, q, a in (("pin", f"What is {name}'s PIN?", pin),
                            ("city", f"Where does {name} live?", cities[(5 * i) % 12])):
            out.append({"person_id": i, "name": name, "topic": topic, "question": q,
                        "answer": a, "idk_answer": "I don't know that."})
    return out[:8], out[8:]


@pytest.fixture(scope="session")
def toy_target(tmp_path_factory):
    """A 1-layer Llama trained (about 100 AdamW updates of the NLL) to recall the toy facts.

    ``(model, tokenizer, forget, retain, saved model dir, benchmark dir)``; the benchmark
    holds ``forget_toy.json`` and ``retain_toy.json``.
    """
    from flax import nnx

    from jaxunlearn.data import batch as batch_lib
    from jaxunlearn.data import tokenizer as tok_lib
    from jaxunlearn.models import Llama, LlamaConfig, save_pretrained
    from jaxunlearn.train import finetune, loop
    from jaxunlearn.train.step import OptimizerConfig

    forget, retain = _toy_qa_records()
    tok = tok_lib.train_tokenizer(tok_lib.corpus_texts({"toy": forget + retain}), vocab_size=300,
                                  min_frequency=1)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=4, num_kv_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    graphdef, params = nnx.split(Llama(config, rngs=nnx.Rngs(0)), nnx.Param)
    enc = batch_lib.encode_qa_records(tok, forget + retain)
    source = loop.BatchSource(steps_per_epoch=3, epoch_batches=lambda e: batch_lib.iterate_batches(
        enc, 8, seed=0, epoch=e, pad_id=tok.pad_token_id, seq_len=32))
    result = finetune.nll_finetune(
        graphdef, params, source, total_steps=102, optimizer=OptimizerConfig(
            learning_rate=1e-2, weight_decay=0.0, schedule="constant"))
    model = nnx.merge(graphdef, result.state.params)
    root = tmp_path_factory.mktemp("toy")
    path = save_pretrained(model, config, root / "target", tokenizer=tok)
    bench = root / "bench"
    bench.mkdir()
    for split, recs in (("forget_toy", forget), ("retain_toy", retain)):
        (bench / f"{split}.json").write_text(
            "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs), encoding="utf-8")
    return model, tok, forget, retain, path, bench


def _answer_prob(model, tokenizer, records) -> float:
    """Mean per-token answer probability of ``records`` under ``model``, with NumPy on the
    model's logits (independent of ``models.outputs`` and ``jaxunlearn.losses``)."""
    from flax import nnx

    from jaxunlearn.data import batch as batch_lib

    b = batch_lib.collate(batch_lib.encode_qa_records(tokenizer, records), 32,
                          tokenizer.pad_token_id)
    # One jitted program: called eagerly on 8-device-sharded weights, the forward would
    # queue hundreds of small collective programs, which an overloaded 2-core machine can
    # deadlock on.
    logits = np.asarray(nnx.jit(lambda m: m(b.input_ids, b.attention_mask))(model), np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, b.labels[..., None], -1)[..., 0]
    return float(np.mean(np.exp((tok * b.loss_mask).sum(-1) / b.loss_mask.sum(-1))))


@pytest.fixture(scope="session")
def answer_prob():
    """``(model, tokenizer, records) -> float``: mean per-token answer probability, NumPy."""
    return _answer_prob


TINY_METHOD_CONFIG = dict(vocab_size=23, hidden_size=16, intermediate_size=32, num_layers=1,
                          num_heads=2, num_kv_heads=1, tie_word_embeddings=True)


@pytest.fixture(scope="session")
def method_setup():
    """A tiny random Llama and 8 forget / idk / retain rows for objective tests.

    Rows 0-3 have 1-3 answer tokens, rows 4-7 have 6-9 (so micro-batches of the same
    batch hold very different token counts). Returns a dict: ``config``, ``graphdef``,
    ``ref`` (the reference params), ``policy`` (perturbed params), ``data``
    (``data.forget_retain.Prepared``), ``forget`` (``{view: Batch [8, 16]}``), ``retain``.
    """
    import jax
    from flax import nnx

    from jaxunlearn.data.batch import Encoded, collate
    from jaxunlearn.data.forget_retain import Prepared
    from jaxunlearn.models import Llama, LlamaConfig

    config = LlamaConfig(**TINY_METHOD_CONFIG)
    rng = np.random.default_rng(0)

    def encoded():
        out = []
        for row in range(8):
            prompt = int(rng.integers(2, 5))
            answer = int(rng.integers(1, 4) if row < 4 else rng.integers(6, 10))
            ids = rng.integers(3, config.vocab_size, prompt + answer).astype(np.int32)
            counted = np.r_[np.zeros(prompt), np.ones(answer)].astype(np.float32)
            out.append(Encoded(ids, counted))
        return out

    graphdef, ref = nnx.split(Llama(config, rngs=nnx.Rngs(0)), nnx.Param)
    leaves, tree = jax.tree.flatten(ref)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    policy = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape)
                                       for x, k in zip(leaves, keys)])
    enc = {"answer": encoded(), "idk": encoded()}
    enc_retain = encoded()
    T = 16
    data = Prepared(forget=enc, retain=enc_retain, t_forget=T, t_retain=T, pad_id=0)
    return {"config": config, "graphdef": graphdef, "ref": ref, "policy": policy, "data": data,
            "forget": {v: collate(e, T, 0) for v, e in enc.items()},
            "retain": collate(enc_retain, T, 0)}
