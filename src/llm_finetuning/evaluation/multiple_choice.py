"""Multiple choice by log-likelihood: which option text does the model find most likely after the prompt?

The context is the prompt rendered exactly as for generation (the chat template with the assistant turn
opened); each option's continuation is its text, tokenized on its own and appended, so every option is scored
on exactly its own tokens. Two choices are reported, as lm-evaluation-harness does: `acc` takes the highest
sum of log-probabilities, `acc_norm` the highest sum per UTF-8 byte of the option text (long options are not
penalised for their length, and bytes do not depend on the tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class OptionScores:
    logprobs: list[float]
    """Sum of log p(option token | context, earlier option tokens), one per option."""
    byte_lengths: list[int]
    """UTF-8 bytes of each option's text (the `acc_norm` divisor)."""

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


@torch.no_grad()
def score_continuations(
    model: PreTrainedModel,
    context_ids: list[int],
    continuations: list[list[int]],
    batch_size: int = 8,
) -> list[float]:
    """Sum of log-probabilities of each continuation after the context (right-padded batches; the padding
    is masked and sits after every scored position, so it changes nothing)."""
    scores: list[float] = []
    pad = 0
    for start in range(0, len(continuations), batch_size):
        chunk = continuations[start : start + batch_size]
        rows = [context_ids + cont for cont in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
        log_probs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
        for row, cont in enumerate(chunk):
            if not cont:
                scores.append(0.0)
                continue
            positions = torch.arange(len(context_ids) - 1, len(context_ids) - 1 + len(cont), device=model.device)
            targets = torch.tensor(cont, device=model.device)
            scores.append(log_probs[row, positions, targets].double().sum().item())
    return scores


def score_options(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    context: str,
    options: list[str],
    batch_size: int = 8,
) -> OptionScores:
    """The log-likelihood of each option text after the rendered `context`. A leading space is added to an
    option when the context does not end in whitespace, so the option starts a new word."""
    context_ids = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    if not context_ids:
        raise ValueError("the multiple-choice context is empty")
    joiner = "" if context[-1:].isspace() else " "
    texts = [joiner + option for option in options]
    logprobs = score_continuations(model, context_ids, [continuation_ids(tokenizer, t) for t in texts], batch_size)
    return OptionScores(logprobs, [len(option.encode("utf-8")) for option in options])
