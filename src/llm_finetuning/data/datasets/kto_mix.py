"""KTO mix 14k: single completions judged desirable or undesirable (unpaired preference)."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import Record, from_unpaired


def to_unpaired(row: dict[str, Any]) -> Record:
    """`prompt` and `completion` are message lists (text is accepted too), `label` is a boolean."""
    return from_unpaired(row, {})


DATASET = NamedDataset(
    name="kto_mix",
    hub_id="trl-lib/kto-mix-14k",
    subset=None,
    splits={"train": "train", "test": "test"},
    converters={"unpaired": to_unpaired},
    description="KTO mix: prompt, one completion and whether it is desirable (label).",
)
