"""HotpotQA (distractor): multi-hop questions over Wikipedia paragraphs, two of which support the answer."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import MAX_CONTEXT_CHARS, QA, passages, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "Passages:\n{context}\n\nQuestion: {question}\n\nAnswer with a short phrase, or yes or no."
NO_CONTEXT = "Question: {question}\n\nAnswer with a short phrase, or yes or no."


def paragraphs(row: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(title, text, supporting) from the hub layout (`context: {title, sentences}`, `supporting_facts:
    {title, sent_id}`) or the original json (`context: [[title, sentences]]`, `supporting_facts: [[title, i]]`);
    none when the row has no context (e.g. question/answer-only copies)."""
    context, facts = row.get("context"), row.get("supporting_facts") or []
    if not context:
        return []
    if isinstance(context, dict):
        pairs = list(zip(context.get("title") or [], context.get("sentences") or [], strict=False))
    elif isinstance(context, list) and all(isinstance(p, list | tuple) and len(p) == 2 for p in context):
        pairs = [tuple(p) for p in context]
    else:
        raise RowError("field `context` must be {title, sentences} lists or [title, sentences] pairs")
    supporting = set(facts.get("title") or []) if isinstance(facts, dict) else {f[0] for f in facts if f}
    if not all(isinstance(sentences, list) for _, sentences in pairs):
        raise RowError("field `context` sentences must be lists of strings")
    # With no supporting facts every paragraph is kept; otherwise distractors are dropped first when too long.
    return [(title, "".join(sentences).strip(), not supporting or title in supporting) for title, sentences in pairs]


def parse(row: dict[str, Any], max_context_chars: int = MAX_CONTEXT_CHARS) -> QA:
    question, answer = text(row, "question"), text(row, "answer")
    context = passages(paragraphs(row), max_context_chars)
    prompt = TEMPLATE.format(context=context, question=question) if context else NO_CONTEXT.format(question=question)
    return QA(prompt, answer, {"answer": answer, "type": text(row, "type", required=False)})


DATASET = NamedDataset(
    name="hotpotqa",
    hub_id="hotpotqa/hotpot_qa",
    subset="distractor",
    splits={"train": "train", "eval": "validation"},
    converters=qa_converters(parse),
    description="HotpotQA distractor: paragraphs (distractors dropped first past max_context_chars) + question.",
)
