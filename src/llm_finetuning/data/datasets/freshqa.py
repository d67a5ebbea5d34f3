"""FreshQA: time-sensitive questions (never-, slow- and fast-changing facts, false premises)."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import QA, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError, as_label

TEMPLATE = "Question: {question}\n\nAnswer concisely. If the question rests on a false premise, say so."
ANSWER_COLUMNS = tuple(f"answer_{i}" for i in range(10))


def parse(row: dict[str, Any]) -> QA:
    """The FreshQA sheet layout: `question`, acceptable answers in `answer_0`..`answer_9` (blank when unused),
    `split` TEST/DEV, `false_premise` TRUE/FALSE, `fact_type`."""
    question = text(row, "question")
    answers = [text(row, c, required=False) for c in ANSWER_COLUMNS]
    answers = list(dict.fromkeys(a for a in answers if a))
    if not answers:
        raise RowError("fields `answer_0`..`answer_9` are all empty")
    premise = row.get("false_premise")
    extra = {
        "answers": answers,
        "split": text(row, "split", required=False).upper(),
        "false_premise": as_label(premise, "false_premise") if premise not in (None, "") else False,
        "fact_type": text(row, "fact_type", required=False),
    }
    return QA(TEMPLATE.format(question=question), answers[0], extra)


DATASET = NamedDataset(
    name="freshqa",
    # The official FreshQA data is a Google Sheet (github.com/freshllms/freshqa), re-versioned weekly; read an
    # export with `path:` (csv in the sheet's layout). The `split` column (TEST/DEV) is kept as an extra.
    hub_id="freshllms/freshqa",
    subset=None,
    splits={"train": "train"},
    converters=qa_converters(parse),
    description="FreshQA (the sheet's csv): question -> first answer; `answers` = answer_0..9, `split` TEST/DEV.",
)
