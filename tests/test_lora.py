"""LoRA adapters (``models.lora``): the update's formula, training the adapters alone,
merging, PEFT's file layout, and ``jaxunlearn unlearn`` with ``model.lora`` end to end.

References are independent NumPy computations: the low-rank update
``W + (alpha / r) A B`` applied to the HF-layout weight, PEFT's documented tensor names
``base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight`` (``[r, in]``) and
``lora_B.weight`` (``[out, r]``) with ``W_hf + (alpha / r) lora_B @ lora_A``.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxunlearn import cli
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.errors import CheckpointError, ConfigError
from jaxunlearn.models import Llama, LlamaConfig, load_pretrained, save_pretrained
from jaxunlearn.models import io as io_lib
from jaxunlearn.models import lora as lora_lib
from jaxunlearn.train import finetune, loop
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train.nll import nll_objective
from jaxunlearn.train.step import OptimizerConfig

CFG = dict(vocab_size=48, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
           num_kv_heads=2, tie_word_embeddings=False)
PEFT_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
                "down": "mlp.down_proj"}


def _random_adapters(model, seed=1, scale=0.3):
    """``model`` with every adapter (A and B) drawn at random, so B A is not zero."""
    graphdef, adapters, rest = nnx.split(model, nnx.LoRAParam, nnx.Param)
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)


def _ids():
    return jnp.asarray(np.random.default_rng(0).integers(1, 48, (2, 7)), jnp.int32)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_update_equals_the_low_rank_formula_on_hf_weights(scan_layers):
    lora = lora_lib.LoraConfig(rank=3, alpha=5.0, targets=("q", "o", "down"))
    base = Llama(LlamaConfig(**CFG, scan_layers=scan_layers), rngs=nnx.Rngs(0))
    adapted = _random_adapters(lora_lib.add_adapters(base, lora))
    merged = io_lib.hf_tensors_from_model(lora_lib.merge_adapters(adapted))
    original = io_lib.hf_tensors_from_model(base)
    peft = lora_lib.peft_tensors(adapted)
    assert len(peft) == 2 * 3 * CFG["num_layers"]
    for i in range(CFG["num_layers"]):
        for target in ("q", "k", "o", "up", "down"):
            name = f"model.layers.{i}.{PEFT_MODULES[target]}.weight"
            want = original[name].astype(np.float64)
            if target in lora.targets:
                pre = f"base_model.model.model.layers.{i}.{PEFT_MODULES[target]}"
                A, B = peft[f"{pre}.lora_A.weight"], peft[f"{pre}.lora_B.weight"]
                assert A.shape == (3, want.shape[1]) and B.shape == (want.shape[0], 3)
                want = want + (5.0 / 3) * (B.astype(np.float64) @ A.astype(np.float64))
            np.testing.assert_allclose(merged[name], want, rtol=0, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("scan_layers", [True, False])
def test_fresh_adapters_compute_the_base_and_merged_equals_unmerged(scan_layers):
    base = Llama(LlamaConfig(**CFG, scan_layers=scan_layers), rngs=nnx.Rngs(0))
    adapted = lora_lib.add_adapters(base, lora_lib.LoraConfig(rank=2))
    ids = _ids()
    np.testing.assert_array_equal(adapted(ids), base(ids))  # B = 0: exactly the base
    assert not lora_lib.has_adapters(base), "the input model is left without adapters"
    trained = _random_adapters(adapted)
    unmerged, merged = trained(ids), lora_lib.merge_adapters(trained)(ids)
    assert float(jnp.abs(unmerged - base(ids)).max()) > 1e-2  # the adapters change the model
    # float32 rounding of W + s·BA vs W x + s·B(A x), carried through every layer: a bound
    # scaled to the logits, 100x below the adapters' own effect checked above
    np.testing.assert_allclose(merged, unmerged, rtol=0, atol=1e-4 * float(jnp.abs(unmerged).max()))
    # the unrolled and scanned layouts hold the same adapters in the same PEFT tensors
    assert lora_lib.adapter_count(trained) == sum(
        2 * (a + b) for a, b in [(16, 16), (16, 8), (16, 8), (16, 16), (16, 24), (16, 24),
                                 (24, 16)]) * CFG["num_layers"]


def test_save_pretrained_refuses_unmerged_adapters(tmp_path):
    config = LlamaConfig(**CFG)
    adapted = lora_lib.add_adapters(Llama(config, rngs=nnx.Rngs(0)), lora_lib.LoraConfig())
    with pytest.raises(ValueError, match="merge them first"):
        save_pretrained(adapted, config, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_training_updates_adapters_only_with_optimiser_state_of_their_size():
    """nll_finetune with a frozen base: the base is bit-for-bit unchanged, the adapters move,
    Adam's moments are sized to the adapters, and the gradient has no base leaf."""
    config = LlamaConfig(**CFG)
    model = lora_lib.add_adapters(Llama(config, rngs=nnx.Rngs(0)),
                                  lora_lib.LoraConfig(rank=2, targets=("q", "v", "up")))
    graphdef, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    ids = np.asarray(_ids())
    batch = batch_lib.Batch(input_ids=ids, labels=np.roll(ids, -1, 1),
                            loss_mask=np.ones(ids.shape, np.float32),
                            attention_mask=np.ones(ids.shape, np.int32))
    objective = nll_objective(graphdef)

    def loss(a):
        return objective.loss(nnx.merge_state(base, a), batch, None, objective.counts(batch))[0]
    grads = jax.grad(loss)(adapters)
    assert jax.tree.structure(grads) == jax.tree.structure(adapters)
    b_grads = [g for p, g in jax.tree_util.tree_leaves_with_path(grads) if "lora_b" in str(p)]
    assert all(float(jnp.abs(g).max()) > 0 for g in b_grads)

    base_before = jax.tree.map(np.asarray, base)
    source = loop.BatchSource(steps_per_epoch=1, epoch_batches=lambda e: iter([batch]))
    result = finetune.nll_finetune(graphdef, adapters, source, total_steps=3, frozen=base,
                                   optimizer=OptimizerConfig(learning_rate=1e-2))
    jax.tree.map(np.testing.assert_array_equal, base_before, jax.tree.map(np.asarray, base))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), result.state.params, adapters)
    assert max(jax.tree.leaves(moved)) > 0
    n_adapter = lora_lib.adapter_count(model)
    assert n_adapter == sum(x.size for x in jax.tree.leaves(result.state.params))
    moments = [x for x in jax.tree.leaves(result.state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * n_adapter  # AdamW's mu and nu, nothing else
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_adapter_shardings_follow_the_weights_they_adapt():
    config = LlamaConfig(**CFG)
    model = lora_lib.add_adapters(Llama(config, rngs=nnx.Rngs(0)), lora_lib.LoraConfig(rank=2))
    mesh = mesh_lib.make_mesh(data=1, fsdp=4, tensor=2)
    shardings = mesh_lib.param_shardings(nnx.state(model, nnx.LoRAParam), mesh)
    q = shardings["layers"]["attn"]["lora"]["q"]
    down = shardings["layers"]["mlp"]["lora"]["down"]
    # [L, in, r] and [L, r, out]: split like the weight's own axes (layers and rank whole)
    assert q["lora_a"].get_value().spec == P(None, "fsdp", None)
    assert q["lora_b"].get_value().spec == P(None, None, "tensor")  # output columns: heads
    assert down["lora_a"].get_value().spec == P(None, "tensor", None)  # input rows: ffn units
    assert down["lora_b"].get_value().spec == P(None, None, "fsdp")


def test_peft_files_have_the_documented_layout_and_load_back(tmp_path):
    config = LlamaConfig(**CFG)
    base = Llama(config, rngs=nnx.Rngs(0))
    base_dir = save_pretrained(base, config, tmp_path / "base")
    lora = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "gate"))
    trained = _random_adapters(lora_lib.add_adapters(base, lora))
    out = io_lib.save_adapters(trained, lora, tmp_path / "adapters", base_model=str(base_dir))
    peft = json.loads((out / "adapter_config.json").read_text())
    assert peft["peft_type"] == "LORA" and peft["r"] == 4 and peft["lora_alpha"] == 8.0
    assert sorted(peft["target_modules"]) == ["gate_proj", "q_proj", "v_proj"]
    assert peft["base_model_name_or_path"] == str(base_dir)
    from safetensors.numpy import load_file
    tensors = load_file(str(out / "adapter_model.safetensors"))
    want = {}
    for i in range(2):
        for mod, d_in, d_out in (("self_attn.q_proj", 16, 16), ("self_attn.v_proj", 16, 8),
                                 ("mlp.gate_proj", 16, 24)):
            want[f"base_model.model.model.layers.{i}.{mod}.lora_A.weight"] = (4, d_in)
            want[f"base_model.model.model.layers.{i}.{mod}.lora_B.weight"] = (d_out, 4)
    assert {k: v.shape for k, v in tensors.items()} == want

    loaded, loaded_lora = io_lib.load_adapters(base, out)
    assert loaded_lora == lora_lib.LoraConfig(rank=4, alpha=8.0, targets=("q", "v", "gate"))
    ids = _ids()
    np.testing.assert_array_equal(loaded(ids), trained(ids))
    # the directory is a model path: the base with the adapters merged in
    merged, merged_config = load_pretrained(out)
    assert not lora_lib.has_adapters(merged) and merged_config == config
    np.testing.assert_allclose(merged(ids), trained(ids), rtol=0,
                               atol=1e-5 * float(jnp.abs(trained(ids)).max()))


def test_bad_peft_config_is_one_line_error(tmp_path):
    config = LlamaConfig(**CFG)
    base = Llama(config, rngs=nnx.Rngs(0))
    lora = lora_lib.LoraConfig(rank=2, targets=("q",))
    out = io_lib.save_adapters(lora_lib.add_adapters(base, lora), lora, tmp_path / "a",
                               base_model="unused")
    peft = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(dict(peft, target_modules=["lm_head"])))
    with pytest.raises(CheckpointError, match="target_modules"):
        io_lib.load_adapters(base, out)
    (out / "adapter_config.json").write_text(json.dumps(dict(peft, r=3)))
    with pytest.raises(CheckpointError, match="r=3 need"):
        io_lib.load_adapters(base, out)


@pytest.mark.parametrize("field, value, needle", [
    ("rank", 0, "model.lora.rank"), ("alpha", 0.0, "model.lora.alpha"),
    ("targets", ("q", "qkv"), "model.lora.targets"), ("targets", (), "model.lora.targets"),
    ("save", "both", "model.lora.save")])
def test_lora_config_names_the_field(field, value, needle):
    with pytest.raises(ConfigError, match=needle):
        lora_lib.LoraConfig(**{field: value})


# ------------------------------------------------------------------------------ the command


def _config(tmp_path, target, **model):
    _, _, _, _, path, bench = target
    cfg = {"model": {"preset": None, "path": str(path), **model},
           "data": {"benchmark": str(bench), "forget": "forget_toy", "retain": "retain_toy",
                    "max_len": 64},
           "method": {"name": "npo"},
           "train": {"steps": 4, "batch_size": 8, "optimizer": {
               "learning_rate": 3e-2, "schedule": "constant", "weight_decay": 0.0}},
           "output_dir": str(tmp_path / "out")}
    tmp_path.mkdir(parents=True, exist_ok=True)
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(cfg))
    return file


def test_npo_unlearn_with_lora_end_to_end(tmp_path, toy_target, answer_prob):
    """``jaxunlearn unlearn`` with NPO and rank-4 adapters: both save modes write a model
    that forgets, and they are the same model."""
    model, tok, forget, _, path, _ = toy_target
    lora = {"rank": 4, "alpha": 8.0, "targets": ["q", "v", "o", "up", "down"]}
    assert cli.main(["unlearn", "--config", str(_config(tmp_path / "m", toy_target, lora=lora))]) == 0
    merged_dir = tmp_path / "m" / "out" / "npo"
    assert (merged_dir / "config.json").is_file()
    merged, _ = load_pretrained(merged_dir)
    assert not lora_lib.has_adapters(merged)
    before = answer_prob(model, tok, forget)
    assert answer_prob(merged, tok, forget) < 0.9 * before

    code = cli.main(["unlearn", "--config", str(_config(tmp_path / "a", toy_target,
                                                        lora=dict(lora, save="adapters")))])
    assert code == 0
    adapter_dir = tmp_path / "a" / "out" / "npo"
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").exists()
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["r"] == 4
    history = json.loads((adapter_dir / "unlearn.json").read_text())["history"]
    assert len(history) == 4
    from_adapters, _ = load_pretrained(adapter_dir)
    ids = _ids() % 40 + 5
    np.testing.assert_allclose(from_adapters(ids), merged(ids), rtol=0, atol=1e-5)


def test_unlearn_refuses_lora_for_a_procedure_method(tmp_path, toy_target, capsys):
    cfg = _config(tmp_path, toy_target, lora={"rank": 2})
    code = cli.main(["unlearn", "--config", str(cfg), "method=newton"])
    err = capsys.readouterr().err
    assert code == 2 and "model.lora" in err and "newton" in err
    assert not (tmp_path / "out" / "newton").exists()


def test_adapter_params_from_shapes_and_the_budget_with_lora():
    """``adapter_params`` (from the config) counts the adapters a model gets; the 8B LoRA
    bound is the bf16 base plus the adapters' float32 weights, gradients and Adam moments."""
    from jaxunlearn.models.presets import get_preset
    from jaxunlearn.train import budget

    lora = lora_lib.LoraConfig(rank=3, targets=("k", "o", "gate"))
    config = LlamaConfig(**CFG)
    model = lora_lib.add_adapters(Llama(config, rngs=nnx.Rngs(0)), lora)
    assert lora_lib.adapter_params(config, lora) == lora_lib.adapter_count(model) == \
        2 * 3 * ((16 + 8) + (16 + 16) + (16 + 24))
    big = get_preset("llama-3.1-8b", param_dtype="bfloat16")
    r16 = lora_lib.LoraConfig(rank=16)
    # Llama-3.1-8B: 32 layers, D 4096, kv 1024, F 14336: r (in + out) summed by hand
    by_hand = 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336))
    assert lora_lib.adapter_params(big, r16) == by_hand
    adam = OptimizerConfig(moment_dtype="bfloat16")
    state, _ = budget.step_memory(big, adam, rows=1, lora=r16)
    assert state == big.num_params() * 2 + by_hand * (4 + 4 + 6)
    assert state < 17.5e9 < budget.step_memory(big, adam, rows=1)[0]


@pytest.mark.parametrize("method", ["relearn", "rkld"])
def test_relearn_and_rkld_train_adapters_only(toy_target, method):
    """ReLearn (a procedure over the shared loop) and RKLD (whose strengthened teacher is
    fine-tuned with adapters too) return the target's weights untouched plus trained
    adapters."""
    from jaxunlearn.config import TrainConfig
    from jaxunlearn.methods import runner

    model, tok, forget, retain, _, _ = toy_target
    train = TrainConfig(steps=2, batch_size=4, optimizer=OptimizerConfig(learning_rate=1e-2))
    lora = lora_lib.LoraConfig(rank=2, targets=("q", "down"))
    cfg = {"name": method} if method == "relearn" else {"name": method,
                                                        "strengthen_epochs": 1}
    result = runner.unlearn_model(model, tok, forget, retain, cfg, train, max_len=256,
                                  truncate=True, lora=lora)
    assert len(result.history) == 2
    _, adapters, rest = nnx.split(result.model, nnx.LoRAParam, nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, rest),
                 jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
    b = adapters["layers"]["attn"]["lora"]["q"]["lora_b"].get_value()
    assert float(jnp.abs(b).max()) > 0
    assert not lora_lib.has_adapters(model)


def _bf16_base_loss(scan_layers=True):
    """A LoRA model over a bfloat16 base (3 layers, F 40: shapes no other array has) and
    the value and gradient, in the adapters alone, of a scalar of its logits (minus the
    mean top log-probability), the base a separate frozen input as in ``train.step``."""
    config = LlamaConfig(**dict(CFG, num_layers=3, intermediate_size=40), scan_layers=scan_layers,
                         param_dtype="bfloat16", dtype="bfloat16", remat="full")
    model = _random_adapters(lora_lib.add_adapters(Llama(config, rngs=nnx.Rngs(0)),
                                                   lora_lib.LoraConfig(rank=2)))
    graphdef, adapters, base = nnx.split(model, nnx.LoRAParam, nnx.Param)
    ids = _ids()

    def loss(adapters, base):
        logits = nnx.merge(graphdef, adapters, base)(ids)
        return -jnp.mean(jax.nn.log_softmax(logits.astype(jnp.float32))[:, :-1].max(-1))

    return jax.value_and_grad(loss), adapters, base


def test_a_bf16_base_is_sliced_without_a_float32_copy_of_every_layer(monkeypatch):
    """On the CPU a scanned bf16 base is sliced as integers (``layer_stack``): the compiled
    adapter gradient holds no float32 ``[L, ...]`` copy of a base weight, and computes
    what the plain bf16 slicing computes (bit for bit: only the slicing differs)."""
    from jaxunlearn.models import layer_stack

    grad, adapters, base = _bf16_base_loss()
    hlo = jax.jit(grad).lower(adapters, base).compile().as_text()
    value, grads = jax.jit(grad)(adapters, base)
    monkeypatch.setattr(layer_stack, "_frozen_base_as_bits",
                        lambda stacked: (stacked, layer_stack._identity))
    plain = _bf16_base_loss()[0]  # a new function: jit's trace cache would reuse grad's
    plain_hlo = jax.jit(plain).lower(adapters, base).compile().as_text()
    plain_value, plain_grads = jax.jit(plain)(adapters, base)
    stacked_f32 = ("f32[3,16,40]", "f32[3,40,16]")  # gate/up and down, every layer
    assert any(s in plain_hlo for s in stacked_f32)  # what the integer slicing avoids
    assert not any(s in hlo for s in stacked_f32)
    assert float(value) == float(plain_value)
    jax.tree.map(np.testing.assert_array_equal, grads, plain_grads)
    # Unrolled layers (no scan, no slicing) agree to bf16 rounding.
    unrolled, u_adapters, u_base = _bf16_base_loss(scan_layers=False)
    np.testing.assert_allclose(float(jax.jit(unrolled)(u_adapters, u_base)[0]), float(value),
                               rtol=2e-2)
