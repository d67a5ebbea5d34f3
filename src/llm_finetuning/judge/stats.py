"""Counters of a judge client, shared by its worker threads, and their metrics for the trainer's log."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Any

METRIC_PREFIX = "judge/"


@dataclass
class JudgeStats:
    """Cumulative counts since the client was built (one client per run)."""

    requests: int = 0
    """Judgements asked for (one per distinct completion of a batch)."""
    calls: int = 0
    """HTTP requests sent, retries included (what the budget counts)."""
    cache_hits: int = 0
    """Judgements answered from the on-disk cache, with no request."""
    retries: int = 0
    """Attempts repeated after a 429, a 5xx, a timeout or a connection error."""
    failures: int = 0
    """Attempts that gave no usable score: HTTP errors, timeouts, malformed responses, unparseable replies."""
    fallbacks: int = 0
    """Judgements that got the fallback score (after their retries, or without a request at all)."""
    budget_refusals: int = 0
    """Judgements refused because the run's budget of calls was spent (each also counts as a fallback)."""
    prompt_tokens: int = 0
    """Prompt tokens of the replies received, as the endpoint reported them (`usage`; cached replies cost none)."""
    completion_tokens: int = 0
    """Completion tokens of the replies received, as the endpoint reported them."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> dict[str, int]:
        """Add to some counters at once; returns the new values of those counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)
            return {name: getattr(self, name) for name in counts}

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of every counter."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def judge_metrics(source: Any) -> dict[str, float]:
    """The judge's counters as metrics for the trainer's log: `judge/calls`, `judge/cache_hits`,
    `judge/failures`, `judge/fallbacks`, `judge/retries`, `judge/requests`, `judge/budget_refusals`,
    `judge/prompt_tokens`, `judge/completion_tokens`.

    `source` is a `JudgeClient` (anything with a `stats` attribute) or a `JudgeStats`. Values are cumulative."""
    stats = source if isinstance(source, JudgeStats) else source.stats
    return {f"{METRIC_PREFIX}{name}": float(value) for name, value in stats.snapshot().items()}
