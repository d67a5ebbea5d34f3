"""Programmatic rewards for the PPO tests (imported by `method.reward_function`)."""

from __future__ import annotations


def digits(prompts: list[str], completions: list[str], **extras: object) -> list[float]:
    """The fraction of completion characters that are ASCII digits (about 4% for a random byte-level model)."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]
