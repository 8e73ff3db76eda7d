"""The matrix-multiply floor of the unlearning step: its GEMMs alone, in XLA and in PyTorch.

The step of ``step_vs_torch.py`` (same flags, same shapes) is, on a CPU, almost all
dense matrix products: per layer the q/k/v/o and gate/up/down projections, the two
attention products per head, and the LM head, each once forward and twice backward
(``dX = dY W^T``, ``dW = X^T dY``). This script runs exactly that list of products with
random float32 operands, nothing else, jitted in XLA and with ``torch.matmul`` on the
same thread count, interleaved, medians. A padded step cannot be faster than its floor
on the same library; ``step / floor`` is the share of the step the rest (softmax, norms,
elementwise work, AdamW, framework overhead) costs. (The padding-free library step does
fewer products than this list, so it can be below the floor.)

    .venv/bin/python benchmarks/gemm_floor.py                    # step_vs_torch's shapes
    .venv/bin/python benchmarks/gemm_floor.py --layers 2 --steps 3

Last line: ``floor jax/torch <median XLA GEMM time / median torch GEMM time>``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402


def step_gemms(config, rows: int, seq: int) -> list[tuple[int, int, int, int]]:
    """``(batch, m, k, n)`` of every product in one forward + backward over ``rows x seq``.

    Weight products are ``[N, k] x [k, n]`` with ``N = rows * seq`` tokens; attention
    products are batched over ``rows * heads``.
    """
    D, F, H = config.hidden_size, config.intermediate_size, config.resolved_head_dim
    q, kv, V = config.num_heads * H, config.num_kv_heads * H, config.vocab_size
    N = rows * seq
    weights = [(D, q), (D, kv), (D, kv), (q, D), (D, F), (D, F), (F, D)] * config.num_layers
    weights.append((D, V))
    out = []
    for k, n in weights:
        out += [(1, N, k, n), (1, N, n, k), (1, k, N, n)]  # forward, dX, dW
    heads = rows * config.num_heads
    for _ in range(config.num_layers):
        # scores = q k^T and out = p v forward; each has two products backward.
        out += [(heads, seq, H, seq), (heads, seq, seq, H)] * 3
    return out


def flops(gemms) -> float:
    return float(sum(2 * b * m * k * n for b, m, k, n in gemms))


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_flags(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed rounds (median over them)")
    parser.add_argument("--threads", type=int, default=_common.cpu_threads())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    import jax
    import jax.numpy as jnp
    import torch

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(args.threads)
    config = _common.model_config(args)
    gemms = step_gemms(config, 2 * args.batch, args.seq)
    rng = np.random.default_rng(args.seed)
    # One operand pair per distinct shape (re-used: the floor is arithmetic, not cache misses
    # of distinct weights, which the real step pays on both sides alike).
    shapes = sorted(set(gemms))
    operands = {s: (rng.standard_normal((s[0], s[1], s[2]), np.float32),
                    rng.standard_normal((s[0], s[2], s[3]), np.float32)) for s in shapes}
    j_ops = {s: (jnp.asarray(a), jnp.asarray(b)) for s, (a, b) in operands.items()}
    t_ops = {s: (torch.from_numpy(a), torch.from_numpy(b)) for s, (a, b) in operands.items()}
    t_out = {s: torch.empty((s[0], s[1], s[3])) for s in shapes}
    matmul = jax.jit(jnp.matmul)

    def run_jax():
        # One dispatch per product, as the step's fused program runs them one after another.
        _common.block([matmul(*j_ops[s]) for s in gemms])

    def run_torch():
        for s in gemms:
            torch.matmul(*t_ops[s], out=t_out[s])

    for s in shapes:
        _common.block(matmul(*j_ops[s]))  # compile every shape before timing
    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__}, torch {torch.__version__} ({args.threads} threads); "
          f"{len(gemms)} products, {flops(gemms) / 1e12:.3f} TFLOP per step "
          f"(L={args.layers} D={args.hidden} F={args.ffn} V={args.vocab}, "
          f"{2 * args.batch} rows x T={args.seq})")
    times = {"jax": [], "torch": []}
    for r in range(args.steps + 1):
        for name in (("jax", "torch") if r % 2 == 0 else ("torch", "jax")):
            dt = _common.timed(run_jax if name == "jax" else run_torch)
            if r > 0:  # round 0 warms caches and thread pools
                times[name].append(dt)
    for name in ("jax", "torch"):
        med = _common.median(times[name])
        print(f"{name:6s} GEMM floor {_common.summary(times[name])}, "
              f"{flops(gemms) / med / 1e9:.1f} GFLOP/s")
    ratio = _common.median(times["jax"]) / _common.median(times["torch"])
    print(f"floor jax/torch {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
