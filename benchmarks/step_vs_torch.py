"""One NPO unlearning step (+ retain NLL, AdamW): jaxunlearn (jit) vs transformers (PyTorch eager).

Both sides run the same model, weights, batch and update, float32 on the CPU:

* forget rows: NPO on per-sequence answer log-probs against cached reference log-probs
  (given as inputs, as ``jaxunlearn unlearn`` caches them); retain rows: token NLL
  (``loss = npo + alpha * nll``, ``methods.NPO`` with its defaults beta 0.1, alpha 1);
* forward + backward + global-norm clipping (1.0) + AdamW (lr 1e-5, weight decay 0.01).

jaxunlearn is timed twice: ``library`` is the step ``jaxunlearn unlearn method=npo`` runs
(``methods.NPO.objective`` + ``train.step.make_train_step``, padding-free as
``train.padding_free`` makes it: the model on the real tokens only, the LM head on the
answer tokens only, ``models.compact``; its label log-probs come from
``methods.ModelOutput``, i.e. ``jaxunlearn.ops``); ``fused`` writes the same loss by hand
on the padded batch with ``Llama.hidden_states`` and ``jaxunlearn.ops`` (and takes
``--chunk-size``). Neither forms float32 ``[B, T, V]`` logits or their log-softmax.
GFLOP/s are model FLOPs of the padded batch over time (for ``library``, which skips the
padding, an effective rate). PyTorch is
``LlamaForCausalLM`` (SDPA attention, the transformers default) with ``log_softmax`` +
``gather``, ``clip_grad_norm_`` and ``torch.optim.AdamW``, on as many threads as XLA uses.

Steps are interleaved (library, fused, torch, rotating the order every round) so that
load from other processes hits all sides alike; medians of ``--steps`` rounds after
``--warmup`` rounds. The first jax step's time (trace + compile + run) is reported too.
Before timing, the step-0 losses of all sides must agree (same computation).

    .venv/bin/python benchmarks/step_vs_torch.py                 # the default config
    .venv/bin/python benchmarks/step_vs_torch.py --layers 2 --steps 3 --warmup 1   # quick
    .venv/bin/python benchmarks/step_vs_torch.py --model smollm2-135m   # SmolLM2-135M's shapes

Last line: ``ratio jax/torch <median jax step / median torch step>`` for ``--headline``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402  (benchmarks/_common.py)

import numpy as np  # noqa: E402


def _jax_side(args, config, forget, retain):
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.train.step import (OptimizerConfig, init_train_state, make_optimizer,
                                       make_train_step)

    model = Llama(config, rngs=nnx.Rngs(args.seed))
    graphdef, params = nnx.split(model, nnx.Param)
    ref = _common.reference_logprobs(graphdef, params, forget)
    batch = _common.unlearning_batch(forget, retain, ref)
    batch = jax.device_put(batch)
    opt = make_optimizer(OptimizerConfig(learning_rate=args.lr, schedule="constant",
                                         weight_decay=0.01, clip_norm=1.0), total_steps=1000)
    objectives = {
        "library": _common.library_objective(graphdef, config, beta=args.beta, alpha=args.alpha),
        "fused": _common.fused_objective(graphdef, config, beta=args.beta, alpha=args.alpha,
                                         chunk_size=args.chunk_size),
    }
    sides = {}
    for name in args.jax:
        # Each side owns a copy of the weights: the step donates its state.
        state = init_train_state(jax.tree.map(lambda x: x.copy(), params), opt, jax.random.key(0))
        sides[name] = [make_train_step(objectives[name], opt), state]
    return model, ref, batch, sides


def _torch_side(args, model, config, forget, retain, ref):
    import torch
    import transformers

    from jaxunlearn.models import save_pretrained

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, config, d)
        tm = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    tm.train()
    opt = torch.optim.AdamW(tm.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.01)
    t = {k: {n: torch.tensor(np.asarray(v)) for n, v in rows.items()}
         for k, rows in (("forget", forget), ("retain", retain))}
    ref_t = torch.tensor(np.asarray(ref, np.float32))
    beta, alpha = args.beta, args.alpha

    def token_logp(rows):
        attn = rows["attention_mask"].long()
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits = tm(input_ids=rows["input_ids"].long(), attention_mask=attn,
                    position_ids=pos).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        return logp.gather(-1, rows["labels"].long()[..., None])[..., 0] * rows["loss_mask"]

    def step():
        seq = token_logp(t["forget"]).sum(-1)
        npo = -(2.0 / beta) * torch.nn.functional.logsigmoid(-beta * (seq - ref_t)).mean()
        nll = -token_logp(t["retain"]).sum() / t["retain"]["loss_mask"].sum().clamp(min=1.0)
        loss = npo + alpha * nll
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tm.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return step


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_flags(parser)
    _common.add_timing_flags(parser, steps=10, warmup=2)
    parser.add_argument("--threads", type=int, default=_common.cpu_threads(),
                        help="torch threads; XLA's CPU client uses one per core")
    parser.add_argument("--jax", default="library,fused",
                        help="jax variants to time: library, fused (comma separated)")
    parser.add_argument("--headline", default="library",
                        help="variant of the last line (library: what jaxunlearn unlearn runs)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="fused variant: tokens per LM-head chunk (default: whole batch)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=1e-5)
    args = _common.parse_args(parser, argv)
    args.jax = [j for j in args.jax.split(",") if j]
    for name in args.jax + [args.headline]:
        if name not in ("library", "fused"):
            parser.error(f"--jax/--headline: unknown variant {name!r} (library, fused)")
    if args.headline not in args.jax:
        parser.error(f"--headline {args.headline} is not among --jax {args.jax}")
    _common.check_timing_flags(parser, args)

    import jax

    jax.config.update("jax_default_matmul_precision", "highest")  # float32 matmuls, as torch
    config = _common.model_config(args)
    rng = np.random.default_rng(args.seed)
    forget = _common.synthetic_rows(rng, args.batch, args.seq, args.vocab)
    retain = _common.synthetic_rows(rng, args.batch, args.seq, args.vocab)
    model, ref, batch, sides = _jax_side(args, config, forget, retain)
    torch_step = _torch_side(args, model, config, forget, retain, ref)

    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__} ({jax.devices()[0].platform}), torch threads {args.threads}")
    print(f"# model: L={args.layers} D={args.hidden} F={args.ffn} heads {args.heads}/{args.kv_heads} "
          f"V={args.vocab} tied={args.tie}; {config.num_params() / 1e6:.1f}M params; "
          f"batch {args.batch} forget + {args.batch} retain rows x T={args.seq}")

    # Step 0: compile (jax) and check that every side computes the same loss.
    first, losses0 = {}, {}
    for name, side in sides.items():
        out = {}
        first[name] = _common.timed(lambda: out.update(m=_common.block(_run(side, batch))))
        losses0[name] = float(out["m"]["loss"])
    losses0["torch"] = torch_step()
    for name, value in losses0.items():
        if not np.isclose(value, losses0["torch"], rtol=2e-4, atol=2e-4):
            raise SystemExit(f"step-0 loss mismatch: {name} {value:.6f} vs torch "
                             f"{losses0['torch']:.6f}; the sides do not compute the same step")
    print("# step-0 loss: " + ", ".join(f"{k} {v:.5f}" for k, v in losses0.items()))

    names = list(sides) + ["torch"]
    times = {n: [] for n in names}
    for r in range(args.warmup + args.steps):
        order = names[r % len(names):] + names[:r % len(names)]
        this_round = {}
        for n in order:
            fn = torch_step if n == "torch" else (lambda s=sides[n]: _common.block(_run(s, batch)))
            this_round[n] = _common.timed(fn)
            if r >= args.warmup:
                times[n].append(this_round[n])
        # Progress on stderr: the timed rounds of the default config take minutes.
        print(f"# round {r + 1}/{args.warmup + args.steps}"
              f"{' (warm-up)' if r < args.warmup else ''}: "
              + ", ".join(f"{n} {this_round[n]:.2f}s" for n in names), file=sys.stderr, flush=True)

    flops = _common.train_flops(config, 2 * args.batch, args.seq)
    torch_med = _common.median(times["torch"])
    for n in names:
        med = _common.median(times[n])
        extra = f", first step {first[n]:.1f} s (trace+compile+run)" if n in first else ""
        print(f"{n:8s} {_common.summary(times[n])}, {flops / med / 1e9:.1f} GFLOP/s{extra}")
    for n in sides:
        print(f"ratio jax-{n}/torch {_common.median(times[n]) / torch_med:.3f}")
    ratio = _common.median(times[args.headline]) / torch_med
    print(f"ratio jax/torch {ratio:.2f}")
    return ratio


def _run(side, batch):
    step, state = side
    state, metrics = step(state, batch)
    side[1] = state
    return metrics


if __name__ == "__main__":
    main()
