"""Glaive function calling (LLaMA-Factory's ShareGPT copy): conversations with `function_call` and `observation`
turns and a `tools` column holding the JSON function definitions."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import Record, from_sharegpt


def to_messages(row: dict[str, Any]) -> Record:
    """The conversation with its calls and tool answers; the tools are declared to the template."""
    return from_sharegpt(row, {})


DATASET = NamedDataset(
    name="glaive_toolcall",
    hub_id="llamafactory/glaive_toolcall_en",
    subset=None,
    splits={"train": "train"},
    converters={"messages": to_messages},
    description="Glaive function calling: conversations that call declared tools and answer from their results.",
)
