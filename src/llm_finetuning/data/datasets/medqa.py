"""MedQA (USMLE): medical-licensing multiple choice with 4 or 5 lettered options."""

from __future__ import annotations

import string
from typing import Any

from llm_finetuning.data.datasets._common import QA, lettered, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "{question}\n\n{options}\n\nAnswer with the letter of the correct option."


def options(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(letter, text) pairs from `options: {A: ..}` (original files, GBaker), `options: [{key, value}]` (bigbio
    source schema) or `choices: [...]` (bigbio QA schema, lettered in order)."""
    raw = row.get("options")
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(o, dict) and {"key", "value"} <= o.keys() for o in raw):
        pairs = [(o["key"], o["value"]) for o in raw]
    elif raw is None and isinstance(row.get("choices"), list):
        pairs = list(zip(string.ascii_uppercase, row["choices"], strict=False))
    else:
        raise RowError("field `options` must map letters to option texts (or give a `choices` list)")
    if len(pairs) < 2 or not all(isinstance(p, str) and p.strip() for pair in pairs for p in pair):
        raise RowError("field `options` needs at least two options with a non-empty letter and text")
    return [(letter.strip(), option.strip()) for letter, option in pairs]


def correct(row: dict[str, Any], choices: list[tuple[str, str]]) -> tuple[str, str]:
    """The correct (letter, text): from `answer_idx` (checked against `answer` when both are given), else by
    matching the answer text (`answer` may be a one-element list in the bigbio QA schema)."""
    letters = dict(choices)
    answer = row.get("answer")
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    answer = answer.strip() if isinstance(answer, str) else None
    idx = text(row, "answer_idx", required=False)
    if idx:
        if idx not in letters:
            raise RowError(f"field `answer_idx` is `{idx}`, not one of the options {list(letters)}")
        if answer and answer != letters[idx]:
            raise RowError(f"field `answer` does not match option {idx} (`answer_idx`)")
        return idx, letters[idx]
    matches = [letter for letter, option in choices if option == answer]
    if len(matches) != 1:
        raise RowError("field `answer` must be the text of exactly one option (or give `answer_idx`)")
    return matches[0], answer


def parse(row: dict[str, Any]) -> QA:
    question = text(row, "question")
    choices = options(row)
    letter, answer_text = correct(row, choices)
    prompt = TEMPLATE.format(question=question, options=lettered(choices))
    return QA(prompt, f"{letter}. {answer_text}", {"answer": letter, "answer_text": answer_text})


DATASET = NamedDataset(
    name="medqa",
    hub_id="GBaker/MedQA-USMLE-4-options",
    subset=None,
    splits={"train": "train", "test": "test"},
    converters=qa_converters(parse),
    description="MedQA USMLE multiple choice: lettered options -> `X. <option text>`; 4- or 5-option layouts.",
)
