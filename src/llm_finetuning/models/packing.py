"""Check that a model's attention keeps packed examples apart before training on packed data."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from llm_finetuning.errors import ConfigError


@torch.no_grad()
def packed_attention_is_isolated(model: PreTrainedModel) -> bool:
    """Run two short sequences packed into one row (positions restarting at the second) and alone.

    If the second sequence's logits match, the attention honours the restart and builds a block-diagonal mask
    (flash-attention varlen, or sdpa/eager through transformers' packed-sequence detection).
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        vocab = model.get_input_embeddings().weight.shape[0]
        first = torch.arange(3, 10, device=device)[None] % vocab
        second = torch.arange(20, 25, device=device)[None] % vocab
        alone = model(input_ids=second, use_cache=False).logits.float()
        positions = torch.cat([torch.arange(first.shape[1]), torch.arange(second.shape[1])])[None].to(device)
        packed = model(input_ids=torch.cat([first, second], dim=1), position_ids=positions, use_cache=False)
        together = packed.logits[:, first.shape[1] :].float()
    finally:
        model.train(was_training)
    scale = alone.abs().max().clamp(min=1.0)
    return bool(((alone - together).abs().max() / scale) < 1e-2)


def check_packing(model: PreTrainedModel, backend: str = "transformers") -> None:
    """Refuse packed training where examples would attend to each other."""
    if not packed_attention_is_isolated(model):
        implementation = getattr(model.config, "_attn_implementation", "unknown")
        # Unsloth picks its own attention kernels (the config refuses `model.attn_implementation` with it).
        fix = (
            "Set `data.packing: false` (this Unsloth version's attention does not honour packed example boundaries)."
            if backend == "unsloth"
            else "Set `model.attn_implementation` to `sdpa`, `eager` or `flash_attention_2`, or set "
            "`data.packing: false`."
        )
        raise ConfigError(
            f"data.packing: the model's attention (`{implementation}`) lets packed examples attend to each other. {fix}"
        )
