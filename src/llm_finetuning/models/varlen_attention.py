"""Variable-length attention over sdpa: each example of a packed or padding-free row attends only to itself.

TRL's padding-free collator puts a whole batch (or several packed rows) into one row whose positions restart at
every example. With sdpa, transformers turns that row into a block-diagonal mask over its full length, so attention
costs (sum of lengths)^2 and builds a mask that large, instead of the sum of each example's length^2. This attention
cuts the row at the example boundaries (`cu_seq_lens_q` from the collator, or where `position_ids` restart) and runs
causal sdpa on each example: what flash-attention's varlen kernel does on GPUs, for every device sdpa runs on.

Batches with a padding mask, generation with a KV cache, and a row without boundaries fall through to transformers'
own sdpa path, so the model behaves as with `sdpa` everywhere else.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, causal_mask_function, sdpa_mask

from llm_finetuning.models.fast_path import CPU_MATH_MAX_LENGTH, PER_EXAMPLE_SDPA

logger = logging.getLogger(__name__)

NAME = PER_EXAMPLE_SDPA
# Examples up to this length run sdpa's math kernel; set from the run's fast path (192 on CPU, 0 elsewhere).
SDPA_MATH = {"max_length": CPU_MATH_MAX_LENGTH}


def segment_lengths(kwargs: dict[str, Any], length: int) -> list[int] | None:
    """Lengths of the examples in a one-row batch, or None when the row is a single sequence."""
    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is not None:
        edges = [int(b) for b in bounds.tolist()]
        if edges[0] == 0 and edges[-1] == length:
            lengths = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
            return lengths if len(lengths) > 1 else None
    positions = kwargs.get("position_ids")
    if positions is None or positions.shape[-1] != length:
        return None
    starts = (positions.reshape(-1, length)[0] == 0).nonzero().flatten().tolist()
    starts = sorted({0, *starts})
    if len(starts) == 1:
        return None
    return [b - a for a, b in zip(starts, [*starts[1:], length], strict=True)]


def varlen_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: per-example causal sdpa on a packed row, sdpa otherwise."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    lengths = None
    if attention_mask is None and causal and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        lengths = segment_lengths(kwargs, query.shape[2])
    if lengths is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # split/cat keep the backward to one gradient tensor each (slicing would build a full-size one per example)
    pieces = [
        _causal_attention(q, k, v, dropout, scaling)
        for q, k, v in zip(
            query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2), strict=True
        )
    ]
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def _causal_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, dropout: float, scaling: float | None
) -> torch.Tensor:
    # On CPU, sdpa's flash kernel has a slow backward for short sequences: up to ~200 tokens the plain (math) kernel
    # trains attention 1.9x faster in bf16, as accurately; above, flash wins and keeps memory linear.
    short = query.shape[2] <= SDPA_MATH["max_length"]
    with sdpa_kernel(SDPBackend.MATH) if short else nullcontext():
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=True)


def varlen_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """No mask where there is no padding and no cache (the attention is causal per example); sdpa's otherwise."""
    if attention_mask is None and q_length == kv_length and q_offset == 0 and kv_offset == 0:
        return None
    return sdpa_mask(
        batch_size,
        q_length,
        kv_length,
        q_offset=q_offset,
        kv_offset=kv_offset,
        mask_function=mask_function,
        attention_mask=attention_mask,
        **kwargs,
    )


AttentionInterface.register(NAME, varlen_sdpa_attention)
AttentionMaskInterface.register(NAME, varlen_mask)


def supports_varlen(model: PreTrainedModel) -> bool:
    """Models whose attention the per-example path reproduces (see `row_attention.supports`)."""
    from llm_finetuning.models.row_attention import supports

    return supports(model, NAME)


def use_varlen_attention(model: Any) -> bool:
    """Switch an sdpa model to per-example sdpa where that keeps packed examples apart; True when switched."""
    from llm_finetuning.models.row_attention import use_row_attention

    return use_row_attention(model, NAME)
