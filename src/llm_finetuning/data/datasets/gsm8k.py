"""GSM8K: grade-school math word problems whose worked answer ends with `#### <number>`."""

from __future__ import annotations

import re
from typing import Any

from llm_finetuning.data.datasets._common import QA, qa_converters, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import RowError

TEMPLATE = (
    "Solve the math problem. Reason step by step, then give the final answer on the last line as "
    "`#### <number>`.\n\nProblem: {question}"
)
FINAL = re.compile(r"####\s*(\S[^\n]*?)\s*$")


def final_answer(solution: str) -> str:
    """The number after the last `####`, thousands separators removed (`1,080` -> `1080`)."""
    match = FINAL.search(solution)
    if match is None:
        raise RowError("field `answer` does not end with `#### <number>`")
    return match.group(1).replace(",", "")


def parse(row: dict[str, Any]) -> QA:
    question, solution = text(row, "question"), text(row, "answer")
    # SFT learns the whole worked solution and its `#### N` line; GRPO/PPO rewards compare with N alone.
    return QA(TEMPLATE.format(question=question), solution, {"answer": final_answer(solution)})


DATASET = NamedDataset(
    name="gsm8k",
    hub_id="openai/gsm8k",
    subset="main",
    splits={"train": "train", "test": "test"},
    converters=qa_converters(parse),
    description="Grade-school math; SFT on the worked solution + `#### N`, prompt_only keeps `answer` = N.",
)
