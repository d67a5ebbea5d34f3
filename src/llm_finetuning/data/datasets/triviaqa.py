"""TriviaQA (reading comprehension): trivia questions with their Wikipedia and web evidence."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import MAX_CONTEXT_CHARS, QA, passages, pick, qa_converters, text, text_list
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "Evidence:\n{context}\n\nQuestion: {question}\n\nAnswer with a short phrase."
NO_CONTEXT = "Question: {question}\n\nAnswer with a short phrase."


def evidence(row: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(title, text, keep) of the Wikipedia pages, then the web search results, in the row's order.

    The hub stores each as columns of lists: `entity_pages: {title: [...], wiki_context: [...]}` and
    `search_results: {title: [...], search_context: [...]}`."""
    found: list[tuple[str, str, bool]] = []
    for group, body in (("entity_pages", "wiki_context"), ("search_results", "search_context")):
        columns = row.get(group) or {}
        if not isinstance(columns, dict):
            raise RowError(f"field `{group}` must be an object of lists")
        bodies = columns.get(body) or []
        titles = columns.get("title") or [""] * len(bodies)
        if not isinstance(bodies, list) or len(titles) != len(bodies):
            raise RowError(f"field `{group}.{body}` must be a list with one entry per `{group}.title`")
        found += [(str(title), str(text_), True) for title, text_ in zip(titles, bodies, strict=True)]
    return found


def parse(row: dict[str, Any], max_context_chars: int = MAX_CONTEXT_CHARS) -> QA:
    question = text(row, "question")
    value = text(row, "answer.value")
    answers = [value, *text_list(pick(row, "answer.aliases", required=False) or [], "answer.aliases")]
    answers = list(dict.fromkeys(answers))
    context = passages(evidence(row), max_context_chars)
    prompt = TEMPLATE.format(context=context, question=question) if context else NO_CONTEXT.format(question=question)
    return QA(prompt, value, {"answers": answers})


DATASET = NamedDataset(
    name="triviaqa",
    hub_id="mandarjoshi/trivia_qa",
    subset="rc",
    splits={"train": "train", "eval": "validation", "test": "test"},
    converters=qa_converters(parse),
    description="TriviaQA rc: evidence (clipped to max_context_chars) + question -> answer; `answers` = aliases.",
)
