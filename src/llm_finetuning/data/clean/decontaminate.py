"""Decontamination: training texts that share word n-grams with an eval text are removed."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llm_finetuning.data.clean.hashing import NgramHasher, word_hashes

logger = logging.getLogger(__name__)

_BATCH = 4096


@dataclass(frozen=True)
class Contamination:
    """Training position `index` shares `matches` distinct n-grams with eval item `eval_index`."""

    index: int
    eval_index: int
    matches: int


class EvalIndex:
    """The word n-grams of the eval texts (hashed to 64 bits), each mapped to the eval items containing it."""

    def __init__(self, eval_texts: Sequence[str], n: int) -> None:
        self.n = n
        self._ngrams = NgramHasher(n)
        hashes, offsets = self.hashes(eval_texts)
        self.too_short = int((np.diff(offsets) == 0).sum())
        items = np.repeat(np.arange(len(eval_texts), dtype=np.int64), np.diff(offsets))
        pairs = np.unique(np.stack([hashes, items.astype(np.uint64)], axis=1), axis=0)
        self._hashes = pairs[:, 0].copy()
        self._items = pairs[:, 1].astype(np.int64)
        logger.info("decontamination: %d distinct %d-grams from %d eval texts", len(self._hashes), n, len(eval_texts))

    def hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, offsets) of the training texts' n-grams (texts shorter than n words have none)."""
        tokens, offsets = word_hashes(texts)
        lengths = np.diff(offsets)
        keep = np.repeat(lengths >= self.n, lengths)
        kept = np.where(lengths >= self.n, lengths, 0)
        short_free = np.zeros_like(offsets)
        np.cumsum(kept, out=short_free[1:])
        return self._ngrams.of_flat(tokens[keep], short_free)

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        """Whether each hash is an n-gram of some eval text."""
        return np.isin(hashes, self._hashes)

    def matches(self, hashes: np.ndarray) -> Counter[int]:
        """{eval item: number of distinct n-grams of `hashes` it contains}."""
        found: Counter[int] = Counter()
        unique = np.unique(hashes)
        left = np.searchsorted(self._hashes, unique, side="left")
        right = np.searchsorted(self._hashes, unique, side="right")
        for lo, hi in zip(left[left < right].tolist(), right[left < right].tolist(), strict=True):
            found.update(self._items[lo:hi].tolist())
        return found


def contaminated(texts: Sequence[str], index: EvalIndex, min_matches: int) -> list[Contamination]:
    """The training texts sharing at least `min_matches` distinct n-grams with one eval text; each names the eval
    text it shares most with (the earliest among equals)."""
    found: list[Contamination] = []
    for lo in range(0, len(texts), _BATCH):
        hashes, offsets = index.hashes(texts[lo : lo + _BATCH])
        running = np.concatenate([[0], np.cumsum(index.contains(hashes))])
        hits_per_text = running[offsets[1:]] - running[offsets[:-1]]
        for local in np.flatnonzero(hits_per_text).tolist():
            start, end = offsets[local], offsets[local + 1]
            counts = index.matches(hashes[start:end])
            eval_index, matches = min(counts.items(), key=lambda item: (-item[1], item[0]))
            if matches >= min_matches:
                found.append(Contamination(lo + local, eval_index, matches))
    return found
