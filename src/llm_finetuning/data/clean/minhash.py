"""Near-duplicate removal: MinHash signatures of shingle sets, banded LSH for candidates, first kept.

Two backends compute the signatures and the candidate flags: `rensa` (Rust, the default) and `numpy` (our own,
kept for platforms without a rensa wheel). Both verify candidates the same way, on the signatures."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from llm_finetuning.data.clean.config import NearDedupConfig
from llm_finetuning.data.clean.hashing import NgramHasher, char_ids, word_hashes
from llm_finetuning.data.clean.text import collapse
from llm_finetuning.errors import ConfigError

logger = logging.getLogger(__name__)

_U64 = np.uint64
_BATCH_SHINGLES = 1 << 15  # shingles hashed per numpy pass: num_perm x this many uint64 in memory
_BATCH_TEXTS = 4096  # texts shingled per pass, and at most
_BATCH_CHARS = 1 << 22  # characters per pass: the pass's arrays are a few times 8 bytes per character


def batches(texts: Sequence[str]) -> list[tuple[int, int]]:
    """(start, stop) of consecutive batches of `texts` within both limits (a longer text is a batch alone)."""
    spans, start, chars = [], 0, 0
    for index, text in enumerate(texts):
        if index > start and (index - start >= _BATCH_TEXTS or chars + len(text) > _BATCH_CHARS):
            spans.append((start, index))
            start, chars = index, 0
        chars += len(text)
    if start < len(texts):
        spans.append((start, len(texts)))
    return spans


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
        self._ngrams = NgramHasher(config.ngram, seed=config.seed)

    def shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, offsets) of the shingles of each text; see `NgramHasher.hashes`."""
        if self.config.shingle == "char":
            return self._ngrams.hashes([char_ids(collapse(text)) for text in texts])
        return self._ngrams.of_flat(*word_hashes(texts))

    def all_shingles(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`shingles` of every text, computed a batch of texts at a time (the intermediate arrays of one batch
        are several times its text; the result is 8 bytes per shingle)."""
        parts, counts = [], []
        for lo, hi in batches(texts):
            hashes, offsets = self.shingles(texts[lo:hi])
            parts.append(hashes)
            counts.append(np.diff(offsets))
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        if counts:
            np.cumsum(np.concatenate(counts), out=offsets[1:])
        return (np.concatenate(parts) if parts else np.zeros(0, dtype=_U64)), offsets

    def signatures(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures uint32 [len(texts), num_perm], has_shingles bool [len(texts)]), from the configured
        backend (a text without shingles has an all-zero signature)."""
        if self.config.backend == "rensa":
            hashes, offsets = self.all_shingles(texts)
            valid = np.diff(offsets) > 0
            out = _rows(_rensa_digests(hashes, offsets, self.config), self.config.num_perm)
            out[~valid] = 0
            return out, valid
        out = np.zeros((len(texts), self.config.num_perm), dtype=np.uint32)
        valid = np.zeros(len(texts), dtype=bool)
        for lo, hi in batches(texts):
            hashes, offsets = self.shingles(texts[lo:hi])
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
def lsh_params(threshold: float, num_perm: int, exact: bool = False) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm (`exact`: == num_perm, as rensa's bands split the whole
    signature) minimising the area of false positives (pairs below the threshold that become candidates) plus
    false negatives (pairs above it that do not). Candidates are verified against the signature afterwards, so
    misses weigh more than false candidates."""
    pairs = [
        (bands, rows)
        for bands in range(1, num_perm + 1)
        for rows in range(1, num_perm // bands + 1)
        if not exact or bands * rows == num_perm
    ]
    bands, rows = (np.array(column, dtype=np.float64)[:, None] for column in zip(*pairs, strict=True))
    grid = np.linspace(0.0, 1.0, 501)
    candidate = 1.0 - (1.0 - grid**rows) ** bands  # [pairs, grid]: probability that a pair becomes a candidate
    false_pos = np.trapezoid(np.where(grid <= threshold, candidate, 0.0), grid, axis=1)
    false_neg = np.trapezoid(np.where(grid >= threshold, 1.0 - candidate, 0.0), grid, axis=1)
    return pairs[int(np.argmin(0.25 * false_pos + 0.75 * false_neg))]


def band_shape(config: NearDedupConfig) -> tuple[int, int]:
    """(bands, rows) of the LSH that `config`'s backend uses."""
    return lsh_params(config.threshold, config.num_perm, exact=config.backend == "rensa")


def find_near_duplicates(
    signatures: np.ndarray, valid: np.ndarray, threshold: float, shape: tuple[int, int]
) -> list[NearDuplicate]:
    """Scan in order; a position whose estimated Jaccard with an earlier kept candidate reaches `threshold` is a
    near-duplicate of the most similar one (the earliest among equals); every other position is kept. `shape` is
    the (bands, rows) of the LSH (`band_shape`)."""
    count = len(signatures)
    bands, rows = shape
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
    bands, rows = band_shape(config)
    if config.backend == "rensa":
        found = _rensa_near_duplicates(texts, config, (bands, rows))
    else:
        signatures, valid = MinHasher(config).signatures(texts)
        found = find_near_duplicates(signatures, valid, config.threshold, (bands, rows))
    logger.info(
        "near-dedup: %d of %d texts are near-duplicates (%d bands x %d rows)", len(found), len(texts), bands, rows
    )
    return found


def _rensa():
    try:
        import rensa
    except ImportError as error:
        raise ConfigError(
            "near_dedup.backend: rensa is not installed; `pip install rensa` or set near_dedup.backend: numpy"
        ) from error
    return rensa


def _rensa_near_duplicates(
    texts: Sequence[str], config: NearDedupConfig, shape: tuple[int, int]
) -> list[NearDuplicate]:
    """rensa computes every signature and flags the texts that share an LSH band with another; only the flagged
    texts' signatures come back to Python (copying all of them out would cost more than computing them), where
    they are verified exactly as the numpy backend verifies its candidates."""
    rensa = _rensa()
    bands, _ = shape
    hashes, offsets = MinHasher(config).all_shingles(texts)
    counts = np.diff(offsets)
    digests = _rensa_digests(hashes, offsets, config)
    index = rensa.RMinHashLSH(config.threshold, config.num_perm, bands)
    flagged = np.asarray(index.query_duplicate_flags_matrix_one_shot(digests), dtype=bool) & (counts > 0)
    positions = np.flatnonzero(flagged)
    if len(positions) < 2:
        return []
    take = np.repeat(flagged, counts)
    subset_offsets = np.concatenate([[0], np.cumsum(counts[positions])])
    signatures = _rows(_rensa_digests(hashes[take], subset_offsets, config), config.num_perm)
    found = find_near_duplicates(signatures, np.ones(len(positions), dtype=bool), config.threshold, shape)
    return [NearDuplicate(int(positions[d.index]), int(positions[d.of]), d.similarity) for d in found]


def _rensa_digests(hashes: np.ndarray, offsets: np.ndarray, config: NearDedupConfig):
    """rensa's signature matrix of the texts whose shingle hashes are `hashes[offsets[i]:offsets[i + 1]]`."""
    return _rensa().RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(np.uint64), config.num_perm, config.seed
    )


def _rows(digests, num_perm: int) -> np.ndarray:
    """A rensa signature matrix as uint32 [texts, num_perm] (one Python int per value on the way: costly)."""
    return np.asarray(digests.to_rows(), dtype=np.uint32).reshape(-1, num_perm)
