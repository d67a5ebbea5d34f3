"""FActScore prompts: `Tell me a bio of <entity>.` with a generated biography, for factual long-form writing."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import QA, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset


def parse(row: dict[str, Any]) -> QA:
    """`input` is the bio request, `output` the biography, `topic` the entity (kept for factuality rewards).
    The retrieved Wikipedia passages (`ctxs`) are not put in the prompt: the task is closed-book writing."""
    prompt, biography = text(row, "input"), text(row, "output")
    return QA(prompt, biography, {"topic": text(row, "topic", required=False)})


DATASET = NamedDataset(
    name="factscore",
    hub_id="awinml/factscore_unlabelled_alpaca_13b_retrieval",
    subset=None,
    splits={"train": "train"},
    converters=qa_converters(parse),
    description="FActScore bios: `Tell me a bio of X.` -> biography; prompt_only keeps `topic`.",
)
