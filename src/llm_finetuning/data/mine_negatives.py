"""Hard-negative mining for embedding and reranker data, through sentence-transformers' `mine_hard_negatives`.

Every query and candidate is embedded; the candidates most similar to a query that are not its positive become its
negatives. The false-negative guard is sentence-transformers' own: `relative_margin` (default 0.05) drops a candidate
scoring within 5% of the positive, `absolute_margin` within a fixed distance, `max_score` above a ceiling; such texts
are more often unlabelled positives than negatives. Output: `retrieval` rows (query, positive, negatives), with the
input row's other columns kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_finetuning.data.reading import read_rows
from llm_finetuning.errors import DataError, UserError

logger = logging.getLogger(__name__)


@dataclass
class MiningSettings:
    num_negatives: int = 3
    relative_margin: float | None = 0.05
    absolute_margin: float | None = None
    max_score: float | None = None
    range_min: int = 0
    range_max: int | None = None
    sampling: str = "top"
    cross_encoder: str | None = None
    batch_size: int = 32
    min_negatives: int = 0
    """Rows that end up with fewer negatives are dropped (and counted); 0 keeps every row."""
    query_column: str = "query"
    positive_column: str = "positive"


@dataclass
class MiningReport:
    rows: int = 0
    written: int = 0
    short_rows: int = 0
    """Rows given fewer negatives than asked (the guard or the corpus left too few candidates)."""
    dropped: int = 0
    negatives: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def read_pairs(path: str | Path, settings: MiningSettings) -> list[tuple[str, dict[str, Any], str, str]]:
    """(where, row, query, positive) for every row; a missing or empty field stops here, before any model loads."""
    out = []
    for row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        query_column = settings.query_column
        if query_column == "query" and "query" not in row.data and "anchor" in row.data:
            query_column = "anchor"
        values = []
        for column in (query_column, settings.positive_column):
            value = row.data.get(column)
            if not isinstance(value, str) or not value.strip():
                problem = "is missing" if value is None else "is empty" if isinstance(value, str) else "is not text"
                raise DataError(f"{row.where}: field `{column}` {problem} (set --query-column/--positive-column)")
            values.append(value)
        out.append((row.where, row.data, values[0], values[1]))
    if not out:
        raise DataError(f"{path}: no rows")
    return out


def read_corpus(path: str | Path, column: str = "text") -> list[str]:
    texts = []
    for row in read_rows(path):
        if isinstance(row, DataError):
            raise row
        value = row.data.get(column)
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{row.where}: field `{column}` is missing or empty")
        texts.append(value)
    return texts


def load_embedder(model: str) -> Any:
    """A SentenceTransformer from a path, a hub id, or a run directory of `method: embedding`."""
    from sentence_transformers import SentenceTransformer

    path = Path(model)
    if (path / "final" / "modules.json").is_file():
        path = path / "final"
    try:
        return SentenceTransformer(str(path) if path.exists() else model)
    except OSError as exc:
        raise UserError(f"--model {model}: cannot load a SentenceTransformer: {exc}") from None


def mine(
    pairs: list[tuple[str, dict[str, Any], str, str]],
    model: Any,
    settings: MiningSettings,
    corpus: list[str] | None = None,
) -> tuple[list[dict[str, Any]], MiningReport]:
    """The rows with `negatives` added (the positive never among them), and what happened."""
    from datasets import Dataset
    from sentence_transformers.util import mine_hard_negatives

    report = MiningReport(rows=len(pairs))
    dataset = Dataset.from_dict({"query": [p[2] for p in pairs], "positive": [p[3] for p in pairs]})
    cross_encoder = None
    if settings.cross_encoder:
        from sentence_transformers import CrossEncoder

        cross_encoder = CrossEncoder(settings.cross_encoder)
    mined = mine_hard_negatives(
        dataset,
        model,
        anchor_column_name="query",
        positive_column_name="positive",
        corpus=corpus,
        cross_encoder=cross_encoder,
        range_min=settings.range_min,
        range_max=settings.range_max,
        max_score=settings.max_score,
        absolute_margin=settings.absolute_margin,
        relative_margin=settings.relative_margin,
        num_negatives=settings.num_negatives,
        sampling_strategy=settings.sampling,
        output_format="triplet",  # one row per surviving negative: rows keep however many the guard left
        batch_size=settings.batch_size,
        verbose=False,
    )
    found: dict[tuple[str, str], list[str]] = {}
    for query, positive, negative in zip(mined["query"], mined["positive"], mined["negative"], strict=True):
        negatives = found.setdefault((query, positive), [])
        if negative != positive and negative not in negatives:
            negatives.append(negative)
    out = []
    for _, row, query, positive in pairs:
        negatives = found.get((query, positive), [])[: settings.num_negatives]
        if len(negatives) < settings.num_negatives:
            report.short_rows += 1
            if len(negatives) < settings.min_negatives:
                report.dropped += 1
                continue
        report.negatives += len(negatives)
        kept = {k: v for k, v in row.items() if k not in (settings.query_column, settings.positive_column, "anchor")}
        kept.pop("negatives", None)
        out.append({**kept, "query": query, "positive": positive, "negatives": negatives})
    report.written = len(out)
    logger.info(
        "mined %d negatives for %d rows (%d with fewer than %d, %d dropped)",
        report.negatives,
        report.written,
        report.short_rows,
        settings.num_negatives,
        report.dropped,
    )
    return out, report
