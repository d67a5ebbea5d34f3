"""Earnings-call QA: questions about a company's quarterly earnings-call transcript."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import MAX_CONTEXT_CHARS, QA, clip, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset

TEMPLATE = "Earnings call transcript{about}:\n{context}\n\nQuestion: {question}\n\nAnswer from the transcript."


def heading(row: dict[str, Any]) -> str:
    """` of Company (TICK), 2023-Q1, 2023-04-20` from whichever of company/ticker/q/date are present."""
    company, ticker = text(row, "company", required=False), text(row, "ticker", required=False)
    who = f"{company} ({ticker})" if company and ticker else company or ticker
    parts = [p for p in (who, text(row, "q", required=False), text(row, "date", required=False)) if p]
    return f" of {', '.join(parts)}" if parts else ""


def parse(row: dict[str, Any], max_context_chars: int = MAX_CONTEXT_CHARS) -> QA:
    question, answer = text(row, "question"), text(row, "answer")
    # The collection renamed `transcript` to `context`; accept both. Only the transcript is clipped.
    context = clip(text(row, "transcript", "context"), max_context_chars)
    prompt = TEMPLATE.format(about=heading(row), context=context, question=question)
    return QA(prompt, answer, {"answer": answer})


DATASET = NamedDataset(
    name="earnings_calls",
    hub_id="lamini/earnings-calls-qa",
    subset=None,
    splits={"train": "train", "test": "test"},
    converters=qa_converters(parse),
    description="Earnings-call QA: transcript (clipped to max_context_chars) + question -> answer.",
)
