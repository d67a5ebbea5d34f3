"""BioASQ (task B, as question/answer pairs): biomedical questions with an ideal answer."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import QA, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset

TEMPLATE = "Answer the biomedical question concisely.\n\nQuestion: {question}"


def parse(row: dict[str, Any]) -> QA:
    """`question` and `answer`; the relevant passages are only ids into a separate corpus, so no context."""
    question, answer = text(row, "question"), text(row, "answer", "ideal_answer")
    return QA(TEMPLATE.format(question=question), answer, {"answer": answer})


DATASET = NamedDataset(
    name="bioasq",
    # bigbio/bioasq_task_b needs a manual download from bioasq.org; this is the public question-answer subset.
    hub_id="enelpol/rag-mini-bioasq",
    subset="question-answer-passages",
    splits={"train": "train", "test": "test"},
    converters=qa_converters(parse),
    description="BioASQ question/answer pairs (no passages): question -> ideal answer.",
)
