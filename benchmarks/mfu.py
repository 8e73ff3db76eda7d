"""Throughput and model-FLOPs utilisation of the NPO unlearning step on Llama-3.2-1B shapes.

Random weights with the architecture of ``llama-3.2-1b`` (16 layers, D 2048, GQA 32/8,
V 128256, tied head), bf16 compute; the full step (forward, backward, clipping, AdamW)
on ``--batch`` forget rows + as many retain rows of ``--seq`` tokens, NPO against cached
reference log-probs + retain NLL.

MFU = model FLOPs per step / step time / (devices x peak bf16 FLOP/s), with model FLOPs
``6 * N * tokens + 12 * L * heads * head_dim * T * tokens`` (PaLM, appendix B: N the
matmul parameters incl. the LM head, embedding lookup excluded; attention counted
without causal savings). Rematerialisation is not counted (it is hardware work, not
model work), so remat lowers MFU. Peaks are dense bf16 (no sparsity) from the vendors'
data sheets; ``--peak-tflops`` overrides (required on devices not in the table, e.g. CPU).

    .venv/bin/python benchmarks/mfu.py --seq 2048 --batch 4 --remat dots_with_no_batch_dims_saveable
    .venv/bin/python benchmarks/mfu.py --tiny        # CPU smoke run: tiny model, same code path

Last line: ``mfu <fraction>`` (or ``tokens/s <n> (mfu n/a ...)`` without a known peak).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402

# Dense bf16 peak TFLOP/s per device (vendor data sheets; no 2:4 sparsity).
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100": 989.4,   # SXM5
    "H200": 989.4,
    "A100": 312.0,
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,  # v5e
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,  # v6e (Trillium)
    "TPU v6e": 918.0,
}


def peak_tflops(device_kind: str) -> float | None:
    """Table lookup by substring of ``jax.Device.device_kind`` (most specific key first)."""
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in device_kind.lower():
            return PEAK_BF16_TFLOPS[key]
    return None


def _config(args):
    from jaxunlearn.models import LlamaConfig
    from jaxunlearn.models.presets import get_preset

    overrides = dict(dtype=args.dtype, param_dtype=args.param_dtype, remat=args.remat,
                     attention_impl=args.attention)
    if args.tiny:
        return LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=704, num_layers=2,
                           num_heads=4, num_kv_heads=2, tie_word_embeddings=True,
                           max_position_embeddings=4096, **overrides)
    return get_preset("llama-3.2-1b", **overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model and batch (CPU smoke run)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per row (default 1024; tiny 128)")
    parser.add_argument("--batch", type=int, default=None,
                        help="forget rows per step, each paired with a retain row (default 4; tiny 2)")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype")
    parser.add_argument("--param-dtype", default="float32", help="weight storage dtype")
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots_saveable",
                                                     "dots_with_no_batch_dims_saveable"),
                        help="per-block rematerialisation (LlamaConfig.remat)")
    parser.add_argument("--attention", default="auto", choices=("auto", "xla", "cudnn"),
                        help="auto: cuDNN flash attention on GPUs with bf16/fp16, else XLA")
    parser.add_argument("--objective", choices=("fused", "library"), default="fused",
                        help="fused: jaxunlearn.ops on hidden states (no [B,T,V] logits); "
                             "library: methods.NPO, as jaxunlearn unlearn runs it")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="fused: LM-head tokens per chunk (default 4096 tokens; tiny: none)")
    parser.add_argument("--data", type=int, default=1, help="mesh data axis")
    parser.add_argument("--fsdp", type=int, default=0, help="mesh fsdp axis (0: all devices / data)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak bf16 TFLOP/s per device (overrides the table)")
    return parser


def measure(args) -> dict:
    """Runs ``args``' step: its config, mesh, step times and throughput (nothing printed).

    ``mfu`` is None when no bf16 peak is known for the device (and none was given).
    """
    args.seq = args.seq or (128 if args.tiny else 1024)
    args.batch = args.batch or (2 if args.tiny else 4)
    if args.chunk_size is None and not args.tiny:
        args.chunk_size = 4096

    import jax
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.train import mesh as mesh_lib
    from jaxunlearn.train.step import (OptimizerConfig, init_train_state, make_optimizer,
                                       make_train_step, state_shardings)

    device = jax.devices()[0]
    if args.attention == "auto":
        args.attention = ("cudnn" if device.platform == "gpu" and args.dtype in ("bfloat16", "float16")
                          else "xla")
    config = _config(args)
    n_dev = len(jax.devices())
    fsdp = args.fsdp or max(n_dev // args.data, 1)
    mesh = mesh_lib.make_mesh(data=args.data, fsdp=fsdp)
    mesh_lib.check_batch_divides(args.batch, mesh, "--batch")
    used = args.data * fsdp

    rng = np.random.default_rng(0)
    forget = _common.synthetic_rows(rng, args.batch, args.seq, config.vocab_size)
    retain = _common.synthetic_rows(rng, args.batch, args.seq, config.vocab_size)
    abstract = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))), nnx.Param)[1]
    graphdef, params = _common.init_params(config, 0,
                                           shardings=mesh_lib.param_shardings(abstract, mesh))

    # The cached reference: the target's own log-probs.
    ref = _common.fused_reference_logprobs(graphdef, params, mesh_lib.shard_batch(forget, mesh),
                                           chunk_size=args.chunk_size)
    # Padded: MFU counts 6 N FLOPs per batch token, so it is measured on the dense step
    # (padding-free would skip tokens the FLOP count includes).
    batch = mesh_lib.shard_batch(_common.unlearning_batch(forget, retain, ref,
                                                          padding_free=False), mesh)
    if args.objective == "fused":
        objective = _common.fused_objective(graphdef, config, beta=0.1, alpha=1.0,
                                            chunk_size=args.chunk_size)
    else:
        objective = _common.library_objective(graphdef, config, beta=0.1, alpha=1.0)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5, schedule="constant"), total_steps=1000)
    state = init_train_state(params, opt, jax.random.key(0), mesh)
    step = make_train_step(objective, opt, mesh=mesh, state_sharding=state_shardings(state))

    def run():
        nonlocal state
        state, metrics = step(state, batch)
        return _common.block(metrics)

    first = _common.timed(run)
    times = []
    for i in range(args.warmup + args.steps):
        dt = _common.timed(run)
        if i >= args.warmup:
            times.append(dt)
    loss = float(run()["loss"])
    med = _common.median(times)
    tokens = 2 * args.batch * args.seq
    flops = _common.train_flops(config, 2 * args.batch, args.seq)
    peak = args.peak_tflops or peak_tflops(device.device_kind)
    return {"config": config, "device": device, "used": used, "fsdp": fsdp, "times": times,
            "first_s": first, "loss": loss, "tokens": tokens, "flops": flops,
            "tokens_per_s": tokens / med, "peak_tflops": peak,
            "mfu": flops / med / used / (peak * 1e12) if peak else None}


def main(argv=None) -> float:
    import jax

    args = build_parser().parse_args(argv)
    r = measure(args)
    config, device, used, fsdp, times = r["config"], r["device"], r["used"], r["fsdp"], r["times"]
    loss, first, tokens, flops, peak = r["loss"], r["first_s"], r["tokens"], r["flops"], r["peak_tflops"]
    med = _common.median(times)
    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__}; {used} x {device.device_kind} ({device.platform}); "
          f"mesh data={args.data} fsdp={fsdp}")
    print(f"# model {'tiny' if args.tiny else 'llama-3.2-1b'}: {config.num_params() / 1e6:.1f}M params, "
          f"dtype {config.dtype}, params {config.param_dtype}, remat {args.remat}, attention "
          f"{args.attention}, objective {args.objective} (chunk {args.chunk_size})")
    print(f"# batch {args.batch} forget + {args.batch} retain rows x T={args.seq} = {tokens} tokens/step; "
          f"loss after {args.warmup + args.steps + 2} steps {loss:.4f}")
    print(f"step {_common.summary(times)}; first step {first:.1f} s (trace+compile+run)")
    print(f"tokens/s {tokens / med:.1f}; model TFLOP/s per device {flops / med / used / 1e12:.3f}")
    if peak is None:
        line = (f"tokens/s {tokens / med:.1f} (mfu n/a: no bf16 peak known for "
                f"{device.device_kind!r}; pass --peak-tflops)")
    else:
        line = f"mfu {flops / med / used / (peak * 1e12):.3f}"
        print(f"# peak {peak} TFLOP/s per device ({'--peak-tflops' if args.peak_tflops else 'table'})")
    print(line)
    return r["mfu"] if r["mfu"] is not None else float("nan")


if __name__ == "__main__":
    main()
