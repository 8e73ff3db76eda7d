"""The benchmark scripts run end to end at toy sizes and end with their headline line.

No timing is asserted (that is what the scripts are for); what can fail here is the
scripts' own consistency checks (step_vs_torch's step-0 loss must equal PyTorch's, the
HVP must be finite) and their command lines. Each runs in its own process, as a user
runs it.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--layers", "1", "--hidden", "32", "--ffn", "64", "--heads", "4", "--kv-heads", "2",
       "--vocab", "97", "--seq", "16", "--batch", "2"]

CASES = {
    "step_vs_torch": (TOY + ["--steps", "1", "--warmup", "0"], r"^ratio jax/torch \d+\.\d+$"),
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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # The scripts choose their own devices; the test session's 8 simulated ones are not theirs.
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(headline, last), proc.stdout[-2000:]
