"""The config schema and its loader."""

from llm_finetuning.config.loading import apply_override, load_config, load_raw
from llm_finetuning.config.schema import Config

__all__ = ["Config", "apply_override", "load_config", "load_raw"]
