"""Metric arithmetic: means with standard errors, ROUGE (rouge-score), BLEU (sacrebleu), perplexity.

Exact match, token F1 and answer grading live in `llm_finetuning.rewards` and are used from there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float]:
    """The mean and its standard error (sample standard deviation / sqrt(n)); the error is 0.0 for n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def summarise(records: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """`name` (the mean over records) and `name_stderr` for each per-example metric."""
    out: dict[str, float] = {}
    for name in names:
        mean, stderr = mean_and_stderr([float(r[name]) for r in records])
        out[name], out[f"{name}_stderr"] = mean, stderr
    return out


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    # Porter stemming, as in the summarisation literature and Hugging Face `evaluate`'s default.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F1 of `prediction` against `reference` (rouge-score: lower-cased, split on
    anything but ASCII letters and digits, Porter-stemmed). Empty text on either side gives 0.0."""
    scores = _rouge_scorer().score(reference, prediction)  # rouge-score takes (target, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU (0-100, 13a tokenisation, exponential smoothing of zero counts): n-gram counts
    and lengths are summed over all pairs before the precisions and the brevity penalty are computed."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    """sacrebleu's sentence BLEU (0-100; effective order, so short sentences are not all 0)."""
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(total negative log-likelihood / scored tokens): token-weighted, so long documents count more."""
    if tokens <= 0:
        return float("nan")
    return math.exp(nll_sum / tokens)
