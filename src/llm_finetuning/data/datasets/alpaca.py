"""Alpaca: 52K instructions with text-davinci-003 responses (instruction, optional input, output)."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import Record, RowError, from_alpaca


def to_messages(row: dict[str, Any]) -> Record:
    """The instruction (and its input, after a blank line) is the user turn, the output the assistant turn.
    The hub's `text` column (the same, pre-formatted) is ignored."""
    row = {key: row[key] for key in ("instruction", "input", "output") if key in row}
    record = from_alpaca(row, {})
    if not record["messages"][-1]["content"].strip():
        raise RowError("field `output` is empty")
    if not record["messages"][-2]["content"].strip():
        raise RowError("field `instruction` is empty")
    return record


DATASET = NamedDataset(
    name="alpaca",
    hub_id="tatsu-lab/alpaca",
    subset=None,
    splits={"train": "train"},
    converters={"messages": to_messages},
    description="Stanford Alpaca instructions: instruction (+ input) -> output.",
)
