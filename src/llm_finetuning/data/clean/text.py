"""Text of a record and the normalisations shared by the cleaning steps."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

TextOf = Callable[[Mapping[str, Any]], str]

# Keys whose values label a message rather than carry its text.
_LABEL_KEYS = frozenset({"role", "from"})
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def default_text_of(record: Mapping[str, Any]) -> str:
    """Every string value of the record joined by newlines, in key order; nested lists and dicts (a `messages`
    list, ShareGPT `conversations`) contribute their text fields. Keys starting with `_` and message labels
    (`role`, `from`) are skipped."""
    parts: list[str] = []
    _collect(record, parts)
    return "\n".join(parts)


def _collect(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if not (isinstance(key, str) and (key.startswith("_") or key in _LABEL_KEYS)):
                _collect(item, parts)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect(item, parts)


def fold(text: str) -> str:
    """NFKC and casefold: the case- and width-insensitive form every comparison starts from."""
    return unicodedata.normalize("NFKC", text).casefold()


def normalize(text: str) -> str:
    """The key of exact deduplication: folded, whitespace collapsed, punctuation stripped at both ends."""
    text = _SPACE.sub(" ", fold(text)).strip()
    start, end = 0, len(text)
    while start < end and _is_edge(text[start]):
        start += 1
    while end > start and _is_edge(text[end - 1]):
        end -= 1
    return text[start:end]


def _is_edge(char: str) -> bool:
    return char == " " or unicodedata.category(char).startswith("P")


def words(text: str) -> list[str]:
    """Folded runs of letters, digits and underscores: the words of near-dedup and decontamination."""
    return _WORD.findall(fold(text))


def collapse(text: str) -> str:
    """Folded text with whitespace collapsed: the string of character shingles."""
    return _SPACE.sub(" ", fold(text)).strip()
