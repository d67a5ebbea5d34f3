"""Variable-length attention through torch's own flash kernel (`torch.nn.attention.varlen.varlen_attn`): one call per
layer over a whole packed or padding-free row, each example attending only to itself.

This is what flash-attn's `flash_attn_varlen_func` does, without the package: the row's queries, keys and values go
to the kernel as (tokens, heads, dim) with the example boundaries (`cu_seq_lens_q` from TRL's padding-free collator,
or where `position_ids` restart), so attention costs the sum of each example's length squared and no mask is built.

The kernel's signature changed between torch releases (2.9-2.10: `is_causal`; 2.11: `window_size`, `scale`; 2.12+:
`enable_gqa`); `call_kernel` adapts to the one installed. It runs bf16/fp16 tensors on CUDA only (float32 ones under
autocast are cast as autocast would cast them for sdpa); anything else (float32 without autocast, a padding mask,
generation with a KV cache, dropout) takes the per-example sdpa path, which is exact everywhere and falls through to
transformers' sdpa for padded batches.
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from functools import lru_cache
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from llm_finetuning.models.fast_path import TORCH_VARLEN
from llm_finetuning.models.varlen_attention import varlen_mask, varlen_sdpa_attention

logger = logging.getLogger(__name__)
HALF = (torch.bfloat16, torch.float16)


def load_kernel() -> Any:
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


@lru_cache(maxsize=8)
def _parameters(kernel: Any) -> frozenset[str]:
    return frozenset(inspect.signature(kernel).parameters)


def call_kernel(
    kernel: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: torch.Tensor, longest: int, scale
) -> torch.Tensor:
    """Causal varlen attention of (tokens, heads, dim) tensors with whichever arguments this torch's kernel takes."""
    names = _parameters(kernel)
    kwargs: dict[str, Any] = {}
    if "window_size" in names:
        kwargs["window_size"] = (-1, 0)  # causal
    else:
        kwargs["is_causal"] = True
    default_scale = 1.0 / math.sqrt(query.shape[-1])
    if scale is not None and not math.isclose(scale, default_scale, rel_tol=1e-6):
        if "scale" in names:
            kwargs["scale"] = scale
        else:  # older kernels always scale by 1/sqrt(dim): fold the model's own scale into the queries
            query = query * (scale / default_scale)
    if query.shape[1] != key.shape[1]:
        if "enable_gqa" in names:
            kwargs["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return kernel(query, key, value, bounds, bounds, longest, longest, **kwargs)


# The bounds of a row are the same for every layer of one forward: computed once (one device sync) and reused while
# the very tensor they came from is alive and unchanged (a weak reference: a freed tensor's id can be reused).
_LAST_BOUNDS: list[Any] = [None, None, None]


def row_bounds(kwargs: dict[str, Any], length: int, device: torch.device) -> tuple[torch.Tensor, int] | None:
    """(cumulative example lengths as int32 on `device`, longest example) of a one-row batch, or None when the row
    holds a single sequence or its boundaries are unknown."""
    source = kwargs.get("cu_seq_lens_q")
    from_positions = source is None
    if from_positions:
        source = kwargs.get("position_ids")
        if source is None or source.shape[-1] != length:
            return None
    stamp = (source._version, length)
    if _LAST_BOUNDS[0] is not None and _LAST_BOUNDS[0]() is source and _LAST_BOUNDS[1] == stamp:
        return _LAST_BOUNDS[2]
    if from_positions:
        starts = (source.reshape(-1, length)[0] == 0).nonzero().flatten()
        if starts.numel() == 0 or int(starts[0]) != 0:
            starts = torch.cat([starts.new_zeros(1), starts])
        bounds = torch.cat([starts, starts.new_tensor([length])])
    else:
        bounds = source
        if bounds.numel() < 2 or int(bounds[0]) != 0 or int(bounds[-1]) != length:
            bounds = None  # boundaries of another tensor: let sdpa decide
    result = None
    if bounds is not None and bounds.numel() > 2:
        bounds = bounds.to(device=device, dtype=torch.int32)
        longest = kwargs.get("max_length_q") if not from_positions else None
        result = (bounds, int(longest) if longest else int(bounds.diff().max()))
    _LAST_BOUNDS[:] = [weakref.ref(source), stamp, result]
    return result


def kernel_dtype(query: torch.Tensor) -> torch.dtype | None:
    """The dtype the kernel runs `query` in: its own when half precision on CUDA, autocast's when autocast would run
    sdpa in it (float32 activations under bf16/fp16 autocast), else None (the kernel cannot take it)."""
    if not query.is_cuda:
        return None
    if query.dtype in HALF:
        return query.dtype
    if torch.is_autocast_enabled("cuda"):
        lower = torch.get_autocast_dtype("cuda")
        return lower if lower in HALF else None
    return None


def torch_varlen_attention(
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
    """transformers attention function: one varlen kernel call per layer on a packed row, per-example sdpa or
    transformers' sdpa otherwise."""
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    usable = (
        attention_mask is None and causal and dropout == 0.0 and query.shape[0] == 1 and query.shape[2] == key.shape[2]
    )
    dtype = kernel_dtype(query) if usable else None
    bounds = row_bounds(kwargs, query.shape[2], query.device) if dtype is not None else None
    if bounds is None:
        return varlen_sdpa_attention(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    cumulative, longest = bounds
    # (1, heads, tokens, dim) -> (tokens, heads, dim), the kernel's layout; the output goes back as (1, tokens, h, d)
    q, k, v = (t[0].transpose(0, 1).to(dtype).contiguous() for t in (query, key, value))
    out = call_kernel(load_kernel(), q, k, v, cumulative, longest, scaling)
    return out.unsqueeze(0), None


AttentionInterface.register(TORCH_VARLEN, torch_varlen_attention)
AttentionMaskInterface.register(TORCH_VARLEN, varlen_mask)
