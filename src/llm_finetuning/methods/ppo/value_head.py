"""A scalar value head on the policy's last hidden state, and the policy wrapper that returns both."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import PreTrainedModel

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """Linear map from a hidden state to a value estimate, kept in float32 whatever the model's dtype."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.summary = nn.Linear(hidden_size, 1, dtype=torch.float32)
        # Zero init: the first values are 0 (no arbitrary baseline), and the value loss cannot push gradients
        # into a shared transformer before the head has learned anything.
        nn.init.zeros_(self.summary.weight)
        nn.init.zeros_(self.summary.bias)

    @property
    def hidden_size(self) -> int:
        return self.summary.in_features

    def forward(self, hidden_states: Tensor) -> Tensor:
        """Values of shape (batch, time) from hidden states of shape (batch, time, hidden)."""
        return self.summary(hidden_states.to(self.summary.weight.dtype)).squeeze(-1)


def save_value_head(head: ValueHead, directory: str | Path) -> Path:
    """Write the head to `directory/value_head.safetensors` (beside the policy's own files)."""
    path = Path(directory) / VALUE_HEAD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in head.state_dict().items()}, str(path))
    return path


def load_value_head(directory: str | Path) -> ValueHead:
    """Read a head written by `save_value_head`; its size comes from the stored weight."""
    state = load_file(str(Path(directory) / VALUE_HEAD_FILE))
    head = ValueHead(state["summary.weight"].shape[1])
    head.load_state_dict(state)
    return head


def hidden_size_of(model: PreTrainedModel | PeftModel) -> int:
    """Width of the hidden states the value head reads (the input embedding width of a decoder LM)."""
    return int(model.get_input_embeddings().weight.shape[1])


def position_ids_from(attention_mask: Tensor) -> Tensor:
    """Positions that count only real tokens, so a left-padded prompt starts at position 0 as in `generate`."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class PolicyWithValueHead(nn.Module):
    """A causal LM (plain or PEFT) and a value head that share one forward pass.

    The policy stays the object it was (a `PeftModel` keeps `disable_adapter`, `save_pretrained`), reachable as
    `.policy`; the wrapper adds nothing to its state dict.
    """

    def __init__(self, policy: PreTrainedModel | PeftModel, value_head: ValueHead | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = value_head if value_head is not None else ValueHead(hidden_size_of(policy))
        if self.value_head.hidden_size != hidden_size_of(policy):
            raise ValueError(
                f"value head reads {self.value_head.hidden_size} features but the policy's hidden size is "
                f"{hidden_size_of(policy)}; load the head saved with this policy"
            )
        self.value_head.to(next(policy.parameters()).device)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, logits_to_keep: int = 0) -> tuple[Tensor, Tensor]:
        """Logits (batch, kept, vocab) and values (batch, time) for a left- or right-padded batch.

        `logits_to_keep` > 0 computes logits for the last positions only (the completion), which saves the
        largest tensor of the pass; values are returned for every position.
        """
        output = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_from(attention_mask),
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=logits_to_keep,
        )
        return output.logits, self.value_head(output.hidden_states[-1])

    def save(self, directory: str | Path) -> Path:
        """Save the value head next to whatever the caller saves of the policy."""
        return save_value_head(self.value_head, directory)
