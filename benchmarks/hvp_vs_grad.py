"""Exact Hessian-vector product vs gradient: ``secondorder.hvp`` time / ``jax.grad`` time.

Both differentiate the same scalar, the NPO unlearning objective (NPO on forget rows +
retain token NLL, cached reference log-probs) of the step benchmark's model and batch,
with respect to all parameters; both are jitted and warm. The HVP is forward-over-reverse
(``jax.jvp`` of ``jax.grad``): each bilinear product of the gradient gets two tangent
products (``d(xW) = dx W + x dW``), so counting matrix products alone it costs three
gradients; XLA shares the elementwise work of the primal and tangent passes. Target <= 2.5.
Calls are interleaved (grad, hvp, grad, ...) and the medians compared.

    .venv/bin/python benchmarks/hvp_vs_grad.py                         # step benchmark's shapes
    .venv/bin/python benchmarks/hvp_vs_grad.py --layers 4 --batch 2 --steps 5

Last line: ``ratio hvp/grad <median hvp / median grad>``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_flags(parser)
    parser.add_argument("--objective", choices=("library", "fused", "logits"), default="library",
                        help="library: methods.NPO (what jaxunlearn unlearn runs); fused: the "
                             "same loss written on hidden states; logits: on [B,T,V] logits "
                             "with plain autodiff (as methods.curvature's Gauss-Newton product)")
    _common.add_timing_flags(parser, steps=10, warmup=1)
    return parser


def measure(args) -> dict:
    """Times the jitted gradient and HVP (nothing printed): first calls, interleaved warm
    calls, their median ratio, and ``v.Hv`` for a random ``v`` (``SystemExit`` if not
    finite). float32 matmuls at full precision."""
    import jax

    from jaxunlearn.secondorder import hvp
    from jaxunlearn.train.step import objective_value

    config = _common.model_config(args)
    rng = np.random.default_rng(args.seed)
    forget = _common.synthetic_rows(rng, args.batch, args.seq, args.vocab)
    retain = _common.synthetic_rows(rng, args.batch, args.seq, args.vocab)
    graphdef, params = _common.init_params(config, args.seed)
    with jax.default_matmul_precision("highest"):
        ref = _common.reference_logprobs(graphdef, params, forget)
        batch = jax.device_put(_common.unlearning_batch(forget, retain, ref))
        make = {"library": _common.library_objective, "fused": _common.fused_objective,
                "logits": _common.logits_objective}[args.objective]
        objective = make(graphdef, config, beta=0.1, alpha=1.0)

        def loss(p, b):
            return objective_value(objective, p, b)[0]

        grad = jax.jit(jax.grad(loss))
        hvp_fn = jax.jit(lambda p, v, b: hvp(lambda q: loss(q, b), p, v))
        keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(params))))
        v = jax.tree.map(lambda x: 0.02 * jax.random.normal(next(keys), x.shape, x.dtype), params)

        first = {"grad": _common.timed(lambda: _common.block(grad(params, batch))),
                 "hvp": _common.timed(lambda: _common.block(hvp_fn(params, v, batch)))}
        # Sanity: v.Hv of a random direction is finite (the HVP really ran on these weights).
        vhv = sum(float(np.vdot(np.asarray(a), np.asarray(b)))
                  for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(hvp_fn(params, v, batch))))
        if not np.isfinite(vhv):
            raise SystemExit(f"v.Hv is not finite ({vhv}); the HVP is broken")
        times = _common.interleaved({"grad": lambda: _common.block(grad(params, batch)),
                                     "hvp": lambda: _common.block(hvp_fn(params, v, batch))},
                                    steps=args.steps, warmup=args.warmup)
    return {"config": config, "first_s": first, "times": times, "vhv": vhv,
            "ratio": _common.median(times["hvp"]) / _common.median(times["grad"])}


def main(argv=None) -> float:
    import jax

    parser = build_parser()
    args = parser.parse_args(argv)
    _common.check_timing_flags(parser, args)
    r = measure(args)
    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__} ({jax.devices()[0].platform}); objective {args.objective}; "
          f"L={args.layers} D={args.hidden} F={args.ffn} V={args.vocab}, "
          f"{r['config'].num_params() / 1e6:.1f}M params, {args.batch}+{args.batch} rows x T={args.seq}")
    print(f"# v.Hv = {r['vhv']:.4g} for a random v (|v_i| ~ 0.02)")
    for name in ("grad", "hvp"):
        print(f"{name:5s} {_common.summary(r['times'][name])}, first call {r['first_s'][name]:.1f} s "
              "(trace+compile+run)")
    print(f"ratio hvp/grad {r['ratio']:.2f}")
    return r["ratio"]


if __name__ == "__main__":
    main()
