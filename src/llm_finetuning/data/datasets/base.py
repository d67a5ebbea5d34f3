"""What a named dataset is: where it lives on the hub and how its raw rows become canonical records.

Each dataset is one small module in this package that defines `DATASET = NamedDataset(...)`. The same mapping
serves the hub copy and a local file of the same layout, so tests run it on the real files in ../shared/data
and on fixture rows written in hub layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_finetuning.data.formats import Record

Converter = Callable[[dict[str, Any]], Record]


@dataclass(frozen=True)
class NamedDataset:
    name: str
    """The name used in configs: `data.train: {dataset: gsm8k}`."""
    hub_id: str
    """The hub dataset the collection used (e.g. `openai/gsm8k`)."""
    subset: str | None
    """Its configuration name (e.g. `main`), if any."""
    splits: dict[str, str]
    """The collection's splits: `train`/`eval`/`test` -> hub split name, e.g. {"train": "train", "test": "test"}."""
    converters: dict[str, Converter]
    """Record kind -> function from a raw row to that record: `messages` for SFT, `prompt_only` for GRPO/PPO (with
    the reference answer kept as an extra column), `preference` for DPO/ORPO/reward, `unpaired` for KTO.
    A converter raises `llm_finetuning.data.formats.RowError` naming the field for a bad row."""
    description: str = ""
    """One line: what the dataset is and what the mapping does (shown by `llmft data datasets`)."""
    test_splits: tuple[str, ...] = field(default=("test",))
    """Hub split names that are evaluation-only; training on them needs an explicit opt-in."""
