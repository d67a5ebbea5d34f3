"""All rewards by name: the library's modules each export `SPECS`; this module indexes them."""

from __future__ import annotations

import difflib
import importlib

from llm_finetuning.errors import ConfigError
from llm_finetuning.rewards.base import RewardSpec

# Each module defines `SPECS: list[RewardSpec]`.
MODULES = ("llm_finetuning.rewards.math", "llm_finetuning.rewards.qa", "llm_finetuning.rewards.judged")


def registry() -> dict[str, RewardSpec]:
    """Every reward of the library, by name (a module missing its optional dependencies is skipped)."""
    specs: dict[str, RewardSpec] = {}
    for module_name in MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # not written yet in this build
                continue
            raise
        for spec in module.SPECS:
            if spec.name in specs:
                raise RuntimeError(f"reward `{spec.name}` is defined twice")
            specs[spec.name] = spec
    return specs


def get_reward(name: str) -> RewardSpec:
    """The reward called `name`; an unknown name fails with the closest names."""
    specs = registry()
    if name not in specs:
        close = difflib.get_close_matches(name, specs, n=3)
        hint = f" Did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""
        raise ConfigError(f"unknown reward `{name}`.{hint} `llmft rewards list` shows them all.")
    return specs[name]
