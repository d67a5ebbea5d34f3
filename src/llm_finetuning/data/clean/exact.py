"""Exact-duplicate removal on normalised text: the first occurrence is kept."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from hashlib import blake2b

from llm_finetuning.data.clean.text import normalize


def exact_key(text: str) -> bytes:
    """16 bytes that are equal exactly when the normalised texts are (up to a 2^-128 collision)."""
    return blake2b(normalize(text).encode("utf-8", "surrogatepass"), digest_size=16).digest()


def repeated_keys(keys: Iterable[bytes]) -> dict[int, int]:
    """{position: earlier position with the same key} for every key seen before."""
    first: dict[bytes, int] = {}
    found: dict[int, int] = {}
    for index, key in enumerate(keys):
        seen = first.setdefault(key, index)
        if seen != index:
            found[index] = seen
    return found


def exact_duplicates(texts: Sequence[str]) -> dict[int, int]:
    """{position: earlier position it repeats} for every text whose normalised form was seen before."""
    return repeated_keys(exact_key(text) for text in texts)
