"""OpenR1-Math-220k: competition math problems with DeepSeek-R1 reasoning traces checked by math-verify."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import QA, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = "{problem}\n\nReason step by step and put your final answer within \\boxed{{}}."


def verified_trace(row: dict[str, Any]) -> str | None:
    """The first generation that math-verify judged correct and that finished its reasoning, if any."""
    generations = row.get("generations") or []
    verified = row.get("correctness_math_verify") or []
    complete = row.get("is_reasoning_complete") or [True] * len(generations)
    if not isinstance(generations, list) or not isinstance(verified, list) or not isinstance(complete, list):
        raise RowError("fields `generations`, `correctness_math_verify`, `is_reasoning_complete` must be lists")
    for trace, ok, done in zip(generations, verified, complete, strict=False):
        if ok and done and isinstance(trace, str) and trace.strip():
            return trace.strip()
    return None


def parse(row: dict[str, Any]) -> QA:
    """SFT target: a verified R1 trace when the row has one, else the reference `solution`."""
    problem = text(row, "problem")
    target = verified_trace(row) or text(row, "solution")
    return QA(TEMPLATE.format(problem=problem), target, {"answer": text(row, "answer", required=False)})


DATASET = NamedDataset(
    name="openr1_math",
    hub_id="open-r1/OpenR1-Math-220k",
    subset="default",
    splits={"train": "train"},
    converters=qa_converters(parse),
    description="OpenR1-Math: problem -> first verified R1 trace (else the solution); prompt_only keeps `answer`.",
)
