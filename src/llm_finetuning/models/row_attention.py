"""Put the fast path's attention on a loaded model for rows that hold several examples, and check it on the model.

The attention implementation the plan chose (`fast_path.attention_choice`) is switched on the base model, then two
sequences packed into one row are compared with each alone on the device the model trains on; a switch that fails
the check is undone (the model keeps sdpa, and SFT pads its batches). The result is remembered per model, so the
check runs once, before anything (Liger's Triton kernels among them) could make a CPU forward fail.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from transformers import PreTrainedModel

from llm_finetuning.models import varlen_attention, varlen_kernel  # noqa: F401 - registers the toolkit's kernels
from llm_finetuning.models.fast_path import PER_EXAMPLE_SDPA, TORCH_VARLEN, FastPath

logger = logging.getLogger(__name__)

# The toolkit's own kernels cut a row at example boundaries and run plain causal attention: models with sliding
# windows, local layers or soft-capped logits would be changed by them. flash-attn and flex read those from the model.
OWN_KERNELS = (PER_EXAMPLE_SDPA, TORCH_VARLEN)
_ISOLATED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def base_of(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: PreTrainedModel, name: str) -> bool:
    """Whether `name` can replace the model's attention: a causal sdpa model, and for the toolkit's own kernels one
    without sliding windows, local layers or logit soft-capping."""
    config = model.config.get_text_config()
    if not getattr(config, "is_causal", True) or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if name not in OWN_KERNELS:
        return True
    layer_types = getattr(config, "layer_types", None) or []
    sliding = getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)
    local = any(kind != "full_attention" for kind in layer_types)
    return not (sliding or local or getattr(config, "attn_logit_softcapping", None))


def use_row_attention(model: Any, name: str) -> bool:
    """Switch an sdpa model's attention to `name` when that keeps packed examples apart; True when switched."""
    from llm_finetuning.models.packing import packed_attention_is_isolated

    base = base_of(model)
    if not isinstance(base, PreTrainedModel) or not supports(base, name):
        return False
    try:
        base.set_attn_implementation(name)
    except (ValueError, ImportError) as exc:
        logger.debug("attention %s not available for %s: %s", name, type(base).__name__, exc)
        return False
    if base.config._attn_implementation != name or not packed_attention_is_isolated(base):
        base.set_attn_implementation("sdpa")
        return False
    logger.info("attention: %s on packed rows", name)
    return True


def prepare_rows(model: Any, path: FastPath) -> bool:
    """Give `model` the plan's attention for packed and padding-free rows; whether rows keep examples apart.

    Checked once per model (on the device it is on: place it first) and remembered for `rows_isolated`.
    """
    from llm_finetuning.models.packing import packed_attention_is_isolated

    base = base_of(model)
    if base in _ISOLATED:
        return _ISOLATED[base]
    varlen_attention.SDPA_MATH["max_length"] = path.sdpa_math_max_length
    name = path.attention.value
    current = getattr(getattr(base, "config", None), "_attn_implementation", None)
    if name == current or name == "unsloth" or not path.uses_row_attention:
        isolated = packed_attention_is_isolated(base)  # what the model has: checked as it is
    else:
        isolated = use_row_attention(base, name)
        if (
            not isolated
            and name in ("flash_attention_2", "flex_attention")
            and path.attention.reason.startswith("model.attn_implementation")
        ):
            logger.warning("model.attn_implementation: %s could not be used on this model; it keeps sdpa", name)
    _ISOLATED[base] = isolated
    return isolated


def rows_isolated(model: Any, path: FastPath) -> bool:
    """Whether rows of several examples keep them apart on `model` (prepares the model first if not done yet)."""
    base = base_of(model)
    return _ISOLATED[base] if base in _ISOLATED else prepare_rows(model, path)
