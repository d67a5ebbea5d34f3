"""What a data source holds: its format, row counts, token lengths and one rendered, masked example."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from llm_finetuning.config.schema import DataSource
from llm_finetuning.data.convert import detect_format
from llm_finetuning.data.formats import FORMAT_KIND
from llm_finetuning.data.pipeline import SplitStats, load_records, record_lengths
from llm_finetuning.data.reading import Row, read_rows
from llm_finetuning.data.tokenize import IGNORE_INDEX, Encoded, RowError, encode
from llm_finetuning.errors import DataError


@dataclass
class Inspection:
    source: DataSource
    format: str
    kind: str
    stats: SplitStats
    lengths: list[int] = field(default_factory=list)
    trained_tokens: list[int] = field(default_factory=list)
    example: Encoded | None = None


def source_for(target: str, fmt: str | None = None, columns: dict[str, str] | None = None) -> DataSource:
    """A file path, a named dataset, or a hub id, as a data source; a file's format is detected if not given."""
    from llm_finetuning.data.datasets import registry

    if Path(target).exists():
        if fmt is None:
            first = next((r for r in read_rows(target, 20) if isinstance(r, Row)), None)
            fmt = detect_format(first.data) if first else None
            if fmt is None:
                keys = ", ".join(first.data) if first else "no readable row"
                raise DataError(f"{target}: cannot tell the format from its columns ({keys}); pass --format")
        return DataSource(path=target, format=fmt, columns=columns or {})
    if target in registry():
        return DataSource(dataset=target)
    return DataSource(hub=target, format=fmt or "messages", columns=columns or {})


def inspect_source(
    source: DataSource, tokenizer: PreTrainedTokenizerBase | None = None, max_rows: int | None = None
) -> Inspection:
    if max_rows is not None:
        source = source.model_copy(update={"max_samples": max_rows})
    if source.dataset is not None:
        from llm_finetuning.data.datasets import registry

        kind = next(iter(registry()[source.dataset].converters))
        fmt = f"dataset:{source.dataset}"
    else:
        kind, fmt = FORMAT_KIND[source.format], source.format
    stats = SplitStats()
    records = load_records(source, "skip", stats, kind)
    report = Inspection(source, fmt, kind, stats)
    if tokenizer is None or kind not in ("messages", "preference", "unpaired", "prompt_only"):
        return report
    for where, record in records:
        try:
            if kind != "messages":  # rendered by the trainer: check the rendering loses nothing, and measure it
                prompt, longest = record_lengths(tokenizer, record)
                report.lengths.append(prompt if longest is None else longest)
                continue
            encoded = encode(tokenizer, record["messages"], tools=record.get("tools"))
        except RowError as exc:
            stats.skipped_bad_rows += 1
            stats.bad_rows.append(f"{where}: {exc}")
            continue
        report.lengths.append(len(encoded.input_ids))
        report.trained_tokens.append(sum(label != IGNORE_INDEX for label in encoded.labels))
        report.example = report.example or encoded
    return report


def histogram(values: list[int], bins: int = 10) -> list[tuple[int, int, int]]:
    """(low, high, count) buckets of equal width covering the values."""
    if not values:
        return []
    low, high = min(values), max(values)
    bins = min(bins, high - low + 1)
    width = -(-(high - low + 1) // bins)
    counts = [0] * bins
    for value in values:
        counts[min((value - low) // width, bins - 1)] += 1
    return [(low + i * width, min(high, low + (i + 1) * width - 1), c) for i, c in enumerate(counts)]
