"""Stable 64-bit hashes of tokens and of token n-grams, vectorised with numpy (uint64 arithmetic wraps)."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

_U64 = np.uint64
_CACHE_LIMIT = 4_000_000  # distinct words kept in memory before the cache starts over


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole 64-bit output (a bijection)."""
    values = values ^ (values >> _U64(30))
    values *= _U64(0xBF58476D1CE4E5B9)
    values ^= values >> _U64(27)
    values *= _U64(0x94D049BB133111EB)
    values ^= values >> _U64(31)
    return values


class TokenHasher:
    """Maps words to nonzero 64-bit ids that do not depend on the run (blake2b), caching each distinct word."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def ids(self, tokens: Sequence[str]) -> list[int]:
        get = self._ids.get
        return [get(token) or self._add(token) for token in tokens]

    def _add(self, token: str) -> int:
        if len(self._ids) >= _CACHE_LIMIT:
            self._ids.clear()
        value = int.from_bytes(blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
        value |= 1  # never 0: 0 pads the end of each document
        self._ids[token] = value
        return value


def char_ids(text: str) -> np.ndarray:
    """Nonzero 64-bit ids of the characters of `text` (mixed code points)."""
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(_U64)
    return mix(points + _U64(0x9E3779B97F4A7C15)) | _U64(1)


class NgramHasher:
    """Hashes every n-gram of many token-id sequences at once. The hash of tokens t_0..t_{n-1} is
    mix(sum c_j * t_j) with fixed random odd c_j, so it depends on order; a sequence shorter than n
    (but not empty) gives one hash of all its tokens."""

    def __init__(self, n: int, seed: int = 0x5EED) -> None:
        self.n = n
        rng = np.random.default_rng(seed)
        self._coefficients = rng.integers(0, 2**64, n, dtype=_U64) | _U64(1)

    def hashes(self, sequences: Sequence[Sequence[int] | np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, offsets): sequence i's n-gram hashes are `hashes[offsets[i]:offsets[i + 1]]`."""
        n = self.n
        if not sequences:
            return np.zeros(0, dtype=_U64), np.zeros(1, dtype=np.int64)
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = _padded(sequences, lengths, n - 1)
        windows = len(flat) - (n - 1)
        combined = flat[:windows] * self._coefficients[0]
        for j in range(1, n):
            combined += flat[j : j + windows] * self._coefficients[j]
        counts = np.where(lengths > 0, np.maximum(lengths - n + 1, 1), 0)
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        starts = np.zeros(len(sequences), dtype=np.int64)
        np.cumsum(lengths[:-1] + (n - 1), out=starts[1:])
        within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], counts)
        return mix(combined[np.repeat(starts, counts) + within]), offsets


def _padded(sequences: Sequence[Sequence[int] | np.ndarray], lengths: np.ndarray, pad: int) -> np.ndarray:
    """All sequences in one uint64 array, each followed by `pad` zeros (zeros add nothing to a hash)."""
    if sequences and isinstance(sequences[0], np.ndarray):
        zeros = np.zeros(pad, dtype=_U64)
        parts = [part for seq in sequences for part in (seq, zeros)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=_U64)
    flat: list[int] = []
    tail = [0] * pad
    for seq in sequences:
        flat.extend(seq)
        flat.extend(tail)
    return np.array(flat, dtype=_U64)
