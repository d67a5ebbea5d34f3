"""WebGPT comparisons: two browsing-assisted answers to a question, each rated by a human."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import pick, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import Record, RowError


def answer(row: dict[str, Any], index: int) -> str:
    """`answer_<i>`: a string on the hub (an object with `text` is accepted too)."""
    value = pick(row, f"answer_{index}")
    if isinstance(value, dict):
        value = value.get("text")
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field `answer_{index}` is empty")
    return value.strip()


def score(row: dict[str, Any], index: int) -> float:
    value = pick(row, f"score_{index}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError(f"field `score_{index}` must be a number, got {value!r}")
    return float(value)


def to_preference(row: dict[str, Any]) -> Record:
    """The higher-scored answer is chosen; equal scores express no preference, so such a row is refused."""
    question = text(row, "question.full_text", "question")
    first, second = score(row, 0), score(row, 1)
    if first == second:
        raise RowError(f"fields `score_0` and `score_1` tie ({first}), so there is no preference to learn")
    chosen, rejected = (0, 1) if first > second else (1, 0)
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": answer(row, chosen)}],
        "rejected": [{"role": "assistant", "content": answer(row, rejected)}],
    }


def to_prompt_only(row: dict[str, Any]) -> Record:
    """The question alone, for PPO/GRPO sampling their own answers (ties are fine: no preference is read)."""
    return {"prompt": [{"role": "user", "content": text(row, "question.full_text", "question")}]}


DATASET = NamedDataset(
    name="webgpt",
    hub_id="openai/webgpt_comparisons",
    subset=None,
    splits={"train": "train"},
    converters={"preference": to_preference, "prompt_only": to_prompt_only},
    description="WebGPT comparisons: question, higher-scored answer chosen (ties refused); prompt_only: question.",
)
