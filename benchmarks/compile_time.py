"""Compile time of the NPO unlearning step against depth: scanned layers vs unrolled ones.

The step is what ``jaxunlearn unlearn method=npo`` jits (``methods.NPO`` inside
``train.step.make_train_step``: forward, backward, clipping, AdamW, padding-free batches)
at the demo model's width (D 128, F 384, 4/2 heads, V 2048) and depths ``--depths``
(default 4 and 32). Each depth is traced, lowered and compiled from scratch (a new jitted
function; the persistent compilation cache is off) ``--repeats`` times; the median of
trace + lower + compile is reported. One untimed compilation first (``--warmup``) takes
the process's one-time costs (the compiler's own start-up), which would otherwise fall on
the first depth measured. With scanned layers (``LlamaConfig.scan_layers``,
the default) the program holds one block whatever the depth, so the ratio should stay
near 1 (target <= 1.5); the unrolled layout is shown beside it for comparison.

    .venv/bin/python benchmarks/compile_time.py
    .venv/bin/python benchmarks/compile_time.py --depths 4,32 --layouts scanned --repeats 3

Last line: ``ratio compile <last>/<first> layers <x>`` for the scanned layout.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402

LAYOUTS = {"scanned": True, "unrolled": False}


def compile_seconds(args, layers: int, scan: bool) -> dict[str, float]:
    """Seconds to trace + lower and to compile the step at ``layers`` layers."""
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.train.step import (OptimizerConfig, init_train_state, make_optimizer,
                                       make_train_step)

    args.layers = layers
    config = _common.model_config(args, scan_layers=scan, remat=args.remat)
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0))),
                                 nnx.Param)
    rng = np.random.default_rng(args.seed)
    forget = _common.synthetic_rows(rng, args.batch, args.seq, args.vocab)
    retain = _common.synthetic_rows(rng, args.batch, args.seq, args.vocab)
    batch = _common.unlearning_batch(forget, retain, np.zeros(args.batch, np.float32))
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5, clip_norm=1.0), total_steps=100)
    state = jax.eval_shape(lambda p: init_train_state(p, opt, jax.random.key(0)), params)
    loss_fn = _common.library_objective(graphdef, config, beta=0.1, alpha=1.0)
    step = make_train_step(loss_fn, opt)  # a new jitted function: nothing cached in memory
    t0 = time.perf_counter()
    lowered = step.lower(state, batch)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower": t1 - t0, "compile": t2 - t1, "total": t2 - t0}


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_flags(parser, layers=4, hidden=128, ffn=384, heads=4, kv_heads=2,
                            vocab=2048, seq=128, batch=16)
    parser.set_defaults(tie=True)
    parser.add_argument("--depths", default="4,32",
                        help="layer counts to compile (--layers is ignored); the ratio is "
                             "the last over the first")
    parser.add_argument("--layouts", default="scanned,unrolled",
                        help="comma list of scanned, unrolled (the headline is scanned's)")
    parser.add_argument("--remat", default="none",
                        choices=("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"))
    parser.add_argument("--repeats", type=int, default=1, help="compilations per depth (median)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed compilations (first depth, scanned) before measuring")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    depths = [int(d) for d in args.depths.split(",") if d]
    layouts = [x for x in args.layouts.split(",") if x]
    if len(depths) < 2 or min(depths) < 1:
        parser.error("--depths: two or more positive layer counts, e.g. 4,32")
    if not layouts or set(layouts) - set(LAYOUTS) or "scanned" not in layouts:
        parser.error("--layouts: scanned, optionally with unrolled")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")

    import jax

    # Every compilation must really compile: no persistent cache from earlier runs.
    jax.config.update("jax_enable_compilation_cache", False)
    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__} ({jax.devices()[0].platform}); NPO step (methods.NPO + "
          f"AdamW, padding-free); D={args.hidden} F={args.ffn} heads {args.heads}/"
          f"{args.kv_heads} V={args.vocab}; {args.batch}+{args.batch} rows x T={args.seq}; "
          f"remat {args.remat}; median of {args.repeats}")
    for _ in range(args.warmup):
        compile_seconds(args, depths[0], True)
    print(f"{'layout':>9} {'layers':>6} {'trace+lower':>12} {'compile':>9} {'total':>9}")
    totals: dict[str, dict[int, float]] = {}
    for layout in layouts:
        for d in depths:
            runs = [compile_seconds(args, d, LAYOUTS[layout]) for _ in range(args.repeats)]
            med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
            totals.setdefault(layout, {})[d] = med["total"]
            print(f"{layout:>9} {d:6d} {med['lower']:11.2f}s {med['compile']:8.2f}s "
                  f"{med['total']:8.2f}s", flush=True)
    first, last = depths[0], depths[-1]
    for layout in layouts:
        print(f"# {layout}: {last}/{first} layers {totals[layout][last] / totals[layout][first]:.2f}")
    ratio = totals["scanned"][last] / totals["scanned"][first]
    print(f"ratio compile {last}/{first} layers {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
