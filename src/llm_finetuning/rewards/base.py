"""What a reward is: a named function over a batch of completions, its data contract and its default weight.

A reward function follows TRL's GRPO convention: it is called with keyword arguments `prompts`, `completions`
(strings, or lists of chat messages for conversational data), `completion_ids` and every other dataset column
(one value per completion), and returns one float per completion. Extra keyword arguments are ignored, so a
reward names only the columns it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

RewardFn = Callable[..., list[float]]
RewardKind = Literal["correctness", "format", "judge"]


@dataclass(frozen=True)
class RewardSpec:
    """One reward of the library, as listed by `llmft rewards list` and checked before training."""

    name: str
    """The name used in configs: `method.rewards: [{name: answer_correctness}]`."""
    description: str
    """One paragraph: what it scores and the exact values it returns."""
    kind: RewardKind
    """`correctness` (compares with the reference), `format` (shape of the output only) or `judge` (an LLM)."""
    fn: RewardFn | None = None
    """The function; None for judged rewards, which are built with a judge client by `build`."""
    build: Callable[[Any], RewardFn] | None = None
    """Judged rewards: `build(judge_client)` returns the reward function."""
    references: tuple[str, ...] = ()
    """Dataset columns holding the reference; at least one must be present when this is not empty."""
    default_weight: float = 1.0
    """The weight used when the config gives none (chosen so that correctness dominates format)."""
    max_value: float | None = None
    """The highest value the reward returns, when bounded (used by `llmft rewards score` and the weight check)."""


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or TRL's conversational form (a list of messages, or one message)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return "" if completion is None else str(completion)


def references_at(columns: dict[str, Any], index: int, names: Sequence[str] = ("answers", "answer")) -> list[str]:
    """The acceptable reference answers of completion `index`: the first of `names` present in `columns`
    (a list column gives any-of answers, a string column one answer). Empty when none is present."""
    for name in names:
        values = columns.get(name)
        if values is None:
            continue
        value = values[index]
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value if v is not None and str(v).strip()]
        return [str(value)]
    return []
