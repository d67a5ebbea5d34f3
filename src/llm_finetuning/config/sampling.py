"""The sampling option shared by the methods that generate while they train (GRPO, PPO)."""

from __future__ import annotations

from typing import Literal

from llm_finetuning.config.base import Section


class SamplingWeights(Section):
    """What the policy samples its completions from while training a LoRA adapter."""

    generation_weights: Literal["adapter", "merged"] = "adapter"
    """What the policy's own `generate` samples from when a LoRA adapter trains (GRPO with `generation_backend:
    transformers`, PPO). `adapter`: the layers as they train, the base matmul plus the adapter's two thin ones.
    `merged`: before every generation each adapted linear layer gets `W + scale * B @ A` in a buffer of its own and
    sampling runs one plain matmul per layer on it, which takes the adapter's kernels out of every decoded token;
    the base weights are never written. It costs one copy of the adapted weights on the device (about 2 GB for
    all-linear LoRA on a 1B model in bf16; `llmft estimate` counts it). Needs `adapter.method: lora` without
    quantization, and no FSDP full/hybrid sharding or ZeRO-3. The adapter's dropout does not apply to sampling."""
