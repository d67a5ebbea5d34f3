"""Wrap a model with the adapter named by `adapter:` (PEFT), or open it for full fine-tuning."""

from __future__ import annotations

import logging

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from llm_finetuning.config.schema import FullAdapter, LoraAdapter

logger = logging.getLogger(__name__)


def lora_config(adapter: LoraAdapter) -> LoraConfig:
    return LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        bias=adapter.bias,
        modules_to_save=adapter.modules_to_save or None,
        task_type="CAUSAL_LM",
    )


def apply_adapter(model: PreTrainedModel, adapter: FullAdapter | LoraAdapter) -> PreTrainedModel | PeftModel:
    """Return the model to train: a PEFT model with only adapter weights trainable, or the model itself."""
    if isinstance(adapter, FullAdapter):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        wrapped = model
    else:
        wrapped = get_peft_model(model, lora_config(adapter))
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    logger.info(
        "adapter %s: %s of %s parameters train (%.2f%%)",
        adapter.method,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return wrapped


def count_parameters(model: PreTrainedModel) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }
