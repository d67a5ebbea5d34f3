"""Score completions with a config's rewards, outside training: `llmft rewards score`.

Completions come from a JSONL file (`completion` plus the reference columns the rewards read, e.g. `answer`) or
are rendered from the training data's references as ideal completions, which is how a reward set is checked
before a run: every reference answer, well formatted, should earn the top score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_finetuning.config.schema import Config
from llm_finetuning.data.reading import read_rows
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.rewards.base import references_at
from llm_finetuning.rewards.contracts import Reward, ideal_completion, resolve_rewards

CHUNK = 256  # completions per reward call: judges batch their requests, and memory stays flat


@dataclass
class RewardSummary:
    name: str
    weight: float
    values: list[float]
    max_value: float | None = None

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def at_max(self) -> float | None:
        """The share of completions that earned the reward's top value (None when it has no known top)."""
        if self.max_value is None or not self.values:
            return None
        return sum(math.isclose(v, self.max_value, rel_tol=1e-9, abs_tol=1e-12) for v in self.values) / len(self.values)


@dataclass
class ScoreReport:
    rows: list[dict[str, Any]]
    rewards: list[RewardSummary] = field(default_factory=list)

    def totals(self) -> list[float]:
        return [math.fsum(r.weight * r.values[i] for r in self.rewards) for i in range(len(self.rows))]


def completions_from_file(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSONL/JSON file, each with a string `completion`; a bad row stops with its location."""
    rows = []
    for item in read_rows(Path(path)):
        if isinstance(item, DataError):
            raise item
        if not isinstance(item.data.get("completion"), (str, list)):
            raise DataError(f"{item.where}: needs a field `completion` (the text to score)")
        rows.append(item.data)
    if not rows:
        raise DataError(f"{path}: no completions to score")
    return rows


def completions_from_references(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ideal completions of the training records: each reference answer inside reasoning and answer tags."""
    rows = []
    for record in records:
        references = references_at({k: [v] for k, v in record.items()}, 0)
        if not references:
            raise DataError("the training records have no `answer` or `answers` column to render ideal completions")
        rows.append({**record, "completion": ideal_completion(references)})
    return rows


def score_rows(config: Config, rows: list[dict[str, Any]], judge: Any = None) -> ScoreReport:
    """Call every configured reward on the rows; returns each reward's values in row order."""
    if config.method.name != "grpo":
        raise ConfigError(f"method.name: `llmft rewards score` needs a `grpo` config, not `{config.method.name}`.")
    rewards = resolve_rewards(config.method.rewards, judge)
    report = ScoreReport(rows)
    for reward in rewards:
        values: list[float] = []
        for start in range(0, len(rows), CHUNK):
            values.extend(_call(reward, rows[start : start + CHUNK], start))
        top = reward.spec.max_value if reward.spec else None
        report.rewards.append(RewardSummary(reward.name, reward.weight, values, top))
    return report


def _call(reward: Reward, rows: list[dict[str, Any]], offset: int) -> list[float]:
    columns = sorted({key for row in rows for key in row} - {"completion", "prompt"})
    kwargs: dict[str, Any] = {
        "prompts": [row.get("prompt", "") for row in rows],
        "completions": [row["completion"] for row in rows],
        "completion_ids": [[] for _ in rows],
        **{column: [row.get(column) for row in rows] for column in columns},
    }
    try:
        values = list(reward.fn(**kwargs, trainer_state=None))
    except Exception as exc:  # noqa: BLE001 - a failing reward is reported with the rows it failed on
        raise DataError(
            f"reward `{reward.name}` raised {type(exc).__name__}: {exc} on rows {offset + 1}-{offset + len(rows)}"
        ) from None
    if len(values) != len(rows):
        raise DataError(f"reward `{reward.name}` returned {len(values)} values for {len(rows)} completions")
    return [float(v) for v in values]
