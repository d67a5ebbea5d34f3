"""Multiple choice by log-likelihood: which option text does the model find most likely after the prompt?

The context is the prompt rendered exactly as for generation (the chat template with the assistant turn
opened); each option's continuation is its text, tokenized on its own and appended, so every option is scored
on exactly its own tokens. Two choices are reported, as lm-evaluation-harness does: `acc` takes the highest
sum of log-probabilities, `acc_norm` the highest sum per UTF-8 byte of the option text (long options are not
penalised for their length, and bytes do not depend on the tokenizer).

A row longer than the model's context keeps its continuation whole and loses context tokens from the left (as
lm-evaluation-harness does); the last continuation token is then not fed, since it is only ever a target. The
number of context tokens each option lost is reported. An option that cannot fit even with one context token
raises `ContinuationTooLong`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


class ContinuationTooLong(ValueError):
    """An option's tokens alone do not fit the model's context."""


@dataclass
class OptionScores:
    logprobs: list[float]
    """Sum of log p(option token | context, earlier option tokens), one per option."""
    byte_lengths: list[int]
    """UTF-8 bytes of each option's text (the `acc_norm` divisor)."""
    dropped: list[int] = field(default_factory=list)
    """Context tokens cut from the left of each option's row to fit the model's context (0: none)."""

    @property
    def truncated(self) -> bool:
        return any(self.dropped)

    @property
    def normalised(self) -> list[float]:
        return [lp / max(n, 1) for lp, n in zip(self.logprobs, self.byte_lengths, strict=True)]

    @property
    def best(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)

    @property
    def best_normalised(self) -> int:
        normalised = self.normalised
        return max(range(len(normalised)), key=normalised.__getitem__)


def continuation_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """An option's tokens: its text encoded alone, without special tokens."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_row(context_ids: list[int], continuation: list[int], max_length: int | None) -> tuple[list[int], int, int]:
    """The tokens fed for one option, where its continuation starts in them, and how many context tokens were
    cut from the left. A row that fits is the context and the continuation, unchanged."""
    row = context_ids + continuation
    if max_length is None or len(row) <= max_length:
        return row, len(context_ids), 0
    # The last continuation token is a target only: max_length inputs score max_length + 1 tokens.
    keep = max_length + 1 - len(continuation)
    if keep < 1:
        raise ContinuationTooLong(
            f"an option of {len(continuation)} tokens does not fit the model's context of {max_length} tokens"
        )
    dropped = len(context_ids) - keep
    return (context_ids[dropped:] + continuation)[:-1], keep, dropped


@torch.no_grad()
def _score_rows(
    model: PreTrainedModel, rows: list[tuple[list[int], int]], continuations: list[list[int]], batch_size: int
) -> list[float]:
    """Sum of the continuation's log-probabilities in each (fed tokens, continuation start) row (right-padded
    batches; the padding is masked and sits after every scored position, so it changes nothing)."""
    scores: list[float] = []
    pad = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r, _ in chunk)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=model.device)
        log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, ((_, begin), cont) in enumerate(zip(chunk, continuations[start : start + batch_size], strict=True)):
            if not cont:
                scores.append(0.0)
                continue
            positions = torch.arange(begin - 1, begin - 1 + len(cont), device=model.device)
            targets = torch.tensor(cont, device=model.device)
            scores.append(log_probs[row, positions, targets].double().sum().item())
    return scores


def score_continuations(
    model: PreTrainedModel,
    context_ids: list[int],
    continuations: list[list[int]],
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Sum of log-probabilities of each continuation after the context (rows longer than `max_length` cut
    from the left of the context, as `fit_row` does)."""
    fitted = [fit_row(context_ids, cont, max_length) for cont in continuations]
    return _score_rows(model, [(row, begin) for row, begin, _ in fitted], continuations, batch_size)


def score_options(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    options: list[str],
    batch_size: int = 8,
    max_length: int | None = None,
) -> OptionScores:
    """The log-likelihood of each option text after the rendered `context`. A leading space is added to an
    option when the context does not end in whitespace, so the option starts a new word. With `max_length`,
    rows longer than it lose context tokens from the left (see the module docstring)."""
    context_ids = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    if not context_ids:
        raise ValueError("the multiple-choice context is empty")
    joiner = "" if context[-1:].isspace() else " "
    texts = [joiner + option for option in options]
    continuations = [continuation_ids(tokenizer, t) for t in texts]
    fitted = [fit_row(context_ids, cont, max_length) for cont in continuations]
    logprobs = _score_rows(model, [(row, begin) for row, begin, _ in fitted], continuations, batch_size)
    return OptionScores(logprobs, [len(option.encode("utf-8")) for option in options], [d for _, _, d in fitted])
