"""models.limits and train.budget: sizes from metadata, checked before anything is allocated."""

from __future__ import annotations

import dataclasses
import math

import jax
import pytest
from flax import nnx

from jaxunlearn import resources
from jaxunlearn.models import Llama
from jaxunlearn.models import limits
from jaxunlearn.models.presets import get_preset
from jaxunlearn.train import budget
from jaxunlearn.train.step import OptimizerConfig

CONFIGS = {
    "tiny_untied": get_preset("tiny", vocab_size=300),
    "gqa_bias_tied": get_preset("tiny", vocab_size=256).replace(
        num_kv_heads=2, attention_bias=True, tie_word_embeddings=True, model_type="qwen2"),
    "explicit_head_dim": get_preset("tiny", vocab_size=128).replace(head_dim=32),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_param_count_from_config_json_equals_the_models_own_parameters(name):
    """Counted from the HF dict alone; checked against the shapes of an abstract model."""
    config = CONFIGS[name]
    abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
    actual = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
    assert limits.hf_param_count(config.to_hf()) == actual


def test_a_config_too_large_for_memory_names_the_field_that_makes_it_so():
    hf = CONFIGS["tiny_untied"].to_hf()
    limits.check_hf_config(hf, "config.json", memory=10**9)  # fits: no error
    with pytest.raises(resources.ResourceError,
                       match=r"^config.json: num_hidden_layers=1000000000 would need ~.* GB of "
                             r"parameters .* more than this machine's memory \(1 GB\)$"):
        limits.check_hf_config({**hf, "num_hidden_layers": 10**9}, "config.json", memory=10**9)
    with pytest.raises(resources.ResourceError, match=r"vocab_size=2000000000 would need"):
        limits.check_hf_config({**hf, "vocab_size": 2 * 10**9}, "config.json", memory=10**9)


@pytest.mark.parametrize("field, value, why", [
    ("num_attention_heads", 0, "out of range"),
    ("hidden_size", 2**40, "out of range"),
    ("num_hidden_layers", True, "must be an integer"),
    ("intermediate_size", 1.5, "must be an integer"),
    ("rms_norm_eps", float("nan"), "finite number > 0"),
    ("rope_theta", float("inf"), "finite number > 0"),
    ("rms_norm_eps", 0.0, "finite number > 0"),
])
def test_malformed_sizes_and_floats_are_refused_naming_the_field(field, value, why):
    hf = {**CONFIGS["tiny_untied"].to_hf(), field: value}
    with pytest.raises(ValueError, match=rf"m/config.json: .*{field}.*{why}"):
        limits.check_hf_config(hf, "m/config.json")


def test_run_budget_is_the_stated_lower_bound():
    """Hand-worked: weights + gradients + Adam moments, and B x 8 tokens x (L*D + 2F) x 4."""
    config = CONFIGS["tiny_untied"]
    p = config.num_params()
    adam = OptimizerConfig()
    state, act = budget.step_memory(config, adam, rows=10)
    assert state == p * (4 + 4 + 8)
    per_token = (config.num_layers * config.hidden_size + 2 * config.intermediate_size) * 4
    assert act == 10 * 8 * per_token
    sgd = dataclasses.replace(adam, optimizer="sgd")
    assert budget.step_memory(config, sgd, rows=1)[0] == p * 8
    assert budget.output_disk(config, adam) == p * (4 + 4 + 8)
