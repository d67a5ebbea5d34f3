"""The reward contract of the PPO trainer, and an adapter that turns a reward model into a reward function."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class RewardFn(Protocol):
    """Scores completions: one float per (prompt, completion) pair, in order.

    `prompts` are the prompt texts as the policy saw them (chat prompts rendered with the chat template);
    `extras` are further dataset columns (e.g. a reference answer), one list per column aligned with `prompts`.
    """

    def __call__(self, prompts: list[str], completions: list[str], **extras: Any) -> list[float]: ...


class RewardModelScorer:
    """A reward function backed by a sequence-classification reward model with one output (a scalar score).

    The text scored is prompt + completion, tokenized by the reward model's own tokenizer, in batches.
    `add_special_tokens` is off because chat-rendered prompts already carry their special tokens (a BOS added
    twice shifts the score); turn it on for plain-text prompts to a model that expects a BOS.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 16,
        max_length: int | None = None,
        add_special_tokens: bool = False,
    ) -> None:
        if model.config.num_labels != 1:
            raise ValueError(f"a reward model has one output (num_labels=1); this one has {model.config.num_labels}")
        if tokenizer.pad_token_id is None:
            # Padding is needed to batch; the model finds each row's last real token through pad_token_id.
            tokenizer.pad_token = tokenizer.eos_token
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.add_special_tokens = add_special_tokens

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str], **extras: Any) -> list[float]:
        texts = [prompt + completion for prompt, completion in zip(prompts, completions, strict=True)]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=self.max_length is not None,
                max_length=self.max_length,
                add_special_tokens=self.add_special_tokens,
            ).to(device)
            scores.extend(self.model(**batch).logits[:, 0].float().tolist())
        return scores


def check_scores(scores: Sequence[float], expected: int) -> list[float]:
    """The reward function's output as floats, or an error that says what is wrong with it."""
    values = [float(score) for score in scores]
    if len(values) != expected:
        raise ValueError(f"the reward function returned {len(values)} scores for {expected} completions")
    bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
    if bad:
        raise ValueError(f"the reward function returned non-finite scores at positions {bad[:10]}")
    return values
