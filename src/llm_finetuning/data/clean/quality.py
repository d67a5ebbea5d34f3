"""Heuristic quality filters: length, URL and digit ratios, repeated lines and repeated word n-grams."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from llm_finetuning.data.clean.config import QualityConfig
from llm_finetuning.data.clean.text import words

_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)


def url_ratio(text: str) -> float:
    """Fraction of the characters that belong to URLs."""
    return sum(len(url) for url in _URL.findall(text)) / len(text) if text else 0.0


def digit_ratio(text: str) -> float:
    """Fraction of the characters that are decimal digits."""
    return sum(char.isdecimal() for char in text) / len(text) if text else 0.0


def duplicate_line_ratio(text: str) -> float:
    """Fraction of the non-empty lines (stripped) that repeat an earlier line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (len(lines) - len(set(lines))) / len(lines) if lines else 0.0


def top_ngram_ratio(text: str, n: int) -> float:
    """Fraction of the words covered by the occurrences of the most frequent word n-gram (0 unless it occurs at
    least twice)."""
    tokens = words(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    top, count = Counter(grams).most_common(1)[0]
    if count < 2:
        return 0.0
    covered = bytearray(len(tokens))
    for i, gram in enumerate(grams):
        if gram == top:
            covered[i : i + n] = b"\x01" * n
    return sum(covered) / len(tokens)


def quality_problem(text: str, config: QualityConfig) -> str | None:
    """Why `text` fails the filters of `config` (the first failing one), or None when it passes."""
    chars = len(text)
    if config.min_chars is not None and chars < config.min_chars:
        return f"chars {chars} < min_chars {config.min_chars}"
    if config.max_chars is not None and chars > config.max_chars:
        return f"chars {chars} > max_chars {config.max_chars}"
    if config.min_words is not None or config.max_words is not None:
        count = len(text.split())
        if config.min_words is not None and count < config.min_words:
            return f"words {count} < min_words {config.min_words}"
        if config.max_words is not None and count > config.max_words:
            return f"words {count} > max_words {config.max_words}"
    ratios = (
        ("url ratio", config.max_url_ratio, url_ratio),
        ("digit ratio", config.max_digit_ratio, digit_ratio),
        ("duplicate line ratio", config.max_duplicate_line_ratio, duplicate_line_ratio),
        (f"top {config.top_ngram_size}-gram ratio", config.max_top_ngram_ratio, _top(config.top_ngram_size)),
    )
    for name, bound, measure in ratios:
        if bound is not None:
            value = measure(text)
            if value > bound:
                return f"{name} {value:.4g} > {bound:g}"
    return None


def quality_problems(texts: Sequence[str], config: QualityConfig) -> dict[int, str]:
    """{position: problem} for every text that fails a filter (none when no filter is set)."""
    if not config.active:
        return {}
    problems = ((position, quality_problem(text, config)) for position, text in enumerate(texts))
    return {position: problem for position, problem in problems if problem}


def _top(n: int):
    return lambda text: top_ngram_ratio(text, n)
