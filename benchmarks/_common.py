"""Shared pieces of the benchmark scripts: model shapes, synthetic unlearning batches,
the NPO objectives, FLOP counts and timing statistics.

Nothing here prints; each script reports its own figures and ends with its headline.
Axes: B batch (forget rows; each paired with one retain row), T positions, D width,
F ffn width, L layers, V vocabulary.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from typing import Any, Callable

import numpy as np


def cpu_threads() -> int:
    """Cores this process may run on (what XLA's CPU client sizes its thread pool by)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def machine_line() -> str:
    """``date | host CPU | cores`` for RESULTS.md."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} | {cpu} | "
            f"{cpu_threads()} cores | load average {load:.1f} at start")


# ------------------------------------------------------------------------------ model and data


def add_model_flags(parser, *, layers=12, hidden=512, ffn=1536, heads=8, kv_heads=4,
                    vocab=32000, seq=256, batch=8) -> None:
    g = parser.add_argument_group("model and batch")
    g.add_argument("--layers", type=int, default=layers)
    g.add_argument("--hidden", type=int, default=hidden, help="model width D")
    g.add_argument("--ffn", type=int, default=ffn, help="MLP width F (Llama: 8/3 D rounded up to 256)")
    g.add_argument("--heads", type=int, default=heads)
    g.add_argument("--kv-heads", type=int, default=kv_heads)
    g.add_argument("--vocab", type=int, default=vocab)
    g.add_argument("--tie", action="store_true", help="tie the LM head to the embedding")
    g.add_argument("--seq", type=int, default=seq, help="padded sequence length T")
    g.add_argument("--batch", type=int, default=batch,
                   help="forget rows per step; each is paired with one retain row, as "
                        "train.batch_size in `jaxunlearn unlearn`")
    g.add_argument("--model", default=None, metavar="PRESET",
                   help="a model preset's real shapes (e.g. smollm2-135m: L 30, D 576, F 1536, "
                        "heads 9/3, V 49152, tied), random weights; --layers etc. given "
                        "explicitly still win")


def parse_args(parser, argv=None):
    """``parser.parse_args(argv)`` where ``--model PRESET`` first sets the shape flags'
    defaults to the preset's (so an explicit ``--layers`` etc. still wins)."""
    known, _ = parser.parse_known_args(argv)
    if getattr(known, "model", None):
        try:
            c = preset(known.model)
        except Exception as e:  # unknown preset: the library's one-line error
            parser.error(f"--model: {e}")
        parser.set_defaults(layers=c.num_layers, hidden=c.hidden_size, ffn=c.intermediate_size,
                            heads=c.num_heads, kv_heads=c.num_kv_heads, vocab=c.vocab_size,
                            tie=c.tie_word_embeddings)
    return parser.parse_args(argv)


def model_config(args, **overrides):
    from jaxunlearn.models import LlamaConfig

    if getattr(args, "model", None):  # the preset's norms, RoPE and ids; the args' shapes
        base = preset(args.model)
        return base.replace(vocab_size=args.vocab, hidden_size=args.hidden,
                            intermediate_size=args.ffn, num_layers=args.layers,
                            num_heads=args.heads, num_kv_heads=args.kv_heads,
                            max_position_embeddings=max(args.seq, 2048),
                            tie_word_embeddings=args.tie, **overrides)
    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                       num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                       max_position_embeddings=max(args.seq, 2048), tie_word_embeddings=args.tie,
                       **overrides)


def llama_31_70b():
    """Llama-3.1-70B's shapes (its Hugging Face config: 80 layers, D 8192, F 28672, GQA 64/8,
    V 128256, untied head, Llama-3.1 RoPE scaling): Llama-3.1-8B's config at 70B's width
    and depth. Benchmarks build it abstractly (no weights); the library has no 70B preset."""
    from jaxunlearn.models.presets import get_preset

    return get_preset("llama-3.1-8b").replace(hidden_size=8192, intermediate_size=28672,
                                              num_layers=80, num_heads=64)


BENCHMARK_PRESETS = {"llama-3.1-70b": llama_31_70b}


def preset(name: str, **overrides):
    """``models.presets.get_preset(name, **overrides)``, plus the shapes only benchmarks use
    (``BENCHMARK_PRESETS``)."""
    from jaxunlearn.models.presets import get_preset

    if name in BENCHMARK_PRESETS:
        config = BENCHMARK_PRESETS[name]()
        return config.replace(**overrides) if overrides else config
    return get_preset(name, **overrides)


def init_params(config, seed: int = 0, *, shardings=None):
    """``(graphdef, params)`` of a randomly initialised ``Llama(config)``, the weights made by
    one jitted program (``out_shardings=shardings`` places them): one compilation instead
    of one per eager initialiser op, and no host copy of a big model."""
    import jax
    from flax import nnx

    from jaxunlearn.models import Llama

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(seed))), nnx.Param)
    params = jax.jit(lambda: nnx.split(Llama(config, rngs=nnx.Rngs(seed)), nnx.Param)[1],
                     out_shardings=shardings)()
    return graphdef, params


def synthetic_rows(rng: np.random.Generator, rows: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    """Shifted QA-like rows ``[rows, seq]``: a prompt (loss 0), an answer (loss 1), right padding.

    Prompt lengths are ``seq/8 .. seq/4``, total lengths ``seq/2 .. seq``: the padding and
    answer-only masks a real unlearning batch has.
    """
    ids = rng.integers(3, vocab, size=(rows, seq + 1)).astype(np.int32)
    lengths = rng.integers(seq // 2, seq + 1, size=rows)
    prompts = rng.integers(max(seq // 8, 1), max(seq // 4, 2), size=rows)
    pos = np.arange(seq)[None, :]
    attention = (pos < lengths[:, None]).astype(np.int32)
    loss_mask = ((pos >= prompts[:, None] - 1) & (pos < lengths[:, None] - 1)).astype(np.float32)
    return {"input_ids": np.where(attention > 0, ids[:, :-1], 0).astype(np.int32),
            "labels": np.where(loss_mask > 0, ids[:, 1:], 0).astype(np.int32),
            "loss_mask": loss_mask, "attention_mask": attention}


def as_batch(rows: dict[str, np.ndarray]):
    from jaxunlearn.data.batch import Batch

    return Batch(input_ids=rows["input_ids"], labels=rows["labels"],
                 loss_mask=rows["loss_mask"], attention_mask=rows["attention_mask"])


# ------------------------------------------------------------------------------ objectives


def library_objective(graphdef, config, *, beta: float, alpha: float):
    """The ``train.step.Objective`` of ``jaxunlearn unlearn method=npo`` (methods.NPO)."""
    from jaxunlearn import methods

    return methods.get_method({"name": "npo", "beta": beta, "alpha": alpha}).objective(
        graphdef, config)


def logits_objective(graphdef, config, *, beta: float, alpha: float):
    """The same NPO + alpha * retain-NLL objective on the model's ``[B, T, V]`` logits with
    ``losses`` (log-softmax + gather, plain autodiff): what ``methods`` did before
    ``models.outputs.ModelOutput``."""
    from flax import nnx

    from jaxunlearn import losses

    def parts(params, batch):
        model = nnx.merge(graphdef, params)
        f, r = batch["forget"]["answer"], batch["retain"]
        logp = losses.sequence_logprob(model(f.input_ids, f.attention_mask), f.labels, f.loss_mask)
        token_lp = losses.token_logprobs(model(r.input_ids, r.attention_mask), r.labels)
        return logp, -(token_lp * r.loss_mask).sum()

    return _npo_plus_retain(parts, beta=beta, alpha=alpha)


def fused_objective(graphdef, config, *, beta: float, alpha: float,
                    chunk_size: int | None = None):
    """The same NPO + alpha * retain-NLL objective with ``jaxunlearn.ops`` on the hidden states.

    No ``[B, T, V]`` logits or log-softmax are formed: the label log-probs come from the
    fused LM-head rule. Value and gradient equal :func:`library_objective`'s.
    """
    from flax import nnx

    from jaxunlearn import ops

    def parts(params, batch):
        model = nnx.merge(graphdef, params)
        head = model.output_head()
        f, r = batch["forget"]["answer"], batch["retain"]
        h_f = model.hidden_states(f.input_ids, f.attention_mask)
        logp = ops.sequence_logprob_from_hidden(h_f, head, f.labels, f.loss_mask,
                                                chunk_size=chunk_size)
        h_r = model.hidden_states(r.input_ids, r.attention_mask)
        token_lp = ops.token_logprobs_from_hidden(h_r, head, r.labels, mask=r.loss_mask,
                                                  chunk_size=chunk_size)
        return logp, -token_lp.sum()

    return _npo_plus_retain(parts, beta=beta, alpha=alpha)


def _npo_plus_retain(parts, *, beta: float, alpha: float):
    """``npo + alpha * retain NLL`` as a ``train.step.Objective``, from ``parts(params, batch)
    -> (forget rows' [B] log-probs, retain NLL sum)``: per-sequence NPO weighted by the
    forget weights, as ``methods.NPO`` reduces it (sums over the update's counts)."""
    import jax.numpy as jnp

    from jaxunlearn import losses
    from jaxunlearn.train.step import Objective

    def counts(batch):
        return {"rows": jnp.sum(batch["cache"]["weight"]),
                "tokens": jnp.sum(batch["retain"].loss_mask)}

    def loss(params, batch, key, totals):
        del key
        logp, retain_sum = parts(params, batch)
        cache = batch["cache"]
        forget = losses.mean_parts(losses.npo_per_sequence(logp, cache["ref_logp"]["answer"],
                                                           beta), cache["weight"])
        retain = losses.Mean(retain_sum, counts(batch)["tokens"])
        share = forget.total / totals["rows"] + alpha * retain.total / totals["tokens"]
        return share, {"forget_loss": forget, "retain_loss": retain}

    return Objective(counts=counts, loss=loss)


def reference_logprobs(graphdef, params, rows) -> np.ndarray:
    """The frozen target's per-sequence log-probs ``[B]`` (NPO's cached reference)."""
    import jax

    from jaxunlearn.models.outputs import forward

    @jax.jit
    def score(p, b):
        return forward(graphdef, p, as_batch(b)).sequence_logprob()

    return np.asarray(score(params, rows))


def fused_reference_logprobs(graphdef, params, rows, *, chunk_size: int | None = None) -> np.ndarray:
    """The frozen target's per-sequence log-probs ``[B]`` through ``jaxunlearn.ops``'s fused
    LM head (chunks of ``chunk_size`` tokens): no ``[B, T, V]`` logits, for big vocabularies."""
    import jax
    from flax import nnx

    from jaxunlearn import ops

    @jax.jit
    def score(p, b):
        m = nnx.merge(graphdef, p)
        return ops.sequence_logprob_from_hidden(m.hidden_states(b["input_ids"], b["attention_mask"]),
                                                m.output_head(), b["labels"], b["loss_mask"],
                                                chunk_size=chunk_size)

    return np.asarray(score(params, rows))


def unlearning_batch(forget: dict, retain: dict, ref_logp: np.ndarray, *,
                     padding_free: bool = True, groups: int = 1) -> dict[str, Any]:
    """The batch dict ``methods.runner`` feeds the step: forget view, retain rows, cache.

    ``padding_free`` attaches the capacities the runner would (``train.padding_free``,
    ``models.compact``; ``groups`` batch shards): ``methods`` objectives then run the
    model on real tokens only and the LM head on answer tokens only.
    """
    def batch(rows):
        b = as_batch(rows)
        if not padding_free:
            return b
        from jaxunlearn.models import compact

        return b._replace(compaction=compact.covering(
            groups, compact.group_counts(b.attention_mask, groups),
            compact.group_counts(b.loss_mask, groups)))

    return {"forget": {"answer": batch(forget)}, "retain": batch(retain),
            "cache": {"ref_logp": {"answer": np.asarray(ref_logp, np.float32)},
                      "weight": np.ones(len(ref_logp), np.float32)}}


# ------------------------------------------------------------------------------ FLOPs


def matmul_params(config) -> int:
    """Parameters that take part in a matmul per token (embedding lookup excluded)."""
    D, F, H = config.hidden_size, config.intermediate_size, config.resolved_head_dim
    N, K, V = config.num_heads, config.num_kv_heads, config.vocab_size
    per_layer = D * N * H * 2 + D * K * H * 2 + 3 * D * F
    return config.num_layers * per_layer + D * V


def train_flops(config, batch_rows: int, seq: int, *, causal_half: bool = False) -> float:
    """Model FLOPs of one forward + backward over ``batch_rows x seq`` tokens.

    ``6 * N_matmul * tokens`` (PaLM appendix B / Chinchilla) plus attention
    ``6 * 2 * L * B * T^2 * N * H`` (QK^T and PV, forward 2 FLOPs per MAC, backward twice);
    ``causal_half`` halves the attention term (kernels that skip masked tiles count only
    the lower triangle, as the MFU convention of FlashAttention papers).
    """
    tokens = batch_rows * seq
    attn = 6 * 2 * config.num_layers * batch_rows * seq * seq * config.num_heads * config.resolved_head_dim
    return 6.0 * matmul_params(config) * tokens + (attn / 2 if causal_half else attn)


# ------------------------------------------------------------------------------ timing


def add_timing_flags(parser, *, steps: int = 10, warmup: int = 1) -> None:
    parser.add_argument("--steps", type=int, default=steps, help="timed rounds (median over them)")
    parser.add_argument("--warmup", type=int, default=warmup,
                        help="untimed rounds after the first call")
    parser.add_argument("--seed", type=int, default=0)


def check_timing_flags(parser, args) -> None:
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")


def interleaved(calls: dict[str, Callable[[], Any]], *, steps: int,
                warmup: int) -> dict[str, list[float]]:
    """Seconds of each call in each of ``warmup + steps`` rounds, warm-up rounds dropped.

    Every round calls each once, starting one later each round, so drift in the machine's
    speed (other load, clocks) falls on all of them alike.
    """
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + steps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            dt = timed(calls[n])
            if r >= warmup:
                times[n].append(dt)
    return times


def block(x):
    import jax

    return jax.block_until_ready(x)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(times: list[float]) -> str:
    """``median (IQR q1-q3, n)`` in seconds."""
    q = np.percentile(times, [25, 50, 75])
    return f"median {q[1]:.3f} s (IQR {q[0]:.3f}-{q[2]:.3f}, n={len(times)})"


def median(times: list[float]) -> float:
    return statistics.median(times)
