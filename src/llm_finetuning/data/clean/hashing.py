"""Stable 64-bit hashes of tokens and of token n-grams, vectorised with numpy (uint64 arithmetic wraps)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from llm_finetuning.data.clean.text import fold

_U64 = np.uint64


def mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole 64-bit output (a bijection)."""
    values = values ^ (values >> _U64(30))
    values *= _U64(0xBF58476D1CE4E5B9)
    values ^= values >> _U64(27)
    values *= _U64(0x94D049BB133111EB)
    values ^= values >> _U64(31)
    return values


# Bytes of folded text: an ASCII byte that is not a word character becomes a space; UTF-8 sequences pass.
_WORD_OR_UTF8 = bytes(c if c >= 128 or chr(c).isalnum() or c == 95 else 32 for c in range(256))
_SPACE = 32
_POSITION_WEIGHTS = 1 << 12  # distinct random weights per byte position; longer words reuse them cyclically


@lru_cache(maxsize=1)
def _position_weights() -> np.ndarray:
    return np.random.default_rng(0x70C3).integers(0, 2**64, _POSITION_WEIGHTS, dtype=_U64) | _U64(1)


def word_bytes(text: str) -> bytes:
    """The words of `text` (see `text.words`) as UTF-8, separated by spaces: one byte translation, then each
    distinct non-ASCII character that is not a word character replaced (UTF-8 never matches inside another
    character). Several times faster than the regular expression, with the same words."""
    if text.isascii():  # NFKC leaves ASCII alone and casefolds it to lowercase
        return text.encode("ascii").lower().translate(_WORD_OR_UTF8)
    folded = fold(text)
    data = folded.encode("utf-8", "surrogatepass").translate(_WORD_OR_UTF8)
    for char in set(folded):
        if char > "\x7f" and not (char.isalnum() or char == "_"):
            data = data.replace(char.encode("utf-8", "surrogatepass"), b" ")
    return data


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, offsets): nonzero 64-bit hashes of the words of each text, in order, text i's being
    `hashes[offsets[i]:offsets[i + 1]]`. A word's hash depends only on its UTF-8 bytes (the same in every text
    and every run): mix(sum_k byte_k * w_k + length * phi) with fixed random odd weights w_k, computed for all
    words of all texts at once."""
    if not texts:
        return np.zeros(0, dtype=_U64), np.zeros(1, dtype=np.int64)
    parts = [word_bytes(text) for text in texts]
    buffer = np.frombuffer(b" ".join(parts), dtype=np.uint8)
    text_starts = np.zeros(len(parts), dtype=np.int64)
    np.cumsum(np.fromiter((len(part) + 1 for part in parts[:-1]), np.int64, len(parts) - 1), out=text_starts[1:])
    in_word = buffer != _SPACE
    edges = np.flatnonzero(np.diff(in_word, prepend=False, append=False))  # alternately a word's start and end
    word_starts, word_ends = edges[0::2], edges[1::2]
    counts = np.diff(np.searchsorted(word_starts, np.append(text_starts, len(buffer))))
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    letters = buffer[in_word].astype(_U64)
    lengths = word_ends - word_starts
    firsts = np.zeros(len(lengths), dtype=np.int64)  # each word's first byte among the letters
    np.cumsum(lengths[:-1], out=firsts[1:])
    # Position of each letter in its word: a running count that drops back to 0 at each word's first letter.
    step = np.ones(len(letters), dtype=np.int32)
    if len(letters):
        step[0] = 0
        step[firsts[1:]] = 1 - lengths[:-1]
    position = np.cumsum(step, dtype=np.int32)
    position &= _POSITION_WEIGHTS - 1
    letters *= _position_weights()[position]
    sums = np.add.reduceat(letters, firsts) if len(firsts) else np.zeros(0, dtype=_U64)
    sums += lengths.astype(_U64) * _U64(0x9E3779B97F4A7C15)
    return mix(sums) | _U64(1), offsets  # never 0: 0 pads the end of each sequence


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
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        parts = [np.asarray(s, dtype=_U64) for s in sequences if len(s)]
        return self.of_flat(np.concatenate(parts) if parts else np.zeros(0, dtype=_U64), offsets)

    def of_flat(self, tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same for sequences given flat: sequence i is `tokens[offsets[i]:offsets[i + 1]]`."""
        n = self.n
        count = len(offsets) - 1
        if count <= 0:
            return np.zeros(0, dtype=_U64), np.zeros(1, dtype=np.int64)
        lengths = np.diff(offsets)
        # Each sequence followed by n - 1 zeros (zeros add nothing to a hash), so no n-gram spans two sequences.
        flat = np.zeros(len(tokens) + count * (n - 1), dtype=_U64)
        flat[np.arange(len(tokens), dtype=np.int64) + (n - 1) * np.repeat(np.arange(count), lengths)] = tokens
        windows = len(flat) - (n - 1)
        combined = flat[:windows] * self._coefficients[0]
        for j in range(1, n):
            combined += flat[j : j + windows] * self._coefficients[j]
        counts = np.where(lengths > 0, np.maximum(lengths - n + 1, 1), 0)
        out_offsets = np.zeros(count + 1, dtype=np.int64)
        np.cumsum(counts, out=out_offsets[1:])
        starts = offsets[:-1] + (n - 1) * np.arange(count)
        within = np.arange(out_offsets[-1], dtype=np.int64) - np.repeat(out_offsets[:-1], counts)
        return mix(combined[np.repeat(starts, counts) + within]), out_offsets
