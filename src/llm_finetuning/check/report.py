"""What the pre-flight check found: findings by level, and the material the CLI shows (examples, lengths)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from llm_finetuning.data.tokenize import Encoded

Level = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class Finding:
    level: Level
    where: str
    """The config key, data source or row the finding is about."""
    message: str
    """What is wrong (or notable) and what to do."""


@dataclass
class SourceSample:
    """What a sample of one data source showed."""

    label: str
    split: str
    rows: int = 0
    bad_rows: list[str] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    """Tokens per example (the rendered conversation, or prompt + longest response)."""
    examples: list[Encoded] = field(default_factory=list)
    """The first few encoded examples (SFT), for the masked preview."""


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    sources: list[SourceSample] = field(default_factory=list)
    max_length: int = 0
    estimate: Any = None
    """The memory estimate, when it could be made."""
    tokenizer: Any = None
    """The prepared tokenizer (decodes the preview)."""

    def add(self, level: Level, where: str, message: str) -> None:
        self.findings.append(Finding(level, where, message))

    def by_level(self, level: Level) -> list[Finding]:
        return [f for f in self.findings if f.level == level]

    @property
    def ok(self) -> bool:
        return not self.by_level("error")


def loss_spans(encoded: Encoded, tokenizer: Any) -> list[tuple[str, bool]]:
    """An encoded example as (text, carries loss) runs, for showing which tokens train (`llmft check`, the UI).
    Runs of equally-masked tokens are decoded together, so multi-byte characters stay whole."""
    spans: list[tuple[str, bool]] = []
    run: list[int] = []
    trained = False
    for token, label in [*zip(encoded.input_ids, encoded.labels, strict=True), (None, None)]:
        is_trained = label is not None and label != -100
        if run and (token is None or is_trained != trained):
            spans.append((tokenizer.decode(run), trained))
            run = []
        if token is not None:
            run.append(token)
        trained = is_trained
    return spans
