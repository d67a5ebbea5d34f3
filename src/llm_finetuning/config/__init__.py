"""The config schema and its loader.

The names are loaded on first use, so that a module the schema itself imports (e.g. the cleaning section) can
import `llm_finetuning.config.base` without importing the whole schema first (a circular import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_finetuning.config.loading import apply_override, load_config, load_raw
    from llm_finetuning.config.schema import Config

__all__ = ["Config", "apply_override", "load_config", "load_raw"]


def __getattr__(name: str) -> Any:
    if name == "Config":
        from llm_finetuning.config.schema import Config

        return Config
    if name in ("apply_override", "load_config", "load_raw"):
        from llm_finetuning.config import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
