"""The procedure shared by the second-order methods: configs' base, jitted update, rounds.

:class:`SecondOrderMethod` holds the hyper-parameters common to ``newton``,
``fisher_removal`` and ``fisher_forgetting`` (``methods.secondorder``, which also gives
the measured defaults and costs); each of them supplies only its pure ``update_fn``.
:func:`second_order_unlearn` runs that update round after round::

    θ ← θ + η_j (C_R(θ) + λI)⁻¹ ∇loss(θ, F_j)   [+ noise]

Rounds (``rounds``). Deletion requests arrive in chunks (``rounds`` contiguous chunks of
the forget file, in order); chunk ``j`` is removed from the model chunk ``j − 1`` left,
with the curvature re-measured there (as ``secondorder.unlearn_in_rounds``). ``passes``
repeats the whole schedule (Gu et al. apply their update iteratively). Both compound: an
ascent step raises the forget loss, which raises the next forget gradient, so a second
pass or round at the same damping moves much further than the first.

Step size. With ``lr = None``, ``η_j = lr_scale · N_tok(F_j) / N_tok(R ∪
F_{>j})``, for ``lr_scale = 1`` the influence-function step for token-mean losses (the
model still holds the retain set and the chunks not yet removed); ``lr`` fixes ``η``.

Memory: every forward pass sees at most ``micro_batch`` rows. The forget gradient is a
scan of checkpointed micro-batches (activations of one micro-batch at a time, one extra
forward), curvature products are scans of per-micro-batch products, and per-example
gradients run ``micro_batch`` examples at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data.forget_retain import prepare_data
from jaxunlearn.methods import curvature
from jaxunlearn.methods.base import ProcedureMethod, UnlearnContext, UnlearnResult
from jaxunlearn.methods.registry import MethodError, get_method
from jaxunlearn.models.outputs import forward
from jaxunlearn.train import mesh as mesh_lib

__all__ = ["SecondOrderMethod", "build_update", "second_order_unlearn"]

PyTree = Any


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecondOrderMethod(ProcedureMethod):
    """Shared hyper-parameters of the second-order methods (see the module docstring).

    Attributes:
      lr: ``η`` of every round; None = ``lr_scale · N_tok(F_j) / N_tok(R ∪ F_{>j})``.
      lr_scale: multiple of the influence-function step used when ``lr`` is None.
      damping: ``λ`` added to the curvature (``> 0``); newton 0.01, Fisher methods 0.02.
      retain_samples: ``m`` retain examples the curvature is measured on per round
        (all retain records when fewer); newton 32, Fisher methods 64.
      rounds: sequential deletion rounds; the forget file is cut into this many chunks.
      passes: times the whole schedule of rounds is applied.
      micro_batch: rows per forward pass (memory), also per-example-gradient chunk.
    """

    lr: float | None = None
    lr_scale: float = 1.0
    damping: float = 0.01
    retain_samples: int = 32
    rounds: int = 1
    passes: int = 1
    micro_batch: int = 8

    def validate(self) -> None:
        if self.lr is not None:
            self._at_least("lr", 0.0, strict=True)
        self._at_least("lr_scale", 0.0, strict=True)
        self._at_least("damping", 0.0, strict=True)
        for field in ("retain_samples", "rounds", "passes", "micro_batch"):
            self._at_least(field, 1)

    def update_fn(self, graphdef: nnx.GraphDef) -> Callable[..., tuple[PyTree, Any]]:
        """``(params, forget [K, C, T], retain, key, lr) -> (params, UnlearnInfo)``, pure."""
        raise NotImplementedError

    def retain_layout(self) -> str:
        """``"micro"``: retain rows as ``[K, C, T]`` micro-batches; ``"examples"``: ``[m, T]``."""
        return "micro"

    def run(self, context: UnlearnContext) -> UnlearnResult:
        return second_order_unlearn(
            context.model, context.tokenizer, context.forget_records, context.retain_records,
            self, mesh=context.mesh, seed=context.seed, max_len=context.max_len,
            truncate=context.truncate)


def build_update(method: SecondOrderMethod, graphdef: nnx.GraphDef, shardings: PyTree = None):
    """The jitted round ``(params, forget, retain, key, lr) -> (params, UnlearnInfo)``.

    ``params`` is donated (pass a copy you own); ``shardings`` (``mesh.param_shardings``)
    pins the result to the parameters' FSDP layout.
    """
    fn = method.update_fn(graphdef)
    if shardings is None:
        return jax.jit(fn, donate_argnums=0)

    def sharded(params, forget, retain, key, lr):
        new, info = fn(params, forget, retain, key, lr)
        return jax.lax.with_sharding_constraint(new, shardings), info

    return jax.jit(sharded, donate_argnums=0)


def _tokens(e: batch_lib.Encoded) -> float:
    return float(np.sum(e.counted[1:]))


@functools.partial(jax.jit, static_argnums=0)
def _answer_probs_batch(graphdef, params, b):
    return forward(graphdef, params, b).token_prob()


def _answer_probs(graphdef, micro_batch: int, seq_len: int, pad_id: int, place):
    """``(params, encoded) -> [N]`` per-token answer probability ``exp(log p(y|x) / |y|)``."""

    def run(params, encoded):
        out = [np.asarray(_answer_probs_batch(graphdef, params, place(eb.batch)))[:eb.num_real]
               for eb in batch_lib.iterate_eval_batches(encoded, micro_batch, pad_id=pad_id,
                                                        seq_len=seq_len)]
        return np.concatenate(out)

    return run


def second_order_unlearn(model, tokenizer, forget_records: Sequence[Mapping],
                         retain_records: Sequence[Mapping], method, *, mesh=None, seed: int = 0,
                         max_len: int = 256, truncate: bool = False) -> UnlearnResult:
    """Runs ``newton`` / ``fisher_removal`` / ``fisher_forgetting`` (see the module docstring).

    Args:
      model: the trained target ``Llama``; left untouched.
      forget_records, retain_records: QA records (``question``, ``answer``).
      method: a :class:`SecondOrderMethod` or its dict (``{"name": "newton", ...}``).
      mesh: a ``("data", "fsdp")`` mesh (parameters FSDP-sharded) or None.
      seed: retain samples are ``default_rng([seed, pass, round])``; the noise key is
        ``fold_in(key(seed), update)``.
    Returns:
      ``UnlearnResult(model, history)``, one record per round: ``step``, ``pass``,
      ``round``, ``lr`` (``η``), ``loss`` (= ``forget_loss``, the chunk's NLL before the
      update), ``forget_grad_norm``, ``step_norm``, ``noise_norm``, ``solver_iterations``,
      ``solver_residual_norm``, ``solver_converged``, ``forget_prob`` (mean per-token answer
      probability over the whole forget set after the update), ``retain_prob`` (the same
      over the round's retain sample), ``seconds`` (the update, compilation included in
      the first).
    Raises:
      MethodError: ``method.rounds`` above the number of forget records, or an update that
        is not finite (naming ``method.damping``).
    """
    method = get_method(method)
    if not isinstance(method, SecondOrderMethod):
        raise MethodError(f"method.name: {method.name!r} is not a second-order method")
    data = prepare_data(tokenizer, forget_records, retain_records, max_len=max_len,
                        truncate=truncate)
    forget, retain, pad = data.forget["answer"], data.retain, data.pad_id
    n_f, n_r = len(forget), len(retain)
    if method.rounds > n_f:
        raise MethodError(f"method.rounds: {method.rounds} rounds need at least as many "
                          f"forget records, got {n_f}")
    seq_len = max(data.t_forget, data.t_retain)  # one shape for every compiled function
    c = method.micro_batch
    chunks = np.array_split(np.arange(n_f), method.rounds)
    rows_f = -(-max(len(ch) for ch in chunks) // c) * c
    m = min(method.retain_samples, n_r)
    rows_r = -(-m // c) * c
    chunk_tokens = [sum(_tokens(forget[i]) for i in ch) for ch in chunks]
    retain_tokens = sum(_tokens(e) for e in retain)

    graphdef, target = nnx.split(model, nnx.Param)
    params = jax.tree.map(lambda x: jnp.array(x, copy=True), target)  # donated below
    shardings = None
    if mesh is not None:
        shardings = mesh_lib.param_shardings(params, mesh)
        params = jax.device_put(params, shardings)
        rep = NamedSharding(mesh, P())
        place = lambda b: jax.device_put(b, rep)  # noqa: E731
    else:
        place = jax.device_put
    update = build_update(method, graphdef, shardings)
    probs = _answer_probs(graphdef, c, seq_len, pad, place)

    history: list[dict[str, float]] = []
    base_key = jax.random.key(seed)
    for p in range(method.passes):
        for j, chunk in enumerate(chunks):
            step = len(history)
            if method.lr is not None:
                lr = method.lr
            else:  # the data the model still holds: the retain set and the chunks not yet removed
                lr = method.lr_scale * chunk_tokens[j] / (retain_tokens + sum(chunk_tokens[j + 1:]))
            r_idx = np.sort(np.random.default_rng([seed, p, j]).choice(n_r, m, replace=False))
            r_enc = [retain[i] for i in r_idx]
            fb = curvature.micro_batches([forget[i] for i in chunk], rows_f, c, seq_len, pad)
            rb = (curvature.micro_batches(r_enc, rows_r, c, seq_len, pad) if method.retain_layout() == "micro"
                  else batch_lib.collate(r_enc, seq_len, pad))
            t0 = time.perf_counter()
            params, info = update(params, place(fb), place(rb), jax.random.fold_in(base_key, step),
                                  jnp.float32(lr))
            info = {k: float(np.asarray(v)) for k, v in info._asdict().items()}
            seconds = time.perf_counter() - t0
            if not np.isfinite([info["step_norm"], info["noise_norm"]]).all():
                raise MethodError(
                    f"method.damping: round {j} (pass {p}) of {method.name} gave a non-finite "
                    f"update (step norm {info['step_norm']}); raise method.damping or lower the "
                    "step (method.lr / method.lr_scale)")
            record = {"step": step + 1, "pass": p, "round": j, "lr": lr,
                      "loss": info["forget_loss"], **info,
                      "forget_prob": float(probs(params, forget).mean()),
                      "retain_prob": float(probs(params, r_enc).mean()),
                      "seconds": seconds}
            history.append(record)
    return UnlearnResult(nnx.merge(graphdef, params), history)
