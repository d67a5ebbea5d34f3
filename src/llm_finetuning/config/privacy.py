"""`training.privacy`: differentially private SFT (DP-SGD through Opacus) and what it rules out."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from llm_finetuning.config.base import Section


class PrivacyConfig(Section):
    """Train with DP-SGD: every example's gradient clipped to `max_grad_norm`, Gaussian noise added to their sum,
    batches drawn by Poisson sampling, and a privacy accountant tracking the (epsilon, delta) spent. The noise is
    chosen so the whole run spends at most `epsilon`; the accountant's final epsilon is in the run's metrics
    (`privacy/epsilon`) and manifest."""

    epsilon: float = Field(gt=0)
    """Privacy budget of the whole run (smaller is more private; 1-10 is the usual range)."""
    delta: float | None = Field(None, gt=0, lt=1)
    """Probability that the epsilon guarantee fails; unset: 1 / (10 x training examples), below 1/N as it must be."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Each example's gradient is clipped to this L2 norm before the noise is added (the sensitivity)."""
    accountant: Literal["rdp", "prv"] = "rdp"
    """Opacus's privacy accountant: `rdp` (Rényi DP, the standard bound) or `prv` (tighter numerical bound)."""


def check_privacy(config: Any) -> None:
    """What DP-SGD cannot do, refused with the reason (called by `Config`'s cross-section check)."""
    privacy = config.training.privacy
    if privacy is None:
        return
    if config.method.name != "sft":
        raise ValueError(
            f"`training.privacy` trains `method.name: sft`; `{config.method.name}` is not covered yet (pretraining "
            "cuts documents into shared blocks, the other methods score several outputs per example)"
        )
    if config.data.packing:
        raise ValueError(
            "`training.privacy` cannot be used with `data.packing: true`: a packed row mixes several examples, so "
            "its gradient is not one example's. Set `data.packing: false`"
        )
    if config.training.gradient_accumulation_steps != 1:
        raise ValueError(
            "`training.privacy` needs `training.gradient_accumulation_steps: 1`: the accountant counts one Poisson "
            "batch per noisy step. Raise `per_device_batch_size` instead (it is the expected batch size)"
        )
    if config.training.gradient_checkpointing:
        raise ValueError(
            "`training.privacy` cannot be used with `training.gradient_checkpointing: true`: the recomputed "
            "forward pass breaks the per-example gradient hooks. Turn it off"
        )
    if config.adapter.method not in ("full", "freeze", "lora"):
        raise ValueError(
            f"`training.privacy` trains `adapter.method: full`, `freeze` or `lora`; `{config.adapter.method}` "
            "has layers whose per-example gradients are not computed. Choose one of those"
        )
    if config.model.quantization != "none":
        raise ValueError("`training.privacy` does not support `model.quantization` yet; train LoRA on full weights")
