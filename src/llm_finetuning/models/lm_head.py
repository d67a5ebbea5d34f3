"""The LM head of SFT and GRPO on devices without Triton (CPU, MPS): TRL's fused-head protocol, in plain torch ops.

TRL's SFTTrainer asks the model for per-token log-probabilities (`model(..., fused_lm_head=True)`). On CUDA a Triton
kernel computes them in tiles without building the logits. Elsewhere TRL falls back to a loop of torch ops over every
position that recomputes the logits in the backward and runs the head's gradient matmuls in float32: on CPU that step
took 2.2x as long as plain logits on a small model (see docs/performance.md). This head instead projects only the
positions that have a label (the completion tokens, so prompts and padding cost nothing), in the dtype autocast
chooses, and returns the same fields TRL's losses and metrics read (log-probabilities, entropy, top-1 hits).
"""

from __future__ import annotations

import logging
import types
from typing import Any

import torch
from peft import PeftModel

from llm_finetuning.models.logit_config import LOGIT_TRANSFORMS

logger = logging.getLogger(__name__)


def use_plain_lm_head(trainer: Any, temperature: float = 1.0, entropy_grad: bool = False) -> bool:
    """Replace TRL's fused LM head with the plain one; True when replaced. Called where the fast path chose the plain
    head (no Triton on the device: `fast_path.lm_head_choice`).

    `temperature` divides the logits as TRL's head was told to (GRPO samples at a temperature); `entropy_grad` keeps
    the entropy in the graph (GRPO can put it in the loss; SFT only logs it). Left alone: sharded models
    (FSDP/DeepSpeed gather the head themselves in TRL's path), a head cast to float32, and models
    whose config transforms the logits.
    """
    model = trainer.model
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    config = base.config.get_text_config()
    if (
        getattr(trainer, "is_fsdp_enabled", False)
        or getattr(trainer, "is_deepspeed_enabled", False)
        or getattr(getattr(trainer, "args", None), "cast_lm_head_to_fp32", False)
        or any(getattr(config, name, None) is not None for name in LOGIT_TRANSFORMS)
        or not hasattr(base, "base_model")
    ):
        return False
    fused = base.forward  # TRL's patched forward: still serves every call without `fused_lm_head=True`
    base.forward = types.MethodType(_plain_head_forward(fused, temperature, entropy_grad), base)
    logger.debug("plain LM head over labelled positions")
    return True


def _plain_head_forward(fused: Any, temperature: float = 1.0, entropy_grad: bool = False) -> Any:
    from trl.trainer.utils import FusedCausalLMOutput

    def forward(
        self: Any,
        *args: Any,
        fused_lm_head: bool = False,
        labels: torch.Tensor | None = None,
        shift_labels: torch.Tensor | None = None,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not fused_lm_head or kwargs.get("output_router_logits") or (labels is None and shift_labels is None):
            return fused(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kwargs,
            )
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shift_labels
        mask = targets != -100
        picked_targets = targets[mask]
        head = self.get_output_embeddings()
        logits = head(hidden[mask].to(head.weight.device)).float()
        if temperature != 1.0:
            logits = logits / temperature
        log_probs = torch.log_softmax(logits, dim=-1)
        del logits  # the log-softmax's backward needs only its output: one vocabulary-wide tensor less at the peak
        picked = log_probs.gather(-1, picked_targets.unsqueeze(-1)).squeeze(-1)
        with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
            if torch.is_grad_enabled():
                entropy = -(log_probs.exp() * log_probs).sum(-1)
            else:  # in place: one vocabulary-wide temporary instead of two
                entropy = -log_probs.exp().mul_(log_probs).sum(-1)
        with torch.no_grad():
            top1 = log_probs.argmax(-1) == picked_targets

        def spread(values: torch.Tensor) -> torch.Tensor:
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-picked.sum() / count,
            log_probs=spread(picked),
            entropy=spread(entropy),
            is_top1=spread(top1),
            label_mask=mask,
        )

    return forward
