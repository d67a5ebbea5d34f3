"""What every generation task shares: the prompts it reads, the teacher it asks, and the counts it reports."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from llm_finetuning.data.reading import read_rows
from llm_finetuning.errors import DataError
from llm_finetuning.judge.client import JudgeClient, JudgeFailed

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class PromptRow:
    """One input row: where it came from, the conversation to answer, and its other columns."""

    where: str
    messages: Messages
    columns: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The last user turn (what a one-line prompt shows)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


def as_messages(value: Any) -> Messages | None:
    """Text (one user turn) or a list of {role, content} messages as messages; None when it is neither."""
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    return None


def prompt_of(data: dict[str, Any]) -> Messages | None:
    """The conversation to answer in a row: `prompt` (text or messages), `messages` (up to its last user turn),
    `instruction` (+ `input`, Alpaca) or `question`."""
    if "prompt" in data:
        return as_messages(data["prompt"])
    if "messages" in data:
        messages = as_messages(data["messages"])
        if messages is None:
            return None
        last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        return None if last_user is None else messages[: last_user + 1]
    if isinstance(data.get("instruction"), str) and data["instruction"].strip():
        extra = data.get("input")
        text = data["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")
        return [{"role": "user", "content": text}]
    if "question" in data:
        return as_messages(data["question"])
    return None


_PROMPT_KEYS = ("prompt", "messages", "instruction", "input", "question")


def read_prompts(path: str | Path, max_rows: int | None = None, key: str = "task.prompts") -> list[PromptRow]:
    """Every row of a prompts file; a row without a prompt stops here, with its line, before any request."""
    rows = []
    for item in read_rows(path, max_rows):
        if isinstance(item, DataError):
            raise item
        messages = prompt_of(item.data)
        if messages is None:
            raise DataError(
                f"{item.where}: no prompt; a row needs `prompt` (text or messages), `messages`, `instruction` or "
                f"`question` ({key})"
            )
        columns = {k: v for k, v in item.data.items() if k not in _PROMPT_KEYS}
        rows.append(PromptRow(item.where, messages, columns))
    if not rows:
        raise DataError(f"{path}: no rows ({key})")
    return rows


@dataclass
class TaskStats:
    """What a task did, for the report: inputs, requests, rows, and each reason a candidate was dropped."""

    inputs: int = 0
    rows: int = 0
    failed_requests: int = 0
    dropped: Counter = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    """Task-specific figures (instructions kept against the target, pairs written...)."""

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "rows": self.rows,
            "failed_requests": self.failed_requests,
            "dropped": dict(sorted(self.dropped.items())),
            **self.extra,
        }


class Teacher:
    """Asks one endpoint for chat completions through the judge client; a request that fails for good returns
    None and is counted, never raised: one bad prompt does not lose the others."""

    def __init__(self, client: JudgeClient, stats: TaskStats) -> None:
        self.client = client
        self.stats = stats
        self.model = client.config.model

    def ask(self, messages: Messages, tag: str, accept: Callable[[str], bool] | None = None) -> str | None:
        try:
            reply = self.client.complete(messages, accept=accept, tag=tag)
        except JudgeFailed as failure:
            self.stats.failed_requests += 1
            logger.debug("teacher request failed: %s", failure)
            return None
        if accept is not None and not accept(reply):
            return None
        return reply.strip()


def map_concurrently(teacher: Teacher, items: Sequence[T], work: Callable[[T], R]) -> list[R]:
    """`work(item)` for every item, up to the teacher's `max_concurrency` at once, results in input order (so a
    run's output does not depend on which request came back first)."""
    with ThreadPoolExecutor(max_workers=teacher.client.config.max_concurrency) as pool:
        return list(pool.map(work, items))


_REFUSAL = re.compile(
    r"\b(i('m| am) sorry|i cannot|i can't|i can not|as an ai\b|i('m| am) unable|i won't be able)", re.IGNORECASE
)


def looks_like_refusal(text: str) -> bool:
    """A short reply that declines (Evol-Instruct's elimination of rewrites the model could not answer)."""
    return bool(_REFUSAL.search(text)) and len(text.split()) < 80


def normalised(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.casefold()))
