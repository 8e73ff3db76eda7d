"""One GPU check, one block of figures: bf16 forward parity, the NPO step's throughput and
MFU at Llama-3.2-1B shapes, the measured peak memory of a Llama-3.1-8B NPO step (full
fine-tuning and LoRA), and the
exact HVP / gradient time ratio.

Five sections, each reusing a benchmark's own code (nothing printed until the end):

  parity  the same float32 weights run forward in bf16 compute on the accelerator and in
          float32 on the host CPU (Llama-3.2-1B shapes, random weights, 2 x 256 tokens):
          ``max_abs_err = max |l_bf16 - l_f32|`` over all logits ``[B, T, V]``,
          ``max_rel_err = max_abs_err / max |l_f32|`` (relative to the logits' scale, not
          per element: per-element ratios blow up near zero), and the fraction of
          positions whose argmax agrees (random weights have near-tied logits, so this is
          a floor, not what a trained model gives).
  step    ``mfu.measure``: the NPO + retain-NLL step (AdamW, clipping) at Llama-3.2-1B
          shapes, bf16 compute, cuDNN attention, 4 + 4 rows x 1024 tokens on one device;
          tokens/s and MFU (``mfu.py``'s FLOP count and peak table).
  memory  ``memory.step_program``: the step ``memory.py`` analyses for Llama-3.1-8B (bf16
          weights, AdamW with bf16 moments, full fine-tuning, remat ``full``, fused
          chunked LM head, 8 + 8 rows x 512 tokens) is built with random weights and run
          twice on one device; ``peak_gib`` is ``jax.devices()[0].memory_stats()
          ['peak_bytes_in_use']`` after that (the section runs first, so nothing else has
          been allocated), and ``compiled_peak_gib`` is the compiler's
          ``memory_analysis`` of the same program, for comparison.
  memory_lora  the same step training rank-16 LoRA adapters (alpha 32, every projection)
          with the bf16 base frozen (``model.lora``), measured the same way in a process
          of its own (a device's peak cannot be reset).
  hvp     ``hvp_vs_grad.measure``: ``secondorder.hvp`` vs ``jax.grad`` of the library's NPO
          objective at the step benchmark's shapes (70.5M params, 8 + 8 rows x 256,
          float32), jitted, warm, interleaved medians.

Reduced mode (``--reduced``, or automatically when ``jax.devices()[0]`` is not a GPU):
the same code at tiny shapes, the 8B model replaced by the ``tiny`` preset, and every
line says so. A CPU has no ``memory_stats``: there ``peak_gib`` is the compiler's figure
and ``peak_source`` says so. The test suite runs this mode (``tests/test_benchmarks.py``).

    benchmarks/gpu_check.sh                       # on a GPU host: the full check (< 8 min)
    .venv/bin/python benchmarks/gpu_check.py --reduced --peak-tflops 1

Output: one block from ``==== jaxunlearn gpu_check`` to ``==== end``, ``key: value`` lines
(numbers first, comments after ``#``); the last line is ``==== end (<mode>, <s> s) ====``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402
import hvp_vs_grad  # noqa: E402
import memory  # noqa: E402
import mfu  # noqa: E402

import numpy as np  # noqa: E402

GIB = 1024 ** 3


def parity(*, reduced: bool, attention: str) -> dict:
    """bf16 forward on ``jax.devices()[0]`` vs float32 forward on the host CPU, same weights."""
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama

    name, (rows, seq) = ("tiny", (2, 32)) if reduced else ("llama-3.2-1b", (2, 256))
    f32 = _common.preset(name, dtype="float32", param_dtype="float32", attention_impl="xla")
    bf16 = f32.replace(dtype="bfloat16", attention_impl=attention)
    cpu, device = jax.devices("cpu")[0], jax.devices()[0]
    with jax.default_device(cpu):
        graph_f32, params = _common.init_params(f32)
    graph_bf16, _ = nnx.split(nnx.eval_shape(lambda: Llama(bf16, rngs=nnx.Rngs(0))), nnx.Param)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, f32.vocab_size, size=(rows, seq)).astype(np.int32)

    def logits(graphdef):
        return jax.jit(lambda p, x: nnx.merge(graphdef, p)(x).astype(np.float32))

    with jax.default_matmul_precision("highest"):
        want = np.asarray(logits(graph_f32)(params, jax.device_put(ids, cpu)), np.float64)
    got = np.asarray(logits(graph_bf16)(jax.device_put(params, device), jax.device_put(ids, device)),
                     np.float64)
    err = np.abs(got - want)
    return {"shapes": f"{name} random weights, {rows} x {seq} tokens, bf16 compute on "
                      f"{device.platform} (attention {attention}) vs float32 on cpu",
            "max_abs_err": err.max(), "max_rel_err": err.max() / np.abs(want).max(),
            "logit_scale": np.abs(want).max(),
            "argmax_agreement": float(np.mean(got.argmax(-1) == want.argmax(-1)))}


def step_throughput(*, reduced: bool, peak_tflops: float | None) -> dict:
    """``mfu.measure`` on one device: Llama-3.2-1B shapes, or ``--tiny`` ones reduced."""
    argv = ["--data", "1", "--fsdp", "1"] + (["--peak-tflops", str(peak_tflops)] if peak_tflops else [])
    argv += ["--tiny", "--seq", "32", "--steps", "2", "--warmup", "0"] if reduced else ["--steps", "8"]
    args = mfu.build_parser().parse_args(argv)
    r = mfu.measure(args)
    c = r["config"]
    return {"shapes": f"{'tiny' if reduced else 'llama-3.2-1b'} ({c.num_params() / 1e6:.1f}M params), "
                      f"{args.batch} + {args.batch} rows x {args.seq} tokens, bf16 compute, "
                      f"params {c.param_dtype}, attention {args.attention}, remat {args.remat}",
            "tokens_per_s": r["tokens_per_s"], "median_step_s": _common.median(r["times"]),
            "first_step_s": r["first_s"],
            "mfu": (r["mfu"] if r["mfu"] is not None else
                    f"nan (no bf16 peak known for {r['device'].device_kind!r}; pass --peak-tflops)"),
            "peak_tflops": r["peak_tflops"] or "n/a"}


LORA_RANK = 16  # the LoRA memory section: rank-16 adapters (alpha 32) on every projection


def _lora_params(config, rank: int, adapter_shardings, base_shardings):
    """``(adapters, base)`` of a randomly initialised ``Llama(config)`` with rank-``rank``
    adapters (``models.lora``), split as ``memory.step_program`` splits them, made by one
    jitted program placed by the given shardings."""
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.models.lora import LoraConfig, add_adapters

    def make():
        model = add_adapters(Llama(config, rngs=nnx.Rngs(0)),
                             LoraConfig(rank=rank, alpha=2.0 * rank))
        return nnx.split_state(nnx.split(model, nnx.Param)[1], nnx.LoRAParam, ...)

    return jax.jit(make, out_shardings=(adapter_shardings, base_shardings))()


def measured_memory(*, reduced: bool, lora_rank: int = 0) -> dict:
    """Builds ``memory.step_program``'s 8B step (``tiny`` reduced) with random weights on one
    device, runs it twice and reads the device's peak; the compiler's figure beside it.
    ``lora_rank``: rank-r adapters trained, the bf16 base frozen (``model.lora``)."""
    import jax
    from flax import nnx

    from jaxunlearn.train import mesh as mesh_lib
    from jaxunlearn.train.step import init_train_state

    name, rows, seq, chunk = ("tiny", 2, 32, 16) if reduced else ("llama-3.1-8b", 8, 512, 2048)
    config = _common.preset(name, dtype="bfloat16", param_dtype="bfloat16", remat="full")
    mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    program = memory.step_program(config, mesh, rows=rows, seq=seq, chunk_size=chunk,
                                  lora_rank=lora_rank)
    shardings = jax.tree.map(lambda x: x.sharding, program.state.params)
    frozen = ()
    if lora_rank:
        params, base = _lora_params(config, lora_rank, shardings,
                                    jax.tree.map(lambda x: x.sharding, program.frozen))
        frozen, whole = (base,), nnx.merge_state(base, params)
    else:
        _, params = _common.init_params(config, shardings=shardings)
        whole = params
    rng = np.random.default_rng(0)
    forget = _common.synthetic_rows(rng, rows, seq, config.vocab_size)
    retain = _common.synthetic_rows(rng, rows, seq, config.vocab_size)
    # NPO's cached reference: the random target's own log-probs (fused head, no [B,T,V] logits).
    ref = _common.fused_reference_logprobs(program.graphdef, whole, forget, chunk_size=chunk)
    state = init_train_state(params, program.optimizer, jax.random.key(0), mesh)
    del params, whole
    batch = mesh_lib.shard_batch(_common.unlearning_batch(forget, retain, ref, padding_free=False),
                                 mesh)
    how = (f"LoRA rank {lora_rank} (alpha {2 * lora_rank}) on every projection, bf16 base "
           "frozen" if lora_rank else "full fine-tuning")
    out = {"shapes": f"{name} ({config.num_params() / 1e9:.3g}B params), {how}, bf16 "
                     f"weights, AdamW with bf16 moments, remat full, fused LM head (chunk "
                     f"{chunk}), {rows} + {rows} rows x {seq} tokens, 1 device"}
    device = jax.devices()[0]
    before = (device.memory_stats() or {}).get("peak_bytes_in_use")
    try:
        compiled = program.step.lower(state, batch, *frozen).compile()
        out["compiled_peak_gib"] = memory.compiled_memory(compiled)["peak"] / GIB
        for _ in range(2):
            state, metrics = compiled(state, batch, *frozen)
        out["loss"] = float(metrics["loss"])
    except Exception as e:  # noqa: BLE001 -- an out-of-memory step is a result, not a crash
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        out.update(loss=float("nan"), note=f"out of memory: {str(e).splitlines()[0][:200]}")
    stats = device.memory_stats()
    if stats is None:
        out.update(peak_gib=out.get("compiled_peak_gib", float("nan")),
                   peak_source=f"compiled memory_analysis ({device.platform} has no memory_stats)")
    else:
        # The peak since the process started: the step's, unless initialisation went higher.
        out.update(peak_gib=stats["peak_bytes_in_use"] / GIB,
                   peak_source="device memory_stats peak_bytes_in_use, measured",
                   peak_before_step_gib=before / GIB,
                   step_raised_peak=stats["peak_bytes_in_use"] > before,
                   device_memory_gib=stats.get("bytes_limit", float("nan")) / GIB)
    del state, batch, frozen
    gc.collect()
    return out


def measured_memory_lora(*, reduced: bool) -> dict:
    """The LoRA memory section in a process of its own: a device's peak cannot be reset,
    and this one's must not include the full fine-tuning step's."""
    import json
    import subprocess

    argv = [sys.executable, os.path.abspath(__file__), "--lora-memory-only"]
    proc = subprocess.run(argv + (["--reduced"] if reduced else []), capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"the LoRA memory section failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def hvp_ratio(*, reduced: bool) -> dict:
    """``hvp_vs_grad.measure`` at its own default shapes (a toy model reduced)."""
    toy = ["--layers", "1", "--hidden", "32", "--ffn", "64", "--heads", "4", "--kv-heads", "2",
           "--vocab", "97", "--seq", "16", "--batch", "2"]
    argv = toy + ["--steps", "2", "--warmup", "0"] if reduced else ["--steps", "5", "--warmup", "1"]
    args = hvp_vs_grad.build_parser().parse_args(argv)
    r = hvp_vs_grad.measure(args)
    return {"shapes": f"L={args.layers} D={args.hidden} V={args.vocab} "
                      f"({r['config'].num_params() / 1e6:.1f}M params), {args.batch} + "
                      f"{args.batch} rows x {args.seq} tokens, float32, objective {args.objective}",
            "grad_s": _common.median(r["times"]["grad"]), "hvp_s": _common.median(r["times"]["hvp"]),
            "ratio": r["ratio"]}


def _line(key: str, value) -> str:
    if isinstance(value, float):
        value = f"{value:.4g}"
    return f"{key}: {value}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reduced", action="store_true",
                        help="tiny shapes (automatic when no GPU is present)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="peak bf16 TFLOP/s per device for the MFU (default: mfu.py's table)")
    parser.add_argument("--lora-memory-only", action="store_true",
                        help=argparse.SUPPRESS)  # the memory_lora section's own process
    args = parser.parse_args(argv)

    import jax

    t0 = time.perf_counter()
    device = jax.devices()[0]
    reduced = args.reduced or device.platform != "gpu"
    if args.lora_memory_only:
        import json

        out = measured_memory(reduced=reduced, lora_rank=LORA_RANK)
        print(json.dumps({k: (v if isinstance(v, (int, float, str)) else str(v))
                          for k, v in out.items()}), flush=True)
        return {"memory_lora": out}
    mode = ("full" if not reduced else
            "REDUCED: tiny shapes" + ("" if device.platform == "gpu" else " (no GPU)") +
            "; the 8B memory run is replaced by the tiny preset")
    attention = "cudnn" if device.platform == "gpu" else "xla"
    sections = {}
    for name, run in (("memory", lambda: measured_memory(reduced=reduced)),  # first: clean peak
                      ("memory_lora", lambda: measured_memory_lora(reduced=reduced)),
                      ("parity", lambda: parity(reduced=reduced, attention=attention)),
                      ("step", lambda: step_throughput(reduced=reduced, peak_tflops=args.peak_tflops)),
                      ("hvp", lambda: hvp_ratio(reduced=reduced))):
        s0 = time.perf_counter()
        sections[name] = run()
        sections[name]["seconds"] = time.perf_counter() - s0
    total = time.perf_counter() - t0

    lines = [f"==== jaxunlearn gpu_check ({'full' if not reduced else 'reduced'}) ====",
             _line("mode", mode), _line("machine", _common.machine_line()),
             _line("jax", f"{jax.__version__}; device 0: {device.device_kind} ({device.platform}), "
                          f"{len(jax.devices())} device(s)")]
    for name in ("parity", "step", "memory", "memory_lora", "hvp"):
        lines += [_line(f"{name}.{k}", v) for k, v in sections[name].items()]
    lines.append(f"==== end ({'full' if not reduced else 'reduced'}, {total:.0f} s) ====")
    print("\n".join(lines), flush=True)
    return sections


if __name__ == "__main__":
    main()
