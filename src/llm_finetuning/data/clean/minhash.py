"""Near-duplicate removal: MinHash signatures of shingle sets, banded LSH for candidates, first kept."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llm_finetuning.data.clean.config import NearDedupConfig
from llm_finetuning.data.clean.hashing import NgramHasher, TokenHasher, char_ids
from llm_finetuning.data.clean.text import collapse, words

logger = logging.getLogger(__name__)

_U64 = np.uint64
_BATCH_SHINGLES = 1 << 15  # shingles hashed per numpy pass: num_perm x this many uint64 in memory
_BATCH_TEXTS = 4096


@dataclass(frozen=True)
class NearDuplicate:
    """Position `index` duplicates the earlier kept position `of`, with estimated Jaccard `similarity`."""

    index: int
    of: int
    similarity: float


class MinHasher:
    """MinHash with `num_perm` hash functions h_i(x) = a_i * x + b_i mod 2^64 (a_i odd: each is a bijection of
    the already well-mixed shingle hashes); a signature keeps the top 32 bits of each minimum."""

    def __init__(self, config: NearDedupConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._a = (rng.integers(0, 2**64, config.num_perm, dtype=_U64) | _U64(1))[:, None]
        self._b = rng.integers(0, 2**64, config.num_perm, dtype=_U64)[:, None]
        self._tokens = TokenHasher()
        self._ngrams = NgramHasher(config.ngram, seed=config.seed)

    def shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, offsets) of the shingles of each text; see `NgramHasher.hashes`."""
        if self.config.shingle == "char":
            return self._ngrams.hashes([char_ids(collapse(text)) for text in texts])
        ids = self._tokens.ids
        return self._ngrams.hashes([ids(words(text)) for text in texts])

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [len(texts), num_perm], has_shingles bool [len(texts)])."""
        out = np.zeros((len(texts), self.config.num_perm), dtype=np.uint32)
        valid = np.zeros(len(texts), dtype=bool)
        for lo in range(0, len(texts), _BATCH_TEXTS):
            hashes, offsets = self.shingles(texts[lo : lo + _BATCH_TEXTS])
            counts = np.diff(offsets)
            valid[lo : lo + len(counts)] = counts > 0
            self._fill(out[lo : lo + len(counts)], hashes, offsets, counts)
        return out, valid

    def _fill(self, out: np.ndarray, hashes: np.ndarray, offsets: np.ndarray, counts: np.ndarray) -> None:
        docs = np.flatnonzero(counts)
        first = 0
        while first < len(docs):
            # As many documents as fit in one batch of shingles (at least one).
            limit = offsets[docs[first]] + _BATCH_SHINGLES
            last = max(int(np.searchsorted(offsets[docs + 1], limit, side="right")), first + 1)
            chunk = docs[first:last]
            lo, hi = offsets[chunk[0]], offsets[chunk[-1] + 1]
            values = self._a * hashes[lo:hi]
            values += self._b
            minima = np.minimum.reduceat(values, offsets[chunk] - lo, axis=1)
            out[chunk] = (minima >> _U64(32)).astype(np.uint32).T
            first = last


@lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising the area of false positives (pairs below the
    threshold that become candidates) plus false negatives (pairs above it that do not). Candidates are
    verified against the signature afterwards, so misses weigh more than false candidates."""
    pairs = [(bands, rows) for bands in range(1, num_perm + 1) for rows in range(1, num_perm // bands + 1)]
    bands, rows = (np.array(column, dtype=np.float64)[:, None] for column in zip(*pairs, strict=True))
    grid = np.linspace(0.0, 1.0, 501)
    candidate = 1.0 - (1.0 - grid**rows) ** bands  # [pairs, grid]: probability that a pair becomes a candidate
    false_pos = np.trapezoid(np.where(grid <= threshold, candidate, 0.0), grid, axis=1)
    false_neg = np.trapezoid(np.where(grid >= threshold, 1.0 - candidate, 0.0), grid, axis=1)
    return pairs[int(np.argmin(0.25 * false_pos + 0.75 * false_neg))]


def find_near_duplicates(signatures: np.ndarray, valid: np.ndarray, threshold: float) -> list[NearDuplicate]:
    """Scan in order; a position whose estimated Jaccard with an earlier kept candidate reaches `threshold` is a
    near-duplicate of the most similar one (the earliest among equals); every other position is kept."""
    count, num_perm = signatures.shape
    bands, rows = lsh_params(threshold, num_perm)
    keys = _band_keys(signatures, bands, rows)
    shared = np.zeros(count, dtype=bool)
    for band in keys:
        order = np.argsort(band, kind="stable")
        same = band[order[1:]] == band[order[:-1]]
        shared[order[1:][same]] = True
        shared[order[:-1][same]] = True
    shared &= valid
    tables: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    found: list[NearDuplicate] = []
    for index in np.flatnonzero(shared).tolist():
        own = keys[:, index].tolist()
        candidates = sorted({kept for table, key in zip(tables, own, strict=True) for kept in table.get(key, ())})
        if candidates:
            similarity = (signatures[candidates] == signatures[index]).mean(axis=1)
            best = int(np.argmax(similarity))
            if similarity[best] >= threshold:
                found.append(NearDuplicate(index, candidates[best], float(similarity[best])))
                continue
        for table, key in zip(tables, own, strict=True):
            table.setdefault(key, []).append(index)
    return found


def _band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """[bands, count] uint64: one hash of each band's `rows` signature values."""
    weights = np.random.default_rng(0xBA9D).integers(0, 2**64, rows, dtype=_U64) | _U64(1)
    keys = np.empty((bands, len(signatures)), dtype=_U64)
    for band in range(bands):
        block = signatures[:, band * rows : (band + 1) * rows].astype(_U64)
        keys[band] = (block * weights).sum(axis=1, dtype=_U64)
    return keys


def near_duplicates(texts: Sequence[str], config: NearDedupConfig) -> list[NearDuplicate]:
    """The near-duplicates among `texts` (positions in `texts`), each naming the earlier kept text it repeats."""
    signatures, valid = MinHasher(config).signatures(texts)
    found = find_near_duplicates(signatures, valid, config.threshold)
    bands, rows = lsh_params(config.threshold, config.num_perm)
    logger.info(
        "near-dedup: %d of %d texts are near-duplicates (%d bands x %d rows)", len(found), len(texts), bands, rows
    )
    return found
