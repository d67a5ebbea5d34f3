"""One cleaning run over plain dict records: quality filters, exact and near-duplicate removal,
decontamination, then PII redaction, with a report that accounts for every record."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_finetuning.data.clean.config import (
    CleanConfig,
    DecontaminateConfig,
    ExactDedupConfig,
    NearDedupConfig,
    QualityConfig,
)
from llm_finetuning.data.clean.decontaminate import Contamination, EvalIndex, contaminated
from llm_finetuning.data.clean.exact import exact_duplicates
from llm_finetuning.data.clean.minhash import NearDuplicate, band_shape, near_duplicates
from llm_finetuning.data.clean.pii import redact_value
from llm_finetuning.data.clean.quality import quality_problems
from llm_finetuning.data.clean.report import CleanReport, Event, StepStats
from llm_finetuning.data.clean.text import TextOf, default_text_of
from llm_finetuning.errors import DataError

logger = logging.getLogger(__name__)

EvalTexts = Sequence[str] | Mapping[str, str]


@dataclass
class CleanResult:
    """The kept records (redacted where PII was found), their input positions, and the report."""

    records: list[dict[str, Any]]
    indices: list[int]
    report: CleanReport


class Ledger:
    """The records still alive after each step and the report: every removal is an event, every step counted."""

    def __init__(self, count: int, config: CleanConfig, where: Callable[[int], str | None]) -> None:
        self.config = config
        self.where = where
        self.alive = list(range(count))
        self.report = CleanReport(count, config=config.model_dump(mode="json"))

    def step(
        self, name: str, removals: dict[int, tuple[str, dict[str, Any]]], started: float, note: str | None = None
    ) -> None:
        """Drop the positions in `removals` ({input index: (reason, details)}) and record the step."""
        before = len(self.alive)
        for index, (reason, details) in sorted(removals.items()):
            self.report.events.append(Event(index, name, "removed", reason, self.where(index), details))
        self.alive = [index for index in self.alive if index not in removals]
        self.report.steps.append(StepStats(name, before, len(self.alive), seconds=time.perf_counter() - started))
        self.report.steps[-1].note = note
        logger.info("clean %s: %d -> %d records%s", name, before, len(self.alive), f" ({note})" if note else "")


class _Run(Ledger):
    def __init__(self, records: list[Mapping[str, Any]], config: CleanConfig, text_of: TextOf) -> None:
        super().__init__(len(records), config, self._where)
        self.records = records
        self.texts = []
        for index, record in enumerate(records):
            text = text_of(record)
            if not isinstance(text, str):
                raise DataError(f"{self._name(index)}: `text_of` returned {type(text).__name__}, expected str")
            self.texts.append(text)

    def _name(self, index: int) -> str:
        where = self.where(index)
        return f"record #{index}" + (f" ({where})" if where else "")

    def _where(self, index: int) -> str | None:
        record = self.records[index]
        value = record.get(self.config.where_key) if isinstance(record, Mapping) else None
        return None if value is None else str(value)

    def alive_texts(self) -> list[str]:
        return [self.texts[index] for index in self.alive]


def clean_records(
    records: Iterable[Mapping[str, Any]],
    config: CleanConfig | None = None,
    *,
    text_of: TextOf = default_text_of,
    eval_texts: EvalTexts | None = None,
) -> CleanResult:
    """Clean `records` (plain dicts of any format) as `config` says. `text_of(record)` gives the text that the
    filters, deduplication and decontamination look at; `eval_texts` (a list, or {name: text}) are the texts
    to decontaminate against. PII redaction rewrites every string field except `config.where_key`. Input
    records are never modified: a redacted record is a copy."""
    config = config or CleanConfig()
    run = _Run(list(records), config, text_of)
    _quality(run)
    _exact(run)
    _near(run)
    _decontaminate(run, eval_texts)
    kept = _pii(run)
    logger.info("clean: %d records in, %d out", run.report.input_count, len(kept))
    return CleanResult(kept, list(run.alive), run.report)


def _quality(run: _Run) -> None:
    started, settings = time.perf_counter(), run.config.quality
    problems = quality_problems(run.alive_texts(), settings)
    removals = {run.alive[position]: (problem, {}) for position, problem in problems.items()}
    run.step("quality", removals, started, quality_note(settings))


def _exact(run: _Run) -> None:
    started, removals = time.perf_counter(), {}
    if run.config.dedup.exact:
        removals = exact_removals(run.alive, exact_duplicates(run.alive_texts()))
    run.step("exact_dedup", removals, started, exact_note(run.config.dedup))


def _near(run: _Run) -> None:
    started, settings, removals = time.perf_counter(), run.config.near_dedup, {}
    if settings.enabled:
        removals = near_removals(run.alive, near_duplicates(run.alive_texts(), settings))
    run.step("near_dedup", removals, started, near_note(settings))


def _decontaminate(run: _Run, eval_texts: EvalTexts | None) -> None:
    started, settings, removals = time.perf_counter(), run.config.decontaminate, {}
    if not settings.enabled or not eval_texts:
        run.step("decontaminate", removals, started, skipped_decontamination_note(settings))
        return
    names: list[Any] = list(eval_texts) if isinstance(eval_texts, Mapping) else list(range(len(eval_texts)))
    texts = list(eval_texts.values()) if isinstance(eval_texts, Mapping) else list(eval_texts)
    index = EvalIndex(texts, settings.ngram)
    found = contaminated(run.alive_texts(), index, settings.min_matches)
    removals = contamination_removals(run.alive, found, names, settings.ngram)
    run.step("decontaminate", removals, started, contamination_note(index, settings.ngram))


def _pii(run: _Run) -> list[dict[str, Any]]:
    started, settings = time.perf_counter(), run.config.pii
    records = [run.records[index] for index in run.alive]
    changed = 0
    if settings.enabled:
        skip = frozenset({run.config.where_key})
        for position, index in enumerate(run.alive):
            redacted, counts = redact_value(run.records[index], settings.types, skip)
            if counts:
                changed += 1
                records[position] = redacted
                run.report.events.append(pii_event(index, counts, run.where(index)))
    note = None if settings.enabled else "disabled"
    run.step("pii", {}, started, note)
    run.report.steps[-1].changed = changed
    return [dict(record) for record in records]


# --- the decisions as removals ({input index: (reason, details)}), shared with the sharded pipeline ----------


def exact_removals(alive: Sequence[int], duplicates: Mapping[int, int]) -> dict[int, tuple[str, dict[str, Any]]]:
    """`duplicates` maps positions in `alive` to the earlier position they repeat."""
    return {
        alive[position]: (f"exact duplicate of #{alive[first]}", {"duplicate_of": alive[first]})
        for position, first in duplicates.items()
    }


def near_removals(alive: Sequence[int], found: Iterable[NearDuplicate]) -> dict[int, tuple[str, dict[str, Any]]]:
    removals = {}
    for item in found:
        of = alive[item.of]
        reason = f"near-duplicate of #{of} (jaccard~{item.similarity:.2f})"
        removals[alive[item.index]] = (reason, {"duplicate_of": of, "similarity": round(item.similarity, 4)})
    return removals


def quality_note(settings: QualityConfig) -> str | None:
    return None if settings.active else "no filter set"


def exact_note(settings: ExactDedupConfig) -> str | None:
    return None if settings.exact else "disabled"


def near_note(settings: NearDedupConfig) -> str:
    if not settings.enabled:
        return "disabled"
    bands, rows = band_shape(settings)
    return f"{settings.backend}: {bands} bands x {rows} rows"


def contamination_removals(
    alive: Sequence[int], found: Iterable[Contamination], names: Sequence[Any], ngram: int
) -> dict[int, tuple[str, dict[str, Any]]]:
    removals = {}
    for item in found:
        name = names[item.eval_index]
        label = f"#{name}" if isinstance(name, int) else repr(name)
        reason = f"shares {item.matches} {ngram}-gram(s) with eval item {label}"
        removals[alive[item.index]] = (reason, {"eval_item": name, "matches": item.matches})
    return removals


def skipped_decontamination_note(settings: DecontaminateConfig) -> str:
    """Why decontamination did not run: switched off, or nothing to compare with."""
    return "disabled" if not settings.enabled else "no eval texts given"


def contamination_note(index: EvalIndex, ngram: int) -> str | None:
    return f"{index.too_short} eval texts shorter than {ngram} words" if index.too_short else None


def pii_event(index: int, counts: Mapping[str, int], where: str | None) -> Event:
    summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
    return Event(index, "pii", "changed", f"redacted {summary}", where, {"counts": dict(counts)})
