"""Put the model on the device it trains on before anything runs it.

The checks that run the model before training (packed-row isolation, reward and kernel probes) must run where
training will: Triton kernels (Liger's, TRL's head) refuse CPU tensors, and a check on another device proves nothing
about the kernel that trains. The trainer would move the model there later anyway; this does it first.
"""

from __future__ import annotations

import logging
from typing import Any

from llm_finetuning.config.schema import Config
from llm_finetuning.models.fast_path import FastPath, training_device
from llm_finetuning.runs import distributed

logger = logging.getLogger(__name__)


def placement(config: Config, path: FastPath, quantized: bool) -> str | None:
    """The device to move the loaded model to, or None where it stays where it was loaded: on CPU; a quantized
    base (bitsandbytes places it at load); `model.device_map`; Unsloth's loader (it places the model); FSDP or
    DeepSpeed in a run of several processes (they shard it from where it is)."""
    if path.device == "cpu" or quantized or config.model.device_map is not None or config.model.backend == "unsloth":
        return None
    if distributed.world_size() > 1 and config.distributed.strategy != "ddp":
        return None
    return training_device(path)


def place_model(model: Any, config: Config, path: FastPath, quantized: bool = False) -> Any:
    """Move `model` to its training device (see `placement`); returns the model."""
    target = placement(config, path, quantized)
    if target is not None:
        model.to(target)
        logger.debug("model placed on %s before the checks that run it", target)
    return model
