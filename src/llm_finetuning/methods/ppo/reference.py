"""Where the reference log-probs come from: the policy with its adapter switched off, or a frozen copy."""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext

import torch
from peft import PeftModel
from torch import Tensor
from transformers import PreTrainedModel

from llm_finetuning.methods.ppo.value_head import position_ids_from

logger = logging.getLogger(__name__)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A deep copy in eval mode with no trainable parameters: the reference for a full-weight policy."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


class ReferencePolicy:
    """Log-probs of the reference policy (the model PPO must not drift far from).

    With a LoRA-style `PeftModel` policy and no `ref_model`, the reference is the same module run under
    `disable_adapter()`: the base weights are exactly the starting policy, so no second copy is held in memory.
    Otherwise `ref_model` (a frozen copy, see `frozen_copy`) is used.
    """

    def __init__(self, policy: PreTrainedModel | PeftModel, ref_model: PreTrainedModel | None = None) -> None:
        if ref_model is None and not isinstance(policy, PeftModel):
            raise ValueError(
                "a full-weight policy needs a reference model: pass ref_model=frozen_copy(model) before training "
                "(only a PEFT adapter policy can serve as its own reference with the adapter disabled)"
            )
        if ref_model is not None:
            ref_model.eval()
            ref_model.requires_grad_(False)
        self.policy = policy
        self.ref_model = ref_model
        logger.info(
            "PPO reference: %s", "the given frozen model" if ref_model is not None else "the policy, adapter disabled"
        )

    @property
    def shares_policy(self) -> bool:
        """True when the reference is the policy with its adapter disabled (no second model)."""
        return self.ref_model is None

    @torch.no_grad()
    def logits(self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 0) -> Tensor:
        model = self.policy if self.ref_model is None else self.ref_model
        context = self.policy.disable_adapter() if self.ref_model is None else nullcontext()
        with context:
            output = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids_from(attention_mask),
                use_cache=False,
                logits_to_keep=logits_to_keep,
            )
        return output.logits
