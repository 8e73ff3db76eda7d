"""Training-loss gradient: ``train.nll.nll_objective`` (fused LM head) over NLL through logits.

``jaxunlearn train`` fits the target and retain models with ``nll_objective``, which reads
the label log-probs from the fused LM head (``jaxunlearn.ops``): no ``[B, T, V]`` logits
or log-softmax in memory, forward or backward. The baseline is the same NLL written on
``Llama.__call__``'s logits with plain autodiff. Both are ``jax.value_and_grad`` of the
same parameters and batch, jitted and warm, called interleaved; the medians are compared.
Default shapes: the demo's ``small`` model (2 layers, width 128, vocab 2048), 16 rows
(the demo's train batch) of 128 tokens.

    .venv/bin/python benchmarks/train_nll.py
    .venv/bin/python benchmarks/train_nll.py --vocab 49152 --hidden 576 --layers 4

Last line: ``ratio fused/logits <median fused / median logits>``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402

import numpy as np  # noqa: E402


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_model_flags(parser, layers=2, hidden=128, ffn=384, heads=4, kv_heads=2,
                            vocab=2048, seq=128, batch=16)
    parser.set_defaults(tie=True)  # the demo model ties its LM head to the embedding
    _common.add_timing_flags(parser, steps=20, warmup=2)
    args = parser.parse_args(argv)
    _common.check_timing_flags(parser, args)

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxunlearn.models import Llama
    from jaxunlearn.train.nll import nll_objective
    from jaxunlearn.train.step import objective_value

    jax.config.update("jax_default_matmul_precision", "highest")
    config = _common.model_config(args)
    rows = _common.synthetic_rows(np.random.default_rng(args.seed), args.batch, args.seq,
                                  args.vocab)
    batch = jax.device_put(_common.as_batch(rows))
    graphdef, params = nnx.split(Llama(config, rngs=nnx.Rngs(args.seed)), nnx.Param)
    fused = nll_objective(graphdef)

    def logits_loss(p, b):
        logits = nnx.merge(graphdef, p)(b.input_ids, b.attention_mask).astype(jnp.float32)
        tok = jnp.take_along_axis(jax.nn.log_softmax(logits), b.labels[..., None], -1)[..., 0]
        return -jnp.sum(tok * b.loss_mask) / jnp.maximum(jnp.sum(b.loss_mask), 1.0)

    fns = {"fused": jax.jit(jax.value_and_grad(lambda p, b: objective_value(fused, p, b)[0])),
           "logits": jax.jit(jax.value_and_grad(logits_loss))}

    print(f"# {_common.machine_line()}")
    print(f"# jax {jax.__version__} ({jax.devices()[0].platform}); L={args.layers} "
          f"D={args.hidden} F={args.ffn} V={args.vocab}, {config.num_params() / 1e6:.2f}M params, "
          f"{args.batch} rows x T={args.seq}")
    first = {k: _common.timed(lambda f=f: _common.block(f(params, batch))) for k, f in fns.items()}
    values = {k: float(f(params, batch)[0]) for k, f in fns.items()}
    if not np.isclose(values["fused"], values["logits"], rtol=1e-5):
        raise SystemExit(f"the two losses differ: {values}")
    print(f"# loss {values['fused']:.6f} (fused) = {values['logits']:.6f} (logits)")

    times = _common.interleaved({k: lambda f=f: _common.block(f(params, batch))
                                 for k, f in fns.items()}, steps=args.steps, warmup=args.warmup)
    for name in fns:
        print(f"{name:6s} {_common.summary(times[name])}, first call {first[name]:.1f} s "
              "(trace+compile+run)")
    ratio = _common.median(times["fused"]) / _common.median(times["logits"])
    print(f"ratio fused/logits {ratio:.2f}")
    return ratio


if __name__ == "__main__":
    main()
