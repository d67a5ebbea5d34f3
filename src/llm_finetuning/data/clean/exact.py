"""Exact-duplicate removal on normalised text: the first occurrence is kept."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

from llm_finetuning.data.clean.text import normalize


def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    """{position: earlier position it repeats} for every text whose normalised form was seen before."""
    first: dict[bytes, int] = {}
    found: dict[int, int] = {}
    for index, text in enumerate(texts):
        key = blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()
        seen = first.setdefault(key, index)
        if seen != index:
            found[index] = seen
    return found
