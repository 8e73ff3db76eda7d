"""Test-session setup: 8 simulated CPU devices for the mesh tests, float32 matmuls."""

import os
import tempfile

# XLA's CPU code generation at LLVM -O0 for the tests: on their tiny shapes compiling,
# not running, is most of the time (-O0 takes 40 % less CPU on compile-heavy tests, the
# same on training loops and the 135M-parameter SmolLM2 tests: matrix products are
# library calls either way). Numbers are checked with bounds that hold across CPUs and
# reduction orders, so code-generation differences stay within them. Subprocesses that
# set their own XLA_FLAGS add TEST_XLA_FLAGS.
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
