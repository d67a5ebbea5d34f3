"""MuSiQue: 2-4 hop questions composed from single-hop ones, each with 20 paragraphs (some supporting)."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import MAX_CONTEXT_CHARS, QA, passages, pick, qa_converters, text, text_list
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "Passages:\n{context}\n\nQuestion: {question}\n\nAnswer with a short phrase."


def paragraphs(row: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(title, text, supporting) of `paragraphs: [{title, paragraph_text, is_supporting}]` in their order."""
    raw = pick(row, "paragraphs")
    if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
        raise RowError("field `paragraphs` must be a list of {title, paragraph_text, is_supporting} objects")
    return [(str(p.get("title") or ""), str(p.get("paragraph_text") or ""), bool(p.get("is_supporting"))) for p in raw]


def parse(row: dict[str, Any], max_context_chars: int = MAX_CONTEXT_CHARS) -> QA:
    if row.get("answerable") is False:
        # The full MuSiQue release pairs each question with an unanswerable twin; its answer is not supported.
        raise RowError("field `answerable` is false: the paragraphs do not support the answer")
    question, answer = text(row, "question"), text(row, "answer")
    aliases = text_list(pick(row, "answer_aliases", required=False) or [], "answer_aliases")
    context = passages(paragraphs(row), max_context_chars)
    prompt = TEMPLATE.format(context=context, question=question)
    return QA(prompt, answer, {"answers": list(dict.fromkeys([answer, *aliases]))})


DATASET = NamedDataset(
    name="musique",
    hub_id="dgslibisey/MuSiQue",
    subset=None,
    splits={"train": "train", "eval": "validation"},
    converters=qa_converters(parse),
    description="MuSiQue: paragraphs (non-supporting dropped first past max_context_chars) + question -> answer.",
)
