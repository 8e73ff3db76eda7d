"""Will a training or unlearning run fit? Memory and disk from the model's config, before step 1.

Two lower bounds, each compared with what this machine has (``jaxunlearn.resources``):

* **memory** of one update: the weights, their gradients and the optimiser's moments
  (``P · (w + 4 + m)`` bytes for ``P`` parameters stored in ``w`` bytes, float32
  gradients and ``m`` = 8 bytes of Adam moments, 6 with a bf16 first moment, 0 for SGD
  and Adafactor), plus the activations a micro-batch keeps for the backward pass even
  with rematerialisation: ``B · T · (L · D + 2 · F) · 4`` bytes for ``B`` =
  ``train.batch_size`` rows of at least ``T`` = 8 tokens (one ``[B, T, D]`` block input
  per layer, the MLP's gate and up ``[B, T, F]`` of the layer being recomputed);
* **disk** under ``output_dir``: the final weights plus one checkpoint of the weights
  and optimiser moments (``P · (2w + m)`` bytes).

A run that fails a bound cannot fit, so it is refused with one line naming the setting
(exit 2) instead of failing in XLA or filling the disk after hours of work; a run that
passes may still be too large (the bounds are optimistic by design).
"""

from __future__ import annotations

from jaxunlearn import resources
from jaxunlearn.models import lora as lora_lib

__all__ = ["MIN_TOKENS_PER_ROW", "moment_bytes", "step_memory", "output_disk", "check_run_budget"]

MIN_TOKENS_PER_ROW = 8  # data.max_len >= 8, and a question with its answer is longer


def moment_bytes(optimizer) -> int:
    """Bytes of optimiser state per parameter (lower bound) for an ``OptimizerConfig``."""
    if optimizer.optimizer != "adamw":
        return 0
    return 6 if optimizer.moment_dtype == "bfloat16" else 8


def _weight_bytes(config) -> int:
    return 2 if config.param_dtype in ("bfloat16", "float16") else 4


def step_memory(config, optimizer, rows: int, lora=None) -> tuple[int, int]:
    """``(state bytes, activation bytes)`` of one update on ``rows`` rows (lower bounds).

    With ``lora`` (``models.lora.LoraConfig``) only the ``A`` float32 adapter parameters
    have gradients and moments: ``P · w + A · (4 + 4 + m)``.
    """
    params = config.num_params()
    if lora is None:
        state = params * (_weight_bytes(config) + 4 + moment_bytes(optimizer))
    else:
        state = params * _weight_bytes(config) + lora_lib.adapter_params(config, lora) * (
            8 + moment_bytes(optimizer))
    per_token = (config.num_layers * config.hidden_size + 2 * config.intermediate_size) * 4
    return state, rows * MIN_TOKENS_PER_ROW * per_token


def output_disk(config, optimizer, lora=None) -> int:
    """Bytes the final weights and one checkpoint take on disk (lower bound); a LoRA
    run's checkpoint holds the adapters and their moments only."""
    if lora is not None:
        return config.num_params() * _weight_bytes(config) + lora_lib.adapter_params(
            config, lora) * (4 + moment_bytes(optimizer))
    return config.num_params() * (2 * _weight_bytes(config) + moment_bytes(optimizer))


def check_run_budget(cfg, config) -> None:
    """Refuses a run (``RunConfig`` ``cfg``, ``LlamaConfig`` ``config``) that cannot fit.

    Raises:
      resources.ResourceError: naming ``train.batch_size`` (activations dominate),
        the model (its weights and optimiser state alone), or ``output_dir`` (disk).
    """
    train, lora = cfg.train, cfg.model.lora  # LoRA: a smaller bound, still a lower bound
    state, activations = step_memory(config, train.optimizer, train.batch_size, lora)
    have, where = resources.device_memory()
    params = f"{config.num_params():,} parameters"
    if activations >= state:
        subject = f"train.batch_size={train.batch_size}"
        estimate = (f"memory for one update ({params} with gradients and optimiser state, "
                    f"and {config.num_layers} layers' activations of {train.batch_size} rows "
                    f"of at least {MIN_TOKENS_PER_ROW} tokens)")
    else:
        subject = f"the model ({params})"
        estimate = "memory for its weights, gradients and optimiser state"
    resources.check_fits(state + activations, have, subject=subject, estimate=estimate,
                         where=where)
    resources.check_fits(output_disk(config, train.optimizer, lora),
                         resources.free_disk(cfg.output_dir),
                         subject=f"output_dir={cfg.output_dir}",
                         estimate="disk for the model and one checkpoint of it",
                         where="the free space of its file system")
