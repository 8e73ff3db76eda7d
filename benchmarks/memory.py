"""Per-device memory of the NPO unlearning step for Llama-3.1-8B shapes, from XLA's compiler,
for each rematerialisation policy (``LlamaConfig.remat``); with ``--search``, the mesh that
needs the least memory per device for Llama-3.1-8B and -70B on 8 and 64 devices.

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

``--search 8,64`` compiles, for each of ``--presets`` and each device count ``N``, the
step on every ``(data, fsdp, tensor)`` mesh with ``data x fsdp x tensor = N`` that the
model allows (``tensor`` divides heads, kv heads, ffn width and vocabulary) with a global
batch of ``--rows-per-device x N`` forget rows, and reports the mesh with the lowest peak
per device. ``data`` stays 1 unless ``--with-data``: a data axis replicates what fsdp
would shard, at the same rows per device, so it never lowers the peak.

The figures come from XLA's CPU compiler (64 simulated devices): buffer assignment and
fusion differ from the GPU compiler's, so they estimate the GPU figure; they do not
measure it. For bf16 they are an upper bound: the CPU backend has no bf16 matmul, so it
converts every bf16 dot's operands to float32 and, on one device, keeps float32 copies
of the bf16 weights alive from the forward to the backward pass (about 4 bytes per
parameter, 30 GiB at 8B; seen in the live-range dump at the peak). With ``--lora-rank``
the frozen base is sliced as integers on the CPU (``models.layer_stack``), which avoids
that float32 copy but costs one 16-bit integer copy of the base. The script also
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
    .venv/bin/python benchmarks/memory.py --search 8,64 --remat full   # 8B and 70B meshes

Last line: ``peak GiB/device <preset>@<first device count> <x>`` for the first policy in
``--remat`` (extrapolated when the full depth was not compiled); with ``--search``,
``best mesh <preset>@<devices> data=<d> fsdp=<f> tensor=<t> peak GiB/device <x>`` for the
first preset and device count.
"""

from __future__ import annotations

import os
import sys

import argparse
import itertools
import time
from typing import Any, NamedTuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402

GIB = 1024 ** 3
SIMULATED_DEVICES = 64


def simulate_cpu_devices() -> None:
    """Before jax is imported: 64 simulated CPU devices for the meshes, and the CPU
    compiler's memory-minimising scheduler.

    Its default, concurrency-optimised scheduler hoists rematerialised blocks back into
    the forward pass (remat then saves nothing: 546 -> 176 MiB on a 4-layer test model
    once disabled); GPU compilers schedule for memory.
    """
    if "jax" in sys.modules:
        raise RuntimeError("memory.py must set XLA_FLAGS before jax is imported")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={SIMULATED_DEVICES}"
                               " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


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


class StepProgram(NamedTuple):
    """The jitted NPO step of one model on one mesh, and the abstract (sharded) state and
    batch it is compiled for; ``optimizer`` and ``graphdef`` build a concrete state."""

    step: Any
    state: Any
    batch: Any
    optimizer: Any
    graphdef: Any
    frozen: Any = None  # LoRA: the frozen base, a separate (abstract, sharded) input


def step_program(config, mesh, *, rows: int, seq: int, optimizer: str = "adamw",
                 moment_dtype: str = "bfloat16", objective: str = "fused",
                 chunk_size: int | None = 2048, replicate_moments: bool = False,
                 lora_rank: int = 0) -> StepProgram:
    """The NPO + retain-NLL step (``--objective``) for ``rows`` forget + ``rows`` retain rows
    of ``seq`` tokens, AdamW (or Adafactor) with clipping, as ``jax.jit`` built by
    ``train.step.make_train_step`` with the state's shardings; nothing is allocated.
    ``lora_rank > 0``: the state is rank-r adapters (alpha 2r) on every projection and the
    base is a frozen input (``StepProgram.frozen``), as ``model.lora`` trains."""
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.models.lora import LoraConfig, add_adapters
    from jaxunlearn.train import mesh as mesh_lib
    from jaxunlearn.train.step import OptimizerConfig, make_optimizer, make_train_step

    mesh_lib.check_batch_divides(rows, mesh, "--batch")
    lora = LoraConfig(rank=lora_rank, alpha=2.0 * lora_rank) if lora_rank else None
    abs_model = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)) if lora is None else
                               add_adapters(Llama(config, rngs=nnx.Rngs(0)), lora))
    graphdef, abs_params = nnx.split(abs_model, nnx.Param)
    frozen = None
    if lora is not None:  # the state holds the adapters; the frozen base is an input
        abs_params, base = nnx.split_state(abs_params, nnx.LoRAParam, ...)
        frozen = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              base, mesh_lib.param_shardings(base, mesh))
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5, schedule="constant",
                                         optimizer=optimizer, moment_dtype=moment_dtype,
                                         clip_norm=1.0), total_steps=1000)
    state = _abstract_state(abs_params, opt, mesh, replicate_moments=replicate_moments)
    if objective == "fused":
        obj = _common.fused_objective(graphdef, config, beta=0.1, alpha=1.0, chunk_size=chunk_size)
    else:
        obj = _common.library_objective(graphdef, config, beta=0.1, alpha=1.0)
    step = make_train_step(obj, opt, mesh=mesh,
                           state_sharding=jax.tree.map(lambda x: x.sharding, state),
                           with_frozen=frozen is not None,
                           frozen_sharding=None if frozen is None else
                           jax.tree.map(lambda x: x.sharding, frozen))
    return StepProgram(step=step, state=state, batch=_abstract_batch(rows, seq, mesh),
                       optimizer=opt, graphdef=graphdef, frozen=frozen)


def compiled_memory(compiled) -> dict:
    """Per-device bytes from ``Compiled.memory_analysis()``; ``peak`` as in the docstring."""
    m = compiled.memory_analysis()
    out = {"args": m.argument_size_in_bytes, "outputs": m.output_size_in_bytes,
           "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes}
    out["peak"] = out["args"] + out["outputs"] + out["temp"] - out["alias"]
    return out


def analyse(args, config, mesh, rows: int) -> dict:
    """Compiles the step of ``config`` on ``mesh`` for ``rows`` + ``rows`` rows; per-device
    memory figures in bytes, the exact lower bound's parts and the compile time."""
    import jax

    program = step_program(config, mesh, rows=rows, seq=args.seq, optimizer=args.optimizer,
                           moment_dtype=args.moment_dtype, objective=args.objective,
                           chunk_size=args.chunk_size, replicate_moments=args.replicate_moments,
                           lora_rank=getattr(args, "lora_rank", 0))
    t0 = time.perf_counter()
    frozen = () if program.frozen is None else (program.frozen,)
    compiled = program.step.lower(program.state, program.batch, *frozen).compile()
    out = compiled_memory(compiled)
    out["compile_s"] = time.perf_counter() - t0
    # One gradient laid out like the weights: each weight's shard on one device.
    out["grad"] = sum(int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
                      for x in jax.tree.leaves(program.state.params))
    out["trained_bytes"] = sum(x.size * x.dtype.itemsize
                               for x in jax.tree.leaves(program.state.params))
    return out


def mesh_shapes(devices: int, config, rows: int, *, with_data: bool) -> list[tuple[int, int, int]]:
    """``(data, fsdp, tensor)`` with ``data * fsdp * tensor = devices`` that the model and the
    batch allow: ``tensor`` divides the heads, kv heads, ffn width and vocabulary
    (``train.mesh``'s rule), ``data * fsdp`` divides the ``rows``.

    Without ``with_data``, ``data = 1``: a data axis replicates weights, gradients and
    moments where fsdp shards them, and gives each device the same rows fsdp would, so
    ``(d, f, t)`` never needs less memory per device than ``(1, d * f, t)``.
    """
    def divisors(n):
        return [k for k in range(1, n + 1) if n % k == 0]

    tensor_sizes = (config.num_heads, config.num_kv_heads, config.intermediate_size,
                    config.vocab_size)
    shapes = []
    for tensor, data in itertools.product(divisors(devices), divisors(devices)):
        fsdp, rest = divmod(devices, tensor * data)
        if rest or (data > 1 and not with_data) or rows % (data * fsdp):
            continue
        if all(size % tensor == 0 for size in tensor_sizes):
            shapes.append((data, fsdp, tensor))
    return sorted(shapes)


def search(args, name: str, devices: int, policy: str) -> list[dict]:
    """Compiles every mesh of ``mesh_shapes`` for preset ``name`` on ``devices`` devices
    (global batch ``--rows-per-device x devices`` rows) and prints one line per mesh as it
    goes; ``analyse``'s figures for each, with the preset, device count and mesh axes."""
    import jax

    from jaxunlearn.train import mesh as mesh_lib

    config = _common.preset(name, dtype=args.dtype, param_dtype=args.param_dtype, remat=policy)
    rows = args.rows_per_device * devices
    shapes = mesh_shapes(devices, config, rows, with_data=args.with_data)
    print(f"# {name} ({config.num_params() / 1e9:.2f}B params, {config.num_layers} layers) on "
          f"{devices} devices, remat {policy}: {rows} + {rows} rows x T={args.seq}, "
          f"{len(shapes)} meshes")
    results = []
    for data, fsdp, tensor in shapes:
        mesh = mesh_lib.make_mesh(data, fsdp, tensor, devices=jax.devices()[:devices])
        r = analyse(args, config, mesh, rows)
        r.update(name=name, devices=devices, data=data, fsdp=fsdp, tensor=tensor)
        results.append(r)
        print(f"{name:>14} {devices:7d} {data:4d} {fsdp:4d} {tensor:6d} {r['args'] / GIB:8.2f} "
              f"{r['temp'] / GIB:8.2f} {r['peak'] / GIB:8.2f} "
              f"{(r['args'] + r['grad']) / GIB:11.2f} {r['compile_s']:7.0f}s", flush=True)
    if not results:
        raise SystemExit(f"{name} on {devices} devices: no mesh divides the model and "
                         f"{rows} rows; change --rows-per-device")
    return results


def best(results: list[dict]) -> dict:
    """The mesh with the lowest peak per device; of equal peaks, the one with the smaller
    tensor axis (it communicates activations in every block), then the smaller data axis."""
    return min(results, key=lambda r: (r["peak"], r["tensor"], r["data"]))


def mesh_label(r: dict) -> str:
    return f"data={r['data']} fsdp={r['fsdp']} tensor={r['tensor']}"


def main_search(args, policies: list[str], counts: list[int]) -> float:
    """``--search``: the best mesh per preset and device count."""
    print(f"{'preset':>14} {'devices':>7} {'data':>4} {'fsdp':>4} {'tensor':>6} {'args':>8} "
          f"{'temp':>8} {'peak':>8} {'lower bound':>11} {'compile':>8}   (GiB per device)")
    winners = [best(search(args, name, n, policy)) for policy in policies
               for name in args.presets.split(",") for n in counts]
    print("# best mesh (lowest peak per device; lower bound = state + one gradient):")
    for r in winners:
        fits = "fits" if r["peak"] / GIB <= args.gpu_gib else "does NOT fit"
        print(f"#   {r['name']}@{r['devices']}: {mesh_label(r)}, peak {r['peak'] / GIB:.2f} GiB "
              f"(lower bound {(r['args'] + r['grad']) / GIB:.2f}); {fits} in {args.gpu_gib:.1f} GiB")
    r = winners[0]
    print(f"best mesh {r['name']}@{r['devices']} {mesh_label(r)} peak GiB/device "
          f"{r['peak'] / GIB:.1f}")
    return r["peak"] / GIB


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="llama-3.1-8b")
    parser.add_argument("--depths", default="",
                        help="layer counts to compile (default: the preset's); the preset's "
                             "depth is extrapolated linearly unless it is among them")
    parser.add_argument("--unrolled", action="store_true",
                        help="unrolled layers (model.scan_layers=false) instead of one scanned block")
    parser.add_argument("--devices", default="1,8",
                        help=f"FSDP widths to analyse (<= {SIMULATED_DEVICES})")
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
    g = parser.add_argument_group("mesh search (--search)")
    g.add_argument("--search", default="",
                   help="device counts, e.g. 8,64: for each preset of --presets and each count, "
                        "compile the step on every data x fsdp x tensor mesh and report the "
                        "lowest peak per device (full depth, scanned layers)")
    g.add_argument("--presets", default="llama-3.1-8b,llama-3.1-70b",
                   help="comma list of presets for --search (llama-3.1-70b: benchmarks only)")
    g.add_argument("--rows-per-device", type=int, default=1,
                   help="--search's global batch: this many forget rows (each with a retain "
                        "row) per device, the same for every mesh of a device count")
    g.add_argument("--with-data", action="store_true",
                   help="--search also compiles meshes with data > 1 (never less memory "
                        "than the data = 1 mesh of the same fsdp x data width)")
    return parser


def main(argv=None) -> float:
    parser = build_parser()
    args = parser.parse_args(argv)
    policies = [x for x in args.remat.split(",") if x]
    known = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
    if not policies or set(policies) - set(known):
        parser.error(f"--remat: comma list of {', '.join(known)}")
    devices = [int(d) for d in (args.search or args.devices).split(",") if d]
    if not devices or min(devices) < 1 or max(devices) > SIMULATED_DEVICES:
        parser.error(f"--{'search' if args.search else 'devices'}: device counts between 1 and "
                     f"{SIMULATED_DEVICES}, e.g. {'8,64' if args.search else '1,8'}")
    if args.search and (args.unrolled or args.depths):
        parser.error("--search compiles the full depth, scanned: drop --unrolled and --depths")
    if args.rows_per_device < 1:
        parser.error("--rows-per-device must be >= 1")

    import jax

    if len(jax.devices()) < max(devices):
        parser.error(f"{len(jax.devices())} devices; run memory.py as a script (it simulates "
                     f"{SIMULATED_DEVICES} before jax is imported)")
    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__}, {len(jax.devices())} simulated CPU devices; "
          f"XLA CPU compiler's memory_analysis (an estimate of the GPU figure)")
    if args.search:
        print(f"# dtype {args.dtype}, params {args.param_dtype}; {args.optimizer} (moments "
              f"{args.moment_dtype}); objective {args.objective} (chunk {args.chunk_size}); "
              f"{'data x fsdp x tensor' if args.with_data else 'data = 1, fsdp x tensor'}")
        return main_search(args, policies, devices)

    from jaxunlearn.train import mesh as mesh_lib

    full = _common.preset(args.preset)
    depths = [int(d) for d in args.depths.split(",") if d] or [full.num_layers]
    if min(depths) < 1:
        parser.error("--depths: positive layer counts, e.g. 2,4")
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
                config = _common.preset(args.preset, num_layers=d, dtype=args.dtype,
                                        param_dtype=args.param_dtype, remat=policy,
                                        scan_layers=not args.unrolled)
                mesh = mesh_lib.make_mesh(data=1, fsdp=n, devices=jax.devices()[:n])
                r = analyse(args, config, mesh, args.batch)
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
    simulate_cpu_devices()
    main()
