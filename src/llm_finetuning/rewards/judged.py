"""Rewards scored by an LLM judge (see `llm_finetuning.judge`): built with a `JudgeClient`, which holds the
endpoint, the cache, the budget and the failure counts.

The judge sees the extracted answer (the `<answer>` block when the completion has one, else the whole
completion), the reference from the dataset row and, where the rubric needs it, the question. Every completion of
a batch is judged concurrently; a failed judgement gives the client's fallback score and is counted, never raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llm_finetuning.judge.rubrics import RUBRICS, JudgeItem
from llm_finetuning.rewards.base import RewardFn, RewardSpec, completion_text, references_at
from llm_finetuning.rewards.extract import answer_or_text

ANSWER_COLUMNS = ("answers", "answer")
SUMMARY_COLUMNS = ("summary", "reference_summary", "highlights", "reference")
# Medical rows keep the option text or the rationale beside the short answer (`C` + `Metformin`).
MEDICAL_DETAIL_COLUMNS = ("answer_text", "long_answer")

ReferenceReader = Callable[[dict[str, Any], int], list[str]]


def prompt_text(prompt: Any) -> str:
    """The question of a prompt: the text of a plain prompt, or the last user turn of a conversational one."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return str(users[-1].get("content") or "")
    return completion_text(prompt)


def _answers(columns: dict[str, Any], index: int) -> list[str]:
    return references_at(columns, index, ANSWER_COLUMNS)


def _medical(columns: dict[str, Any], index: int) -> list[str]:
    references = _answers(columns, index)
    details = [str(columns[c][index]) for c in MEDICAL_DETAIL_COLUMNS if columns.get(c) and columns[c][index]]
    if len(references) == 1 and details:
        return [f"{references[0]} ({'; '.join(details)})"]
    return references


def _summary(columns: dict[str, Any], index: int) -> list[str]:
    return references_at(columns, index, SUMMARY_COLUMNS)


def _build(name: str, rubric_name: str, read_references: ReferenceReader) -> Callable[[Any], RewardFn]:
    rubric = RUBRICS[rubric_name]

    def build(client: Any) -> RewardFn:
        def reward(prompts: Sequence[Any] | None = None, completions: Sequence[Any] = (), **columns: Any):
            items = [
                JudgeItem(
                    answer=answer_or_text(completion_text(completion)),
                    references=tuple(read_references(columns, index)),
                    question=prompt_text(prompts[index]) if prompts is not None else "",
                )
                for index, completion in enumerate(completions)
            ]
            return client.score_many(rubric, items)

        reward.__name__ = name  # TRL names the reward's metrics after the function
        return reward

    return build


def _spec(
    name: str, rubric_name: str, description: str, references: ReferenceReader, columns: tuple[str, ...]
) -> RewardSpec:
    return RewardSpec(
        name=name,
        description=description,
        kind="judge",
        build=_build(name, rubric_name, references),
        references=columns,
        max_value=1.0,
    )


_G_EVAL = (
    "scores factual accuracy, supporting evidence and completeness 1-5 each against the reference; the reward "
    "is the mean of (score - 1) / 4, in [0, 1]"
)

SPECS = [
    _spec(
        "judge_multihop",
        "multihop_qa",
        f"LLM judge for multi-hop QA: {_G_EVAL}. Reads `answers` or `answer` and the question.",
        _answers,
        ANSWER_COLUMNS,
    ),
    _spec(
        "judge_medical",
        "medical_qa",
        f"LLM judge for medical QA (clinical framing): {_G_EVAL}. Reads `answers` or `answer` (with `answer_text` "
        "or `long_answer` when present) and the question.",
        _medical,
        ANSWER_COLUMNS,
    ),
    _spec(
        "judge_summarization",
        "summarization",
        "LLM judge for summaries: consistency with the source (the prompt), relevance and coherence 1-5 each; "
        "the reward is the mean of (score - 1) / 4, in [0, 1]. A reference summary (`summary`, "
        "`reference_summary`, `highlights` or `reference`) is shown when the row has one.",
        _summary,
        (),
    ),
    _spec(
        "judge_relevancy",
        "answer_relevancy",
        "LLM judge of answer relevancy: how directly the answer addresses the question (not whether it is "
        "right), 1-5, mapped to (score - 1) / 4 in [0, 1]. Needs no reference.",
        lambda columns, index: [],
        (),
    ),
    _spec(
        "judge_correctness",
        "correctness",
        "LLM judge of binary correctness: 1.0 when the judge says the answer means the same as the reference "
        "(`answers` or `answer`, any of them), else 0.0.",
        _answers,
        ANSWER_COLUMNS,
    ),
]
