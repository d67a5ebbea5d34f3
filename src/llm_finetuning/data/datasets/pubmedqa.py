"""PubMedQA (PQA-L): yes/no/maybe questions on PubMed abstracts, the long answer as the rationale."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import MAX_CONTEXT_CHARS, QA, clip, pick, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = (
    "Abstract:\n{context}\n\nQuestion: {question}\n\n"
    "Explain briefly from the abstract, then end with `The answer is yes.`, `no.` or `maybe.`"
)
COMPLETION = "{rationale}\n\nThe answer is {decision}."
DECISIONS = ("yes", "no", "maybe")


def abstract(row: dict[str, Any], max_context_chars: int) -> str:
    """The abstract's sections as `LABEL: text` paragraphs: hub `context: {contexts, labels}` or the original
    file's `CONTEXTS`/`LABELS`."""
    sections = pick(row, "context.contexts", "CONTEXTS", "contexts")
    labels = pick(row, "context.labels", "LABELS", "labels", required=False) or []
    if isinstance(sections, str):
        sections = [sections]
    if not isinstance(sections, list) or not sections or not all(isinstance(s, str) for s in sections):
        raise RowError("field `context.contexts` (or `CONTEXTS`) must be a non-empty list of passages")
    if not isinstance(labels, list) or len(labels) != len(sections):
        labels = [""] * len(sections)
    body = "\n\n".join(
        f"{label}: {section}" if label else section for label, section in zip(labels, sections, strict=True)
    )
    return clip(body, max_context_chars)


def parse(row: dict[str, Any], max_context_chars: int = MAX_CONTEXT_CHARS) -> QA:
    question = text(row, "question", "QUESTION")
    decision = text(row, "final_decision", "FINAL_DECISION").lower()
    if decision not in DECISIONS:
        raise RowError(f"field `final_decision` is `{decision}`; expected yes, no or maybe")
    rationale = text(row, "long_answer", "LONG_ANSWER")
    prompt = TEMPLATE.format(context=abstract(row, max_context_chars), question=question)
    completion = COMPLETION.format(rationale=rationale, decision=decision)
    return QA(prompt, completion, {"answer": decision, "long_answer": rationale})


def to_retrieval(row: dict[str, Any]) -> dict[str, Any]:
    """The question as the query and its own abstract as the relevant document (embedding and reranker data)."""
    return {"query": text(row, "question", "QUESTION"), "positive": abstract(row, MAX_CONTEXT_CHARS), "negatives": []}


def to_labeled_text(row: dict[str, Any]) -> dict[str, Any]:
    """The question with its abstract as the text pair, labelled yes, no or maybe (classification)."""
    decision = text(row, "final_decision", "FINAL_DECISION").lower()
    if decision not in DECISIONS:
        raise RowError(f"field `final_decision` is `{decision}`; expected yes, no or maybe")
    question = text(row, "question", "QUESTION")
    return {"text": question, "text_pair": abstract(row, MAX_CONTEXT_CHARS), "label": decision}


def to_text(row: dict[str, Any]) -> dict[str, Any]:
    """Question, abstract and the expert's long answer as one document (language modelling on the domain)."""
    question, answer = text(row, "question", "QUESTION"), text(row, "long_answer", "LONG_ANSWER")
    return {"text": f"Question: {question}\n\n{abstract(row, MAX_CONTEXT_CHARS)}\n\nAnswer: {answer}"}


DATASET = NamedDataset(
    name="pubmedqa",
    hub_id="qiaojin/PubMedQA",
    subset="pqa_labeled",
    splits={"train": "train"},
    converters={**qa_converters(parse), "retrieval": to_retrieval, "labeled_text": to_labeled_text, "text": to_text},
    description="PubMedQA expert-labelled: abstract + question -> long answer, then `The answer is yes/no/maybe.`; "
    "also question -> its abstract (retrieval), question + abstract -> yes/no/maybe (classification), and question, "
    "abstract and long answer as one text",
)
