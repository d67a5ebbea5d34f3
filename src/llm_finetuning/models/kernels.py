"""Liger's fused Triton kernels on the model to train (`training.liger_kernel`)."""

from __future__ import annotations

import logging
from typing import Any

import torch

from llm_finetuning.config.schema import Config
from llm_finetuning.env import is_installed
from llm_finetuning.errors import ConfigError

logger = logging.getLogger(__name__)

# The layer kernels only. The loss stays the trainer's: TRL's SFT trainer runs its own chunked LM head, and the
# DPO/KTO/GRPO/PPO losses read the logits, which Liger's fused linear cross-entropy would never build.
LIGER_KERNELS: dict[str, bool] = {
    "rope": True,
    "rms_norm": True,
    "layer_norm": True,
    "swiglu": True,
    "geglu": True,
    "cross_entropy": False,
    "fused_linear_cross_entropy": False,
}


def check_liger(config: Config) -> None:
    """Refuse `training.liger_kernel` where it cannot run, before any data or model is loaded."""
    if not config.training.liger_kernel:
        return
    if config.model.backend == "unsloth":
        raise ConfigError(
            "training.liger_kernel: `model.backend: unsloth` patches the model with its own kernels; set "
            "`training.liger_kernel: false` or `model.backend: transformers`."
        )
    if not is_installed("liger_kernel"):
        raise ConfigError(
            "training.liger_kernel: liger-kernel is not installed. `pip install 'llm-finetuning[liger]'` (CUDA GPUs), "
            "or set `training.liger_kernel: false`."
        )
    if not cuda_available():
        raise ConfigError(
            "training.liger_kernel: Liger's kernels are Triton kernels for CUDA GPUs and no GPU is visible; set "
            "`training.liger_kernel: false` on this machine."
        )


def cuda_available() -> bool:
    return torch.cuda.is_available()


def supported_model_types() -> set[str] | None:
    """The architectures (config `model_type`) Liger patches; None when this Liger version does not say."""
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError:
        return None
    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def apply_liger(model: Any, config: Config) -> None:
    """Patch `model` (a PEFT wrapper or a plain model) in place with Liger's layer kernels, when configured."""
    if not config.training.liger_kernel:
        return
    check_liger(config)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_type = getattr(base.config, "model_type", None)
    supported = supported_model_types()
    if supported is not None and model_type not in supported:
        raise ConfigError(
            f"training.liger_kernel: Liger has no kernels for `{model_type}` models (it patches "
            f"{', '.join(sorted(supported))}); set `training.liger_kernel: false`."
        )
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    # Patched on the instance: the modules this process trains, adapters included (PEFT's layers wrap the
    # projections the kernels call).
    _apply_liger_kernel_to_instance(model=base, **LIGER_KERNELS)
    applied = ", ".join(name for name, on in LIGER_KERNELS.items() if on)
    logger.info("Liger kernels on the %s model: %s (the loss head stays the trainer's)", model_type, applied)
