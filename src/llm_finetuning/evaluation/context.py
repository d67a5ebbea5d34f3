"""How many tokens the evaluated model can read at once, and whether a prompt fits.

The limit is `eval.max_length` (`--max-length`) when set, else the model config's own length key (the text
model's config for a multimodal one), else the tokenizer's `model_max_length` when it is a real value rather
than transformers' "no limit" sentinel. A model that states no limit is given prompts as they are.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx", "max_seq_len")
"""Config attributes that name the longest sequence, as different architectures spell it."""
NO_LIMIT = 10**9
"""Values at or above this are "unlimited" markers (transformers writes int(1e30)), not context lengths."""


def _real(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if 0 < value < NO_LIMIT else None


def _configs(config: Any) -> list[Any]:
    """The config and the text model's config inside it (multimodal configs keep the length there)."""
    found = [config]
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    for inner in (text, getattr(config, "text_config", None), getattr(config, "llm_config", None)):
        if inner is not None and all(inner is not seen for seen in found):
            found.append(inner)
    return found


def config_context_length(config: Any) -> int | None:
    """The longest sequence a model config states, or None."""
    for candidate in _configs(config):
        for key in LENGTH_KEYS:
            value = _real(getattr(candidate, key, None))
            if value is not None:
                return value
    return None


def context_length(model: Any, tokenizer: Any = None, override: int | None = None) -> int | None:
    """The evaluation's token limit: `override`, else the config's length, else a real `model_max_length`."""
    if override is not None:
        stated = config_context_length(model.config)
        if stated is not None and override > stated:
            logger.info("eval.max_length %d is above the model's stated context of %d tokens", override, stated)
        return override
    found = config_context_length(model.config)
    if found is None and tokenizer is not None:
        found = _real(getattr(tokenizer, "model_max_length", None))
    return found


def prompt_overflow(prompt_tokens: int, max_new_tokens: int, limit: int | None) -> str | None:
    """Why a generation prompt cannot be answered within `limit` tokens, or None when it fits."""
    if limit is None or prompt_tokens + max_new_tokens <= limit:
        return None
    return (
        f"prompt of {prompt_tokens} tokens + max_new_tokens {max_new_tokens} exceeds the model's context of "
        f"{limit} tokens"
    )
