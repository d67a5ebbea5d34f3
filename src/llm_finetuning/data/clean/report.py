"""The account of a cleaning run: counts per step and one entry per removed or changed record."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class Event:
    """What a step did to one record: `index` is its 0-based position in the input, `where` its source location
    when the record carried one."""

    index: int
    step: str
    action: Literal["removed", "changed"]
    reason: str
    where: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        if self.where is not None:
            out["where"] = self.where
        out.update(step=self.step, action=self.action, reason=self.reason, **self.details)
        return out

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> Event:
        """The inverse of `to_dict`."""
        details = {k: v for k, v in item.items() if k not in ("index", "where", "step", "action", "reason")}
        return cls(item["index"], item["step"], item["action"], item["reason"], item.get("where"), details)


@dataclass
class StepStats:
    """Records entering and leaving one step; `note` says why a step did nothing (e.g. disabled)."""

    step: str
    records_in: int
    records_out: int
    changed: int = 0
    seconds: float = 0.0
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {key: value for key, value in asdict(self).items() if value is not None}
        out["seconds"] = round(self.seconds, 4)
        return out

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> StepStats:
        """The inverse of `to_dict`."""
        return cls(**item)


@dataclass
class CleanReport:
    """Counts in and out of each step and every removal or change, so that nothing is dropped silently."""

    input_count: int
    steps: list[StepStats] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def removed(self) -> list[Event]:
        return [event for event in self.events if event.action == "removed"]

    @property
    def changed(self) -> list[Event]:
        return [event for event in self.events if event.action == "changed"]

    @property
    def output_count(self) -> int:
        return self.input_count - len(self.removed)

    @property
    def pii_counts(self) -> Counter[str]:
        """Redactions by type over all records."""
        total: Counter[str] = Counter()
        for event in self.changed:
            total.update(event.details.get("counts", {}))
        return total

    def to_dict(self) -> dict[str, Any]:
        removed_by_step = Counter(event.step for event in self.removed)
        return {
            "input": self.input_count,
            "output": self.output_count,
            "removed": len(self.removed),
            "removed_by_step": dict(removed_by_step),
            "changed": len(self.changed),
            "pii_counts": dict(sorted(self.pii_counts.items())),
            "steps": [step.to_dict() for step in self.steps],
            "events": [event.to_dict() for event in sorted(self.events, key=lambda e: (e.index, e.step))],
            "config": self.config,
        }

    @classmethod
    def read(cls, path: str | Path) -> CleanReport:
        """A report `write` wrote."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(
            data["input"],
            [StepStats.from_dict(step) for step in data["steps"]],
            [Event.from_dict(event) for event in data["events"]],
            data["config"],
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def write(self, path: str | Path) -> Path:
        """Write the JSON report (creating parent folders) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def summary(self) -> str:
        """One line per step, e.g. `near_dedup: 1000 -> 990 (10 removed)`."""
        lines = [f"{self.input_count} records in, {self.output_count} out"]
        for step in self.steps:
            line = f"{step.step}: {step.records_in} -> {step.records_out} ({step.records_in - step.records_out} removed"
            line += f", {step.changed} changed)" if step.changed else ")"
            lines.append(line + (f" [{step.note}]" if step.note else ""))
        return "\n".join(lines)
