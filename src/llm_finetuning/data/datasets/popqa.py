"""PopQA: entity-centric factual questions (from Wikidata triples) of varying subject popularity."""

from __future__ import annotations

import json
from typing import Any

from llm_finetuning.data.datasets._common import QA, pick, qa_converters, text, text_list
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "Question: {question}\n\nAnswer with a short phrase."


def possible_answers(row: dict[str, Any]) -> list[str]:
    """`possible_answers`: a JSON-encoded list of strings on the hub (a plain list is accepted too)."""
    raw = pick(row, "possible_answers")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise RowError("field `possible_answers` is not a JSON-encoded list of strings") from None
    answers = text_list(raw, "possible_answers")
    if not answers:
        raise RowError("field `possible_answers` is empty")
    return answers


def parse(row: dict[str, Any]) -> QA:
    question, answers = text(row, "question"), possible_answers(row)
    # Any of the answers counts as correct; SFT targets the first (the Wikidata object's label).
    return QA(TEMPLATE.format(question=question), answers[0], {"answers": answers})


DATASET = NamedDataset(
    name="popqa",
    hub_id="akariasai/PopQA",
    subset=None,
    # The hub has only a test split; the collection trained on it, which now needs `allow_test_split: true`.
    splits={"train": "test", "test": "test"},
    converters=qa_converters(parse),
    description="PopQA: question -> first possible answer; `answers` keeps every acceptable answer (any matches).",
)
