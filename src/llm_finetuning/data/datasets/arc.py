"""ARC (AI2 Reasoning Challenge): grade-school science multiple choice, as lettered options."""

from __future__ import annotations

import string
from typing import Any

from llm_finetuning.data.datasets._common import QA, lettered, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "{question}\n\n{options}\n\nAnswer with the letter of the correct option."
COMPLETION = "The answer is {letter}."


def choices(row: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, text) pairs from the hub layout (`choices: {text: [...], label: [...]}`) or the AI2 files'
    (`question: {stem, choices: [{text, label}]}`)."""
    raw = row["question"].get("choices") if isinstance(row.get("question"), dict) else row.get("choices")
    if isinstance(raw, dict) and isinstance(raw.get("text"), list) and isinstance(raw.get("label"), list):
        if len(raw["text"]) != len(raw["label"]):
            raise RowError("field `choices` has a different number of texts and labels")
        pairs = list(zip(raw["label"], raw["text"], strict=True))
    elif isinstance(raw, list) and all(isinstance(c, dict) and "text" in c and "label" in c for c in raw):
        pairs = [(c["label"], c["text"]) for c in raw]
    else:
        raise RowError("field `choices` (or `question.choices`) must hold the options' texts and labels")
    if len(pairs) < 2 or not all(isinstance(p, str) and p.strip() for pair in pairs for p in pair):
        raise RowError("field `choices` needs at least two options with non-empty text and label")
    return [(str(label).strip(), option.strip()) for label, option in pairs]


def parse(row: dict[str, Any]) -> QA:
    question = text(row, "question.stem", "question")
    options = choices(row)
    key = text(row, "answerKey")
    labels = [label for label, _ in options]
    if key not in labels:
        raise RowError(f"field `answerKey` is `{key}`, not one of the option labels {labels}")
    # Some questions are labelled 1-4 instead of A-D: letter every question the same way.
    letters = string.ascii_uppercase[: len(options)]
    letter = letters[labels.index(key)]
    relabelled = [(letters[i], option) for i, (_, option) in enumerate(options)]
    prompt = TEMPLATE.format(question=question, options=lettered(relabelled))
    answer_text = relabelled[labels.index(key)][1]
    return QA(prompt, COMPLETION.format(letter=letter), {"answer": letter, "answer_text": answer_text})


DATASET = NamedDataset(
    name="arc",
    hub_id="allenai/ai2_arc",
    subset="ARC-Challenge",
    splits={"train": "train", "eval": "validation", "test": "test"},
    converters=qa_converters(parse),
    description="ARC-Challenge science multiple choice: lettered options -> `The answer is X.`; AI2 or hub layout.",
)
