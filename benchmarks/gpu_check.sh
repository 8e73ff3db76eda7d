#!/usr/bin/env bash
# One GPU check (benchmarks/gpu_check.py): bf16 forward parity vs a float32 CPU run, tokens/s
# and MFU of the NPO step at Llama-3.2-1B shapes, the measured peak memory of an 8B NPO step
# (full fine-tuning, and LoRA rank 16 with a frozen bf16 base),
# and the HVP/gradient time ratio, printed as one block (under 8 minutes on one H100/H200).
# Without a GPU it runs the reduced (tiny-shape) mode and says so.
#
#   benchmarks/gpu_check.sh                  # from anywhere; uses the repository's .venv
#   PYTHON=python3 benchmarks/gpu_check.sh   # another interpreter (needs jax with CUDA)
#   benchmarks/gpu_check.sh --peak-tflops 989.4 --reduced    # flags go to gpu_check.py
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
# One GPU: the check measures one device; the others stay free.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"
exec "$python" "$root/benchmarks/gpu_check.py" "$@"
