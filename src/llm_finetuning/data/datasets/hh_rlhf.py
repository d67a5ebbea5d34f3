"""Anthropic HH-RLHF: helpful/harmless dialogue pairs given as full `Human:`/`Assistant:` transcripts."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import pick
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import Record, RowError, from_preference, parse_transcript


def to_preference(row: dict[str, Any]) -> Record:
    """`chosen` and `rejected` transcripts share the dialogue so far (the prompt) and differ in the last
    assistant turn. Pairs with an empty or identical last turn are refused as bad rows."""
    return from_preference({"chosen": row.get("chosen"), "rejected": row.get("rejected")}, {})


def to_prompt_only(row: dict[str, Any]) -> Record:
    """The dialogue of `chosen` up to its last human turn, for PPO/GRPO with a reward model."""
    transcript = pick(row, "chosen")
    if not isinstance(transcript, str):
        raise RowError("field `chosen` must be a `\\n\\nHuman: ... \\n\\nAssistant: ...` transcript")
    dialogue = parse_transcript(transcript, "chosen")
    while dialogue and dialogue[-1]["role"] == "assistant":  # a few transcripts end in two assistant turns
        dialogue.pop()
    if not dialogue:
        raise RowError("field `chosen` has no human turn")
    return {"prompt": dialogue}


DATASET = NamedDataset(
    name="hh_rlhf",
    hub_id="Anthropic/hh-rlhf",
    subset=None,
    splits={"train": "train", "test": "test"},
    converters={"preference": to_preference, "prompt_only": to_prompt_only},
    description="HH-RLHF: transcripts split into the shared dialogue (prompt) and the chosen/rejected last turn.",
)
