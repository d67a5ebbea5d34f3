"""Own reward functions for the GRPO tests (imported by `method.rewards[].function`)."""

from __future__ import annotations

from llm_finetuning.rewards.base import completion_text


def digit_share(completions: list, **columns: object) -> list[float]:
    """The fraction of completion characters that are ASCII digits: varies across a random model's samples."""
    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in texts]


def needs_answer(completions: list, answer: list) -> list[float]:
    """No `**kwargs`: TRL would also pass `prompts`, `completion_ids` and the other columns."""
    return [0.0 for _ in completions]


def wrong_length(completions: list, **columns: object) -> list[float]:
    return [1.0]


def not_finite(completions: list, **columns: object) -> list[float]:
    return [float("nan") for _ in completions]


def returns_none(completions: list, **columns: object) -> list:
    return [None for _ in completions]


def raises(completions: list, **columns: object) -> list[float]:
    raise KeyError("gold")


def needs_missing_column(completions: list, solution: list, **columns: object) -> list[float]:
    return [0.0 for _ in completions]


def states_answer(completions: list, answer: list, **columns: object) -> list[float]:
    """1.0 when the reference answer appears inside the completion's answer tags."""
    return [float(f"<answer>\n{a}\n</answer>" in completion_text(c)) for c, a in zip(completions, answer, strict=True)]


def fails_on_rank_1(completions: list, **columns: object) -> list[float]:
    """Works in the main process, raises in process 1: one failing rank must stop the whole run."""
    import os

    if os.environ.get("RANK") == "1":
        raise RuntimeError("reward service unreachable from rank 1")
    return [0.0 for _ in completions]
