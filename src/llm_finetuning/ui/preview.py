"""The data preview of the new-run page: what `llmft check` shows in the terminal, as data the UI can draw.

`preview` runs the same pre-flight check (`check.preflight.run_checks`) on the form's config and returns the
rendered examples as (text, carries loss) spans, the length figures of every source, the padding a padded batch
would carry, the memory estimate and the findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llm_finetuning.check.preflight import run_checks
from llm_finetuning.check.report import Finding, loss_spans
from llm_finetuning.config.schema import Config
from llm_finetuning.data.inspect import histogram


@dataclass
class SourceFigures:
    label: str
    split: str
    rows: int
    malformed: int
    lengths: list[int]
    over_max_length: float
    """Share of examples longer than the length limit: what truncation (or dropping) would cut."""
    padding: float | None
    """Share of a padded batch that would be padding (the batch size's rows in file order); None when the run
    uses padding-free batches or packing, which carry none."""
    histogram: list[tuple[int, int, int]]


@dataclass
class Preview:
    examples: list[list[tuple[str, bool]]]
    sources: list[SourceFigures]
    max_length: int
    memory_gib: float | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.level == "error" for f in self.findings)


def padding_share(lengths: list[int], batch: int, max_length: int) -> float:
    """Padding / positions over batches of `batch` examples in order, each padded to its longest (cut at
    `max_length`)."""
    total = padded = 0
    for start in range(0, len(lengths), batch):
        rows = [min(n, max_length) for n in lengths[start : start + batch]]
        total += sum(rows)
        padded += max(rows) * len(rows)
    return 1 - total / padded if padded else 0.0


def preview(config: Config, rows: int = 50, examples: int = 3) -> Preview:
    """The check's figures for `config` on `rows` rows per source."""
    report = run_checks(config, rows)
    no_padding = config.data.packing or getattr(config.data, "padding_free", False)
    batch = config.training.per_device_batch_size
    sources = [
        SourceFigures(
            label=sample.label,
            split=sample.split,
            rows=sample.rows,
            malformed=len(sample.bad_rows),
            lengths=sample.lengths,
            over_max_length=(
                sum(n > report.max_length for n in sample.lengths) / len(sample.lengths) if sample.lengths else 0.0
            ),
            padding=None if no_padding else padding_share(sample.lengths, batch, report.max_length),
            histogram=histogram(sample.lengths),
        )
        for sample in report.sources
    ]
    shown: list[list[tuple[str, bool]]] = []
    for sample in report.sources:
        for encoded in sample.examples:
            if len(shown) < examples and report.tokenizer is not None:
                shown.append(loss_spans(encoded, report.tokenizer))
    memory = report.estimate.memory.total / 2**30 if report.estimate is not None else None
    return Preview(shown, sources, report.max_length, memory, list(report.findings))


def figures_markdown(result: Preview) -> str:
    """The figures as markdown: one paragraph per source, then the estimate and the findings."""
    lines: list[str] = []
    for source in result.sources:
        lines.append(f"**{source.label}** ({source.split}): {source.rows} rows sampled, {source.malformed} malformed")
        if source.lengths:
            lengths = sorted(source.lengths)
            median = lengths[len(lengths) // 2]
            lines.append(
                f"- tokens per example: min {lengths[0]}, median {median}, max {lengths[-1]}; "
                f"{source.over_max_length:.1%} longer than max_length {result.max_length} (cut)"
            )
            padding = "none (padding-free or packed batches)" if source.padding is None else f"{source.padding:.1%}"
            lines.append(f"- padding in a batch: {padding}")
    if result.memory_gib is not None:
        lines.append(f"\n**memory estimate**: {result.memory_gib:.2f} GiB per device at peak")
    if result.findings:
        lines.append("")
    icon = {"error": "**error**", "warning": "**warning**", "info": "info"}
    for finding in result.findings:
        lines.append(f"- {icon[finding.level]} `{finding.where}`: {finding.message}")
    return "\n".join(lines)


def highlighted(result: Preview) -> list[tuple[str, Any]]:
    """The examples for a highlighted-text widget: loss-carrying text labelled `loss`, examples separated."""
    out: list[tuple[str, Any]] = []
    for index, spans in enumerate(result.examples):
        if index:
            out.append(("\n\n──────── next example ────────\n\n", None))
        out.extend((text, "loss" if trained else None) for text, trained in spans)
    return out
