"""Per-device memory of the NPO unlearning step for Llama-3.1-8B shapes, from XLA's compiler,
for each rematerialisation policy (``LlamaConfig.remat``).

Nothing is allocated: the state and batch are ``jax.ShapeDtypeStruct`` s with shardings,
and ``jax.jit(step).lower(...).compile().memory_analysis()`` gives, per device,

    peak = arguments + outputs + temporaries - aliased (donated state reused in place)

The plan that fits one 80 GB GPU (defaults):
  * bf16 weights (16 GB for 8B) and bf16 compute;
  * NPO's reference log-probs cached as inputs (``[B]`` floats): no second model;
  * rematerialised blocks (``--remat full``: only each block's input is kept; the
    script compiles every policy listed in ``--remat``, by default ``full``,
    ``dots_saveable`` and ``none``, and reports each one's peak);
  * label log-probs fused with the LM head (``jaxunlearn.ops``, chunks of ``--chunk-size``
    tokens): no float32 ``[B, T, 128256]`` logits;
  * AdamW with bf16 first and second moments (``--optimizer adamw``; 2 x 16 GB), the
    choice documented in RESULTS.md; ``--optimizer adafactor`` (factored second moments,
    no first moment) is the smaller alternative.
FSDP over ``--devices N`` shards weights, gradients and moments ``N`` ways.

The figures come from XLA's CPU compiler (8 simulated devices): buffer assignment and
fusion differ from the GPU compiler's, so they estimate the GPU figure; they do not
measure it. For bf16 they are an upper bound: the CPU backend has no bf16 matmul, so it
converts every bf16 dot's operands to float32 and, on one device, keeps float32 copies
of the bf16 weights alive from the forward to the backward pass (about 4 bytes per
parameter, 30 GiB at 8B; seen in the live-range dump at the peak). The script also
prints the exact lower bound ``state + one gradient`` (from the shapes alone: weights,
optimiser moments and one gradient copy, all alive at the update because global-norm
clipping needs every gradient first); the GPU peak is that plus activations. The layers
are scanned (``LlamaConfig.scan_layers``), so the full depth compiles as fast as one
block and is compiled by default. ``--unrolled`` compiles 32 separate blocks instead
(slow on a 2-core CPU): then give ``--depths 2,4`` and the peak is extrapolated linearly
to the full depth (every per-layer buffer scales with depth, the rest does not).

    .venv/bin/python benchmarks/memory.py                       # 1 and 8 devices, 3 policies
    .venv/bin/python benchmarks/memory.py --devices 8 --remat full
    .venv/bin/python benchmarks/memory.py --unrolled --depths 2,4 --remat full

Last line: ``peak GiB/device <preset>@<first device count> <x>`` for the first policy in
``--remat`` (extrapolated when the full depth was not compiled).
"""

from __future__ import annotations

import os
import sys

# Before jax is imported: 8 simulated CPU devices for the FSDP mesh, and the CPU
# compiler's memory-minimising scheduler. Its default, concurrency-optimised scheduler
# hoists rematerialised blocks back into the forward pass (remat then saves nothing:
# 546 -> 176 MiB on a 4-layer test model once disabled); GPU compilers schedule for memory.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402

GIB = 1024 ** 3


def _abstract_state(abs_params, opt, mesh, *, replicate_moments: bool = False):
    """Sharded ``ShapeDtypeStruct`` TrainState: params by the partition rules, moments alike.

    ``replicate_moments`` reproduces ``train.step.init_train_state`` before its moments
    were pinned to their parameters' shardings (the compiler laid the ``zeros_like``
    moments out replicated): it shows what that fix saves per device.
    """
    import jax
    import optax

    from jaxunlearn.train import mesh as mesh_lib
    from jaxunlearn.train.step import TrainState

    shardings = mesh_lib.param_shardings(abs_params, mesh)
    params = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                          abs_params, shardings)
    rep = mesh_lib.replicated(mesh)
    opt_shapes = jax.eval_shape(opt.init, params)
    if replicate_moments:
        opt_sh = jax.tree.map(lambda _: rep, opt_shapes)
    else:
        # Every parameter-shaped moment takes its parameter's sharding; counts and
        # Adafactor's factored row/column statistics (small) are replicated.
        opt_sh = optax.tree_map_params(
            opt, lambda leaf, p: p.sharding if leaf.shape == p.shape else rep, opt_shapes, params,
            transform_non_params=lambda _: rep)
    opt_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                             opt_shapes, opt_sh)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return TrainState(params=params, opt_state=opt_state,
                      step=jax.ShapeDtypeStruct((), np.int32, sharding=rep),
                      key=jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep))


def _abstract_batch(rows: int, seq: int, mesh):
    import jax

    from jaxunlearn.data.batch import Batch
    from jaxunlearn.train import mesh as mesh_lib

    sh = mesh_lib.batch_sharding(mesh)

    def arr(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

    def rows_batch():
        return Batch(input_ids=arr((rows, seq), np.int32), labels=arr((rows, seq), np.int32),
                     loss_mask=arr((rows, seq), np.float32),
                     attention_mask=arr((rows, seq), np.int32))

    return {"forget": {"answer": rows_batch()}, "retain": rows_batch(),
            "cache": {"ref_logp": {"answer": arr((rows,), np.float32)},
                      "weight": arr((rows,), np.float32)}}


def analyse(args, depth: int, devices: int, remat: str) -> dict:
    """Compiles the step at ``depth`` layers on ``devices`` (FSDP) with per-block remat
    policy ``remat``; memory figures in bytes."""
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.models.lora import add_adapters
    from jaxunlearn.models.presets import get_preset
    from jaxunlearn.train import mesh as mesh_lib
    from jaxunlearn.train.step import OptimizerConfig, make_optimizer, make_train_step

    config = get_preset(args.preset, num_layers=depth, dtype=args.dtype,
                        param_dtype=args.param_dtype, remat=remat, scan_layers=not args.unrolled)
    mesh = mesh_lib.make_mesh(data=1, fsdp=devices, devices=jax.devices()[:devices])
    mesh_lib.check_batch_divides(args.batch, mesh, "--batch")
    lora = _lora(args)
    abs_model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)) if lora is None else
                               add_adapters(Llama(config, rngs=nnx.Rngs(0)), lora))
    graphdef, abs_params = nnx.split(abs_model, nnx.Param)
    frozen = None
    if lora is not None:  # the state holds the adapters; the bf16 base is a frozen input
        abs_params, base = nnx.split_state(abs_params, nnx.LoRAParam, ...)
        frozen = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              base, mesh_lib.param_shardings(base, mesh))
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5, schedule="constant",
                                         optimizer=args.optimizer, moment_dtype=args.moment_dtype,
                                         clip_norm=1.0), total_steps=1000)
    state = _abstract_state(abs_params, opt, mesh, replicate_moments=args.replicate_moments)
    batch = _abstract_batch(args.batch, args.seq, mesh)
    if args.objective == "fused":
        objective = _common.fused_objective(graphdef, config, beta=0.1, alpha=1.0,
                                            chunk_size=args.chunk_size)
    else:
        objective = _common.library_objective(graphdef, config, beta=0.1, alpha=1.0)
    step = make_train_step(objective, opt, mesh=mesh,
                           state_sharding=jax.tree.map(lambda x: x.sharding, state),
                           with_frozen=lora is not None,
                           frozen_sharding=None if frozen is None else
                           jax.tree.map(lambda x: x.sharding, frozen))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, *(() if frozen is None else (frozen,))).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    out = {"args": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes}
    out["peak"] = out["args"] + out["outputs"] + out["temp"] - out["alias"]
    out["params"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params)) / devices
    out["trained_bytes"] = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
    out["compile_s"] = seconds
    out["num_params"] = config.num_params()
    return out


def _lora(args):
    """``--lora-rank r``: rank-r adapters (alpha 2r) on every projection; 0: full fine-tuning."""
    from jaxunlearn.models.lora import LoraConfig

    return LoraConfig(rank=args.lora_rank, alpha=2.0 * args.lora_rank) if args.lora_rank else None


def jnp_dtype(name: str):
    import jax.numpy as jnp

    return {"bfloat16": jnp.bfloat16, "float32": jnp.float32, "float16": jnp.float16}[name]


def _fit(depths, values, full_depth):
    """Least-squares line through (depth, value), evaluated at ``full_depth``; max residual."""
    if len(depths) == 1:
        return values[0], 0.0
    slope, intercept = np.polyfit(depths, values, 1)
    resid = np.max(np.abs(np.polyval([slope, intercept], depths) - values))
    return slope * full_depth + intercept, resid


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-3.1-8b")
    parser.add_argument("--depths", default="",
                        help="layer counts to compile (default: the preset's); the preset's "
                             "depth is extrapolated linearly unless it is among them")
    parser.add_argument("--unrolled", action="store_true",
                        help="unrolled layers (model.scan_layers=false) instead of one scanned block")
    parser.add_argument("--devices", default="1,8", help="FSDP widths to analyse (<= 8)")
    parser.add_argument("--batch", type=int, default=8,
                        help="forget rows per step (each paired with a retain row)")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--param-dtype", default="bfloat16")
    parser.add_argument("--optimizer", choices=("adamw", "adafactor"), default="adamw")
    parser.add_argument("--moment-dtype", choices=("bfloat16", "float32"), default="bfloat16")
    parser.add_argument("--remat", default="full,dots_saveable,none",
                        help="comma list of per-block remat policies (LlamaConfig.remat: none, "
                             "full, dots_saveable, dots_with_no_batch_dims_saveable)")
    parser.add_argument("--objective", choices=("fused", "library"), default="fused")
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--replicate-moments", action="store_true",
                        help="replicate optimiser moments, as train.step.init_train_state did "
                             "before it sharded them like their parameters")
    parser.add_argument("--lora-rank", type=int, default=0,
                        help="train rank-r LoRA adapters on every projection (model.lora, "
                             "alpha 2r; the base frozen in --param-dtype); 0: every weight")
    parser.add_argument("--gpu-gib", type=float, default=79.6,
                        help="memory of the target GPU (H100 80GB: 81559 MiB)")
    args = parser.parse_args(argv)
    policies = [x for x in args.remat.split(",") if x]
    known = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
    if not policies or set(policies) - set(known):
        parser.error(f"--remat: comma list of {', '.join(known)}")
    devices = [int(d) for d in args.devices.split(",") if d]
    if not devices or min(devices) < 1 or max(devices) > 8:
        parser.error("--devices: FSDP widths between 1 and 8, e.g. 1,8")

    import jax

    from jaxunlearn.models.presets import get_preset

    full = get_preset(args.preset)
    depths = [int(d) for d in args.depths.split(",") if d] or [full.num_layers]
    if min(depths) < 1:
        parser.error("--depths: positive layer counts, e.g. 2,4")
    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__}, {len(jax.devices())} simulated CPU devices; "
          f"XLA CPU compiler's memory_analysis (an estimate of the GPU figure)")
    print(f"# {args.preset}: {full.num_params() / 1e9:.2f}B params, {full.num_layers} layers "
          f"({'unrolled' if args.unrolled else 'scanned'}); "
          f"batch {args.batch}+{args.batch} rows x T={args.seq}; dtype {args.dtype}, params "
          f"{args.param_dtype}; {args.optimizer} (moments {args.moment_dtype}); "
          f"objective {args.objective} (chunk {args.chunk_size}); moments "
          f"{'replicated' if args.replicate_moments else 'sharded like their parameters'}"
          + (f"; LoRA rank {args.lora_rank} on every projection, base frozen"
             if args.lora_rank else ""))
    print(f"{'remat':>14} {'devices':>7} {'layers':>6} {'args':>8} {'outputs':>8} {'temp':>8} "
          f"{'alias':>8} {'peak':>8} {'compile':>8}   (GiB per device)")
    headline, summary = None, []
    for policy in policies:
        for n in devices:
            rows = {}
            for d in depths:
                r = analyse(args, d, n, policy)
                rows[d] = r
                print(f"{policy:>14} {n:7d} {d:6d} {r['args'] / GIB:8.2f} {r['outputs'] / GIB:8.2f} "
                      f"{r['temp'] / GIB:8.2f} {r['alias'] / GIB:8.2f} {r['peak'] / GIB:8.2f} "
                      f"{r['compile_s']:7.0f}s", flush=True)
            if full.num_layers in rows:
                peak, how = rows[full.num_layers]["peak"], "compiled"
            else:
                ds = sorted(rows)
                peak, resid = _fit(ds, [rows[d]["peak"] for d in ds], full.num_layers)
                temp, _ = _fit(ds, [rows[d]["temp"] for d in ds], full.num_layers)
                how = (f"EXTRAPOLATED linearly from depths {ds} (max fit residual "
                       f"{resid / GIB:.3f} GiB; temp {temp / GIB:.2f} GiB)")
            fits = "fits" if peak / GIB <= args.gpu_gib else "does NOT fit"
            print(f"{policy:>14} {n:7d} {full.num_layers:6d} peak {peak / GIB:.2f} GiB per device, "
                  f"{how}; {fits} in {args.gpu_gib:.1f} GiB")
            ds = sorted(rows)
            state, _ = ((rows[full.num_layers]["args"], 0.0) if full.num_layers in rows
                        else _fit(ds, [rows[d]["args"] for d in ds], full.num_layers))
            grads = full.num_params() * np.dtype(jnp_dtype(args.param_dtype)).itemsize / n
            if args.lora_rank:  # a gradient of the adapters alone (float32)
                grads = max(r["trained_bytes"] for r in rows.values()) * full.num_layers / max(
                    rows) / n
            print(f"{policy:>14} {n:7d} {full.num_layers:6d} exact lower bound: state "
                  f"{state / GIB:.2f} + one gradient {grads / GIB:.2f} = "
                  f"{(state + grads) / GIB:.2f} GiB per device (+ activations)")
            summary.append((policy, n, peak / GIB))
            if headline is None:
                headline = (n, peak / GIB)
    print("# peak GiB per device by remat policy: " + "; ".join(
        f"{p}@{n} {g:.2f}" for p, n, g in summary))
    print(f"peak GiB/device {args.preset}@{headline[0]} {headline[1]:.1f}")
    return headline[1]


if __name__ == "__main__":
    main()
