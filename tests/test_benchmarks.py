"""The benchmark scripts run end to end at toy sizes and end with their headline line.

No timing is asserted (that is what the scripts are for); what can fail here is the
scripts' own consistency checks (step_vs_torch's step-0 loss must equal PyTorch's, the
HVP must be finite) and their command lines. Each runs in its own process, as a user
runs it.
"""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--layers", "1", "--hidden", "32", "--ffn", "64", "--heads", "4", "--kv-heads", "2",
       "--vocab", "97", "--seq", "16", "--batch", "2"]

CASES = {
    # --model: the preset's RoPE base and tied head; the toy shapes given explicitly win.
    "step_vs_torch": (TOY + ["--model", "smollm2-135m", "--steps", "1", "--warmup", "0"],
                      r"^ratio jax/torch \d+\.\d+$"),
    "gemm_floor": (TOY + ["--steps", "1"], r"^floor jax/torch \d+\.\d+$"),
    "hvp_vs_grad": (TOY + ["--steps", "1", "--warmup", "0"], r"^ratio hvp/grad \d+\.\d+$"),
    "train_nll": (TOY + ["--steps", "1", "--warmup", "0"], r"^ratio fused/logits \d+\.\d+$"),
    # Reduced mode: two small depths, the scanned layout only.
    "compile_time": (["--depths", "1,2", "--layouts", "scanned", "--warmup", "0", "--hidden",
                      "32", "--ffn", "64", "--vocab", "97", "--seq", "16", "--batch", "2"],
                     r"^ratio compile 2/1 layers \d+\.\d+$"),
    "memory": (["--preset", "tiny", "--devices", "1", "--remat", "full,none", "--batch", "2",
                "--seq", "16", "--chunk-size", "16"], r"^peak GiB/device tiny@1 \d+\.\d+$"),
    # On a CPU no bf16 peak is known: the last line is the throughput and says so.
    "mfu": (["--tiny", "--seq", "16", "--steps", "1", "--warmup", "0"],
            r"^(mfu \d+\.\d+|tokens/s \d+\.\d+ \(mfu n/a)"),
}


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_and_prints_its_headline_last(script):
    args, headline = CASES[script]
    # The scripts choose their own devices (the test session's 8 simulated ones are not
    # theirs); they compile at -O0 as the suite does (toy shapes: compiling is the cost).
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": TEST_XLA_FLAGS}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(headline, last), proc.stdout[-2000:]


def _benchmark_module(name):
    """A benchmark script imported in this process (its siblings importable, as when run)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_model_flag_gives_the_presets_real_shapes_and_explicit_flags_win():
    import argparse

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import _common

    def config(argv):
        parser = argparse.ArgumentParser()
        _common.add_model_flags(parser)
        return _common.model_config(_common.parse_args(parser, argv))

    c = config(["--model", "smollm2-135m"])
    assert (c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads,
            c.vocab_size, c.tie_word_embeddings, c.rope_theta) == (30, 576, 1536, 9, 3, 49152,
                                                                   True, 100000.0)
    assert config(["--model", "smollm2-135m", "--layers", "2"]).num_layers == 2
    assert config([]).num_layers == 12


def test_memory_mesh_shapes_follow_the_tensor_and_batch_rules():
    from jaxunlearn.models.presets import get_preset

    memory = _benchmark_module("memory")
    tiny = get_preset("tiny")  # 4 heads, 2 kv heads, ffn 176, vocab 512: tensor <= 2
    # 8 devices, 8 rows: every data x fsdp x tensor = 8 with tensor in {1, 2}.
    assert memory.mesh_shapes(8, tiny, 8, with_data=True) == [
        (1, 4, 2), (1, 8, 1), (2, 2, 2), (2, 4, 1), (4, 1, 2), (4, 2, 1), (8, 1, 1)]
    assert memory.mesh_shapes(8, tiny, 8, with_data=False) == [(1, 4, 2), (1, 8, 1)]
    # 4 rows cannot be split 8 ways over data x fsdp: only meshes with tensor = 2 remain.
    assert memory.mesh_shapes(8, tiny, 4, with_data=True) == [(1, 4, 2), (2, 2, 2), (4, 1, 2)]
    # 2 rows on 8 devices would need tensor >= 4, which 2 kv heads do not allow.
    assert memory.mesh_shapes(8, tiny, 2, with_data=True) == []


def test_memory_mesh_search_compiles_each_mesh_and_reports_the_lowest(capsys, monkeypatch):
    """The search path of ``memory.py --search`` at the tiny preset on 2 of the test
    session's 8 simulated devices: data, fsdp and tensor meshes all compile."""
    from jaxunlearn.models.presets import get_preset

    memory = _benchmark_module("memory")
    args = memory.build_parser().parse_args(
        ["--search", "2", "--presets", "tiny", "--with-data", "--remat", "full", "--seq", "16",
         "--chunk-size", "16"])
    results = memory.search(args, "tiny", 2, "full")
    by_mesh = {(r["data"], r["fsdp"], r["tensor"]): r for r in results}
    assert sorted(by_mesh) == [(1, 1, 2), (1, 2, 1), (2, 1, 1)]
    # One gradient laid out like the weights: the whole bf16 model when data replicates them,
    # about half of it when fsdp or tensor splits them (norm scales stay whole).
    model_bytes = 2 * get_preset("tiny").num_params()
    assert by_mesh[(2, 1, 1)]["grad"] == model_bytes
    for mesh in ((1, 2, 1), (1, 1, 2)):
        assert model_bytes / 2 <= by_mesh[mesh]["grad"] < 0.6 * model_bytes
        # data replicates weights and moments where fsdp/tensor split them.
        assert by_mesh[mesh]["args"] < by_mesh[(2, 1, 1)]["args"]
    for r in results:
        assert r["peak"] >= r["args"] + r["grad"] > 0  # the exact lower bound holds
    lowest = min(results, key=lambda r: r["peak"])
    assert memory.best(results) is lowest
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.split()[:2] == ["tiny", "2"] for line in lines) == 3
    # The summary names the lowest mesh on its last line.
    monkeypatch.setattr(memory, "search", lambda *a: results)
    assert memory.main_search(args, ["full"], [2]) == lowest["peak"] / memory.GIB
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"best mesh tiny@2 {memory.mesh_label(lowest)} peak GiB/device "
                    f"{lowest['peak'] / memory.GIB:.1f}")
    assert np.isfinite(lowest["peak"])


GPU_CHECK_NUMBERS = ("parity.max_abs_err", "parity.max_rel_err", "parity.argmax_agreement",
                     "step.tokens_per_s", "step.median_step_s", "step.mfu", "memory.peak_gib",
                     "memory.compiled_peak_gib", "memory.loss", "memory_lora.peak_gib",
                     "memory_lora.compiled_peak_gib", "memory_lora.loss", "hvp.grad_s",
                     "hvp.hvp_s", "hvp.ratio")


def test_gpu_check_reduced_mode_prints_one_block_of_finite_figures():
    """``gpu_check.sh`` without a GPU: the reduced mode end to end, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable,
           "XLA_FLAGS": TEST_XLA_FLAGS}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--reduced",
                           "--peak-tflops", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip()
    assert out.count("==== jaxunlearn gpu_check (reduced) ====") == 1
    block = out[out.index("==== jaxunlearn gpu_check"):]
    assert re.fullmatch(r"==== end \(reduced, \d+ s\) ====", block.splitlines()[-1])
    fields = dict(re.findall(r"^([a-z_.]+): (.*)$", block, re.M))
    assert "REDUCED" in fields["mode"] and "tiny" in fields["memory.shapes"]
    for key in GPU_CHECK_NUMBERS:
        value = float(fields[key].split()[0])
        assert np.isfinite(value), (key, fields[key])
    # bf16 vs float32 logits of the same weights: close, not equal.
    assert 0 < float(fields["parity.max_rel_err"]) < 0.05
    assert 0.5 <= float(fields["parity.argmax_agreement"]) <= 1
    assert float(fields["memory.peak_gib"]) > 0
    # LoRA: adapters, their gradient and moments instead of the whole model's
    assert "LoRA rank 16" in fields["memory_lora.shapes"]
    assert 0 < float(fields["memory_lora.peak_gib"]) < float(fields["memory.peak_gib"])
    assert fields["memory.peak_source"].startswith(
        "compiled memory_analysis" if fields["jax"].endswith("(cpu), 1 device(s)") else "device")
