"""One cleaning run over plain dict records: quality filters, exact and near-duplicate removal,
decontamination, then PII redaction, with a report that accounts for every record."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_finetuning.data.clean.config import CleanConfig
from llm_finetuning.data.clean.decontaminate import EvalIndex, contaminated
from llm_finetuning.data.clean.exact import exact_duplicates
from llm_finetuning.data.clean.minhash import band_shape, near_duplicates
from llm_finetuning.data.clean.pii import redact_value
from llm_finetuning.data.clean.quality import quality_problem
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


class _Run:
    def __init__(self, records: list[Mapping[str, Any]], config: CleanConfig, text_of: TextOf) -> None:
        self.records = records
        self.config = config
        self.texts = []
        for index, record in enumerate(records):
            text = text_of(record)
            if not isinstance(text, str):
                raise DataError(f"{self._name(index)}: `text_of` returned {type(text).__name__}, expected str")
            self.texts.append(text)
        self.alive = list(range(len(records)))
        self.report = CleanReport(len(records), config=config.model_dump(mode="json"))

    def _name(self, index: int) -> str:
        where = self.where(index)
        return f"record #{index}" + (f" ({where})" if where else "")

    def where(self, index: int) -> str | None:
        record = self.records[index]
        value = record.get(self.config.where_key) if isinstance(record, Mapping) else None
        return None if value is None else str(value)

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
    removals = {}
    if settings.active:
        for index in run.alive:
            problem = quality_problem(run.texts[index], settings)
            if problem:
                removals[index] = (problem, {})
    run.step("quality", removals, started, None if settings.active else "no filter set")


def _exact(run: _Run) -> None:
    started, removals = time.perf_counter(), {}
    if run.config.dedup.exact:
        alive = run.alive
        for position, first in exact_duplicates(run.alive_texts()).items():
            removals[alive[position]] = (f"exact duplicate of #{alive[first]}", {"duplicate_of": alive[first]})
    run.step("exact_dedup", removals, started, None if run.config.dedup.exact else "disabled")


def _near(run: _Run) -> None:
    started, settings, removals = time.perf_counter(), run.config.near_dedup, {}
    note = "disabled"
    if settings.enabled:
        alive = run.alive
        for found in near_duplicates(run.alive_texts(), settings):
            of = alive[found.of]
            reason = f"near-duplicate of #{of} (jaccard~{found.similarity:.2f})"
            removals[alive[found.index]] = (reason, {"duplicate_of": of, "similarity": round(found.similarity, 4)})
        bands, rows = band_shape(settings)
        note = f"{settings.backend}: {bands} bands x {rows} rows"
    run.step("near_dedup", removals, started, note)


def _decontaminate(run: _Run, eval_texts: EvalTexts | None) -> None:
    started, settings, removals = time.perf_counter(), run.config.decontaminate, {}
    if not settings.enabled or not eval_texts:
        run.step("decontaminate", removals, started, "disabled" if not settings.enabled else "no eval texts given")
        return
    names: list[Any] = list(eval_texts) if isinstance(eval_texts, Mapping) else list(range(len(eval_texts)))
    texts = list(eval_texts.values()) if isinstance(eval_texts, Mapping) else list(eval_texts)
    index = EvalIndex(texts, settings.ngram)
    alive = run.alive
    for found in contaminated(run.alive_texts(), index, settings.min_matches):
        name = names[found.eval_index]
        label = f"#{name}" if isinstance(name, int) else repr(name)
        reason = f"shares {found.matches} {settings.ngram}-gram(s) with eval item {label}"
        removals[alive[found.index]] = (reason, {"eval_item": name, "matches": found.matches})
    note = f"{index.too_short} eval texts shorter than {settings.ngram} words" if index.too_short else None
    run.step("decontaminate", removals, started, note)


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
                summary = ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items()))
                event = Event(
                    index, "pii", "changed", f"redacted {summary}", run.where(index), {"counts": dict(counts)}
                )
                run.report.events.append(event)
    note = None if settings.enabled else "disabled"
    run.step("pii", {}, started, note)
    run.report.steps[-1].changed = changed
    return [dict(record) for record in records]
