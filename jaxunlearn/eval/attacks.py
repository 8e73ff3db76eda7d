"""Recovery attacks: does "forgotten" knowledge come back when the model is poked?

* Quantisation (Zhang et al. 2025, "Catastrophic Failure of LLM Unlearning via
  Quantization"): unlearning often moves weights by less than a quantisation step,
  so rounding can snap them back towards the original model. We round every weight
  matrix to nearest, symmetric, per output channel, at 8 and 4 bits, dequantise
  (float weights again) and re-measure the forget set.
* Fine-tuning recovery, the re-learning attack (Hu et al. 2025, "Unlearning or
  Obfuscating? Jogging the Memory of Unlearned LLMs via Benign Relearning"; Lynch et
  al. 2024): a few steps of plain fine-tuning (NLL, AdamW, fixed seed) on a small part
  of the forget set. If the rest of the forget set comes back too, the knowledge was
  hidden, not removed. (Not the ReLearn unlearning method, ``method=relearn``; its
  eval.json key is ``relearn`` for the attack's published name.)

Both report each forget metric (``ForgetScores.KEYS``) before and after, as an
:class:`~jaxunlearn.eval.results.AttackResult`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from flax import nnx

from jaxunlearn.data.batch import DEFAULT_CHAT, ChatStyle, bucket_length, encode_qa, \
    iterate_batches, pad_id, steps_per_epoch
from jaxunlearn.errors import UserError
from jaxunlearn.eval.inputs import benchmark_splits, subset
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.eval.results import AttackResult, BeforeAfter, ForgetScores
from jaxunlearn.eval.suite import evaluate_forget
from jaxunlearn.models.hf_layout import hf_tensors_from_model, model_from_hf_tensors
from jaxunlearn.train.finetune import nll_finetune
from jaxunlearn.train.loop import BatchSource
from jaxunlearn.train.step import OptimizerConfig


# ----------------------------------------------------------------------------- quantisation
def quantize_rtn(weight: np.ndarray, bits: int) -> np.ndarray:
    """Symmetric per-output-channel round-to-nearest quantisation, dequantised.

    For ``W [O, I]`` (Hugging Face layout: one row per output channel) and
    ``q_max = 2^(bits-1) - 1``: ``s_o = max_i |W_oi| / q_max``,
    ``Q = clip(round(W / s), -q_max, q_max)``, result ``Q * s`` (float32). Every
    element moves by at most ``s_o / 2``. An all-zero row stays zero.

    Args:
      weight: ``[O, I]`` float array.
      bits: 2..16.
    Returns:
      ``[O, I]`` float32, the dequantised weights.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise UserError(f"bits: expected an integer in [2, 16], got {bits!r}")
    w = np.asarray(weight, dtype=np.float32)
    if w.ndim != 2:
        raise UserError(f"weight: expected a 2-D [out, in] matrix, got shape {w.shape}")
    q_max = 2 ** (bits - 1) - 1
    scale = np.abs(w).max(axis=1, keepdims=True) / q_max
    safe = np.where(scale > 0, scale, 1.0)  # zero rows: any scale gives Q = 0
    q = np.clip(np.rint(w / safe), -q_max, q_max)
    return (q * scale).astype(np.float32)


def quantize_model(model, bits: int):
    """A new model whose every weight matrix (embedding and lm head included) went
    through ``quantize_rtn``; norms and biases (1-D) are kept. ``model`` is unchanged."""
    tensors = hf_tensors_from_model(model)
    quantized = {name: quantize_rtn(t, bits) if t.ndim == 2 else t for name, t in tensors.items()}
    return model_from_hf_tensors(model.config, quantized.__getitem__, set(quantized),
                                 source=f"{bits}-bit quantised model")


def _before_after(before: ForgetScores, after: ForgetScores, info=None) -> AttackResult:
    b, a = before.to_json(), after.to_json()
    return AttackResult(metrics={k: BeforeAfter(before=b[k], after=a[k]) for k in b if k in a},
                        info=info)


def quantization_attack(model, tokenizer, records: Sequence[dict], cfg, *,
                        bits: Sequence[int] = (8, 4), canaries: Sequence[dict] | None = None,
                        before: ForgetScores | None = None) -> dict[str, AttackResult]:
    """Forget metrics (``ForgetScores``) before and after quantising at each width.

    Args:
      records: the forget QA records to measure on.
      cfg: ``RunConfig`` or ``SuiteConfig`` (batch size, decoding length).
      canaries: the benchmark's canaries; the forget ones are measured too.
      before: the unquantised model's numbers on the same records when already known
        (e.g. ``ForgetScores.of`` its ``evaluate_model`` result), to skip one evaluation.
    Returns:
      ``{"quantize_8bit": AttackResult, "quantize_4bit": AttackResult}``.
    """
    if before is None or before.prob is None or before.rouge is None:
        before = evaluate_forget(model, tokenizer, records, cfg, canaries=canaries)
    return {f"quantize_{b}bit": _before_after(
        before, evaluate_forget(quantize_model(model, b), tokenizer, records, cfg,
                                canaries=canaries)) for b in bits}


# ----------------------------------------------------------------------------- re-learning
@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneRecoveryConfig:
    """The attacker's budget.

    Attributes:
      fraction: share of the forget people (their QA records) the attacker trains on;
        at least one person, and at least one left to measure.
      steps: AdamW steps on those records (batches wrap around).
      batch_size: rows per step.
      learning_rate, weight_decay: AdamW's (constant learning rate, no clipping).
      seed: order of the records and choice of the people.
    """

    fraction: float = 0.1
    steps: int = 20
    batch_size: int = 8
    learning_rate: float = 3e-4
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.fraction < 1.0:
            raise UserError(f"FinetuneRecoveryConfig.fraction must be in (0, 1), "
                            f"got {self.fraction}")
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise UserError(f"FinetuneRecoveryConfig.{name} must be a positive integer, "
                                f"got {v!r}")
        if not self.learning_rate > 0:
            raise UserError(f"FinetuneRecoveryConfig.learning_rate must be > 0, "
                            f"got {self.learning_rate}")
        if self.weight_decay < 0:
            raise UserError(f"FinetuneRecoveryConfig.weight_decay must be >= 0, "
                            f"got {self.weight_decay}")


def recovery_split(records: Sequence[dict], fraction: float, seed: int
                   ) -> tuple[list[dict], list[dict]]:
    """``(attacker's records, records to measure)``, disjoint by person.

    People (``person_id``) are drawn with ``default_rng(seed)``; with a single person
    the records themselves are split. Needs at least two records.
    """
    if len(records) < 2:
        raise UserError(f"forget split: the fine-tuning recovery attack needs at least 2 "
                        f"records, got {len(records)}")
    keys = [r.get("person_id", i) for i, r in enumerate(records)]
    groups = list(dict.fromkeys(keys))
    if len(groups) < 2:
        keys, groups = list(range(len(records))), list(range(len(records)))
    order = np.random.default_rng(seed).permutation(len(groups))
    n_train = min(len(groups) - 1, max(1, round(fraction * len(groups))))
    chosen = {groups[int(i)] for i in order[:n_train]}
    train = [r for r, k in zip(records, keys) if k in chosen]
    rest = [r for r, k in zip(records, keys) if k not in chosen]
    return train, rest


def finetune_nll(model, tokenizer, records: Sequence[dict], config: FinetuneRecoveryConfig, *,
                 chat: ChatStyle = DEFAULT_CHAT):
    """A fine-tuned copy of ``model`` (``model`` itself is unchanged) and its losses.

    Plain NLL on answer tokens (``train.finetune.nll_finetune``), AdamW at a constant rate
    without clipping, ``config.steps`` steps of ``config.batch_size`` records in
    ``iterate_batches`` order (seeded, wrapping around), one padded length.
    """
    encoded = [encode_qa(tokenizer, r["question"], r["answer"], chat=chat)
               for r in records]
    seq_len = bucket_length(max(e.length for e in encoded))
    pad = pad_id(tokenizer)
    source = BatchSource(
        steps_per_epoch=steps_per_epoch(len(encoded), config.batch_size),
        epoch_batches=lambda epoch: iterate_batches(encoded, config.batch_size, seed=config.seed,
                                                    epoch=epoch, pad_id=pad, seq_len=seq_len))
    optimizer = OptimizerConfig(learning_rate=config.learning_rate, schedule="constant",
                                weight_decay=config.weight_decay, clip_norm=None)
    graphdef, params = nnx.split(model, nnx.Param)
    result = nll_finetune(graphdef, params, source, optimizer=optimizer,
                          total_steps=config.steps, seed=config.seed, desc="re-learning attack")
    return nnx.merge(graphdef, result.state.params), [h["loss"] for h in result.history]


def finetune_recovery_attack(model, tokenizer, records: Sequence[dict], cfg, *,
                             config: FinetuneRecoveryConfig = FinetuneRecoveryConfig()
                             ) -> AttackResult:
    """Fine-tune on some forget people, measure the others before and after.

    Returns:
      The QA metrics of ``ForgetScores`` on the held-back records before and after, and
      ``info`` (records used, steps, first and last training loss).
    """
    train, rest = recovery_split(list(records), config.fraction, config.seed)
    before = evaluate_forget(model, tokenizer, rest, cfg)
    recovered, step_losses = finetune_nll(model, tokenizer, train, config,
                                          chat=SuiteConfig.of(cfg).chat)
    after = evaluate_forget(recovered, tokenizer, rest, cfg)
    return _before_after(before, after, info={
        "train_records": len(train), "eval_records": len(rest), "steps": config.steps,
        "loss_first": step_losses[0], "loss_last": step_losses[-1]})


def run_attacks(model, tokenizer, benchmark, cfg, *, bits: Sequence[int] = (8, 4),
                finetune: FinetuneRecoveryConfig | None = FinetuneRecoveryConfig(),
                before: ForgetScores | None = None) -> dict[str, AttackResult]:
    """Both attacks on the forget split of ``benchmark`` (capped as ``evaluate_model``).

    ``before``: the model's forget numbers when known (``ForgetScores.of`` its
    ``evaluate_model`` result), reused as the unquantised numbers. ``finetune=None``
    skips the fine-tuning recovery attack. Returns ``{"quantize_8bit": ...,
    "quantize_4bit": ..., "relearn": ...}`` (``relearn``: the fine-tuning recovery).
    """
    options = SuiteConfig.of(cfg)
    data = benchmark_splits(benchmark, options)
    records = subset(data["forget"], options.max_records)
    out = quantization_attack(model, tokenizer, records, options, bits=bits,
                              canaries=data.get("canaries"), before=before)
    if finetune is not None:
        out["relearn"] = finetune_recovery_attack(model, tokenizer, records, options,
                                                  config=finetune)
    return out
