"""Sliding-window negative log-likelihood of documents: every token after the first scored exactly once.

A document longer than the window is read in windows of `window` tokens that start `stride` tokens apart. In
each window only the tokens not scored by an earlier window are scored, so each of them sees at least
`window - stride` tokens of context (all of the window when `stride = window`, which is the plain
non-overlapping computation). The first token of a document has no context and is never scored; with
`stride = window` neither is the first token of each window. Sums are exact (per-token log-probabilities in
float32 and float64 sums), not averages of window means.

No window is longer than the model's context (`context.context_length`): the default window is the context,
at most 1024 tokens, and a `window` above the context is lowered to it with a warning (a `stride` above the
lowered window with it), so the model never sees positions it was not built for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 1024


@dataclass
class DocumentNLL:
    nll: float
    """Sum of -log p(token | preceding tokens in its window) over the scored tokens (nats)."""
    tokens: int
    """How many tokens were scored."""


def default_window(limit: int | None) -> int:
    """The model's context (`limit`; unknown: 1024), capped at 1024 tokens."""
    return min(limit or DEFAULT_WINDOW, DEFAULT_WINDOW)


def choose_window(window: int | None, stride: int | None, limit: int | None) -> tuple[int, int]:
    """The (window, stride) to read documents with: the task's, else the defaults, never past `limit`."""
    chosen = window or default_window(limit)
    if limit is not None and chosen > limit:
        logger.warning(
            "perplexity: `window` %d is longer than the model's context of %d tokens; using %d, stride at most "
            "that (set eval.tasks[].window to at most %d, or eval.max_length if the model reads longer sequences)",
            chosen,
            limit,
            limit,
            limit,
        )
        chosen = limit
    return chosen, min(stride or chosen, chosen)


def windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over `length` tokens; positions are 0-based and a
    position p is scored from the logits at p - 1."""
    if window < 2 or not 0 < stride <= window:
        raise ValueError(f"need window >= 2 and 0 < stride <= window, got window={window}, stride={stride}")
    spans = []
    scored_until = 1  # position 0 is never scored
    for begin in range(0, max(length - 1, 1), stride):
        end = min(begin + window, length)
        first = max(scored_until, begin + 1)
        if first < end:
            spans.append((begin, end, first))
        scored_until = max(scored_until, end)
        if end >= length:
            break
    return spans


@torch.no_grad()
def document_nll(model: PreTrainedModel, input_ids: list[int], window: int, stride: int) -> DocumentNLL:
    """The summed NLL of one tokenized document under the sliding window."""
    total, count = 0.0, 0
    device = model.device
    for begin, end, first in windows(len(input_ids), window, stride):
        ids = torch.tensor([input_ids[begin:end]], device=device)
        logits = model(input_ids=ids).logits[0].float()
        log_probs = torch.log_softmax(logits[first - begin - 1 : end - begin - 1], dim=-1)
        targets = ids[0, first - begin : end - begin]
        total += -log_probs.gather(1, targets[:, None]).double().sum().item()
        count += end - first
    return DocumentNLL(total, count)


def tokenize_document(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The document's tokens as the model reads plain text: with the tokenizer's special tokens (a BOS gives
    the first real token a context)."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def corpus_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    window: int | None = None,
    stride: int | None = None,
    progress: Callable[[int], None] | None = None,
    max_length: int | None = None,
) -> list[DocumentNLL]:
    """The NLL of each document; `window` defaults to the model's context (at most 1024), `stride` to `window`;
    `max_length` overrides the context the model's config states."""
    from llm_finetuning.evaluation.context import context_length

    window, stride = choose_window(window, stride, context_length(model, tokenizer, max_length))
    results = []
    for text in texts:
        results.append(document_nll(model, tokenize_document(tokenizer, text), window, stride))
        if progress is not None:
            progress(1)
    return results
