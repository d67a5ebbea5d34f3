"""Helpers shared by the dataset modules: field access with clear errors, context clipping, QA records.

A module-private file (leading underscore), so the registry does not look for a `DATASET` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from llm_finetuning.data.datasets.base import Converter
from llm_finetuning.data.formats import Record, RowError

MAX_CONTEXT_CHARS = 6000
"""Default budget for context passages; only the passages are cut, never the question or the answer."""
CLIP_MARKER = " [...]"


def pick(row: dict[str, Any], *names: str, required: bool = True) -> Any:
    """The first present, non-null field among `names` (a dotted name looks inside nested objects)."""
    for name in names:
        value: Any = row
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            return value
    if required:
        present = ", ".join(sorted(map(str, row))[:12])
        raise RowError(f"field `{'` / `'.join(names)}` is missing (the row has: {present})")
    return None


def text(row: dict[str, Any], *names: str, required: bool = True) -> str:
    """A non-empty string field (surrounding whitespace removed); `""` for an absent optional one."""
    value = pick(row, *names, required=required)
    if value is None:
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise RowError(f"field `{names[0]}` must be text, got {type(value).__name__}")
    value = str(value).strip()
    if not value and required:
        raise RowError(f"field `{names[0]}` is empty")
    return value


def text_list(value: Any, where: str) -> list[str]:
    """A list of strings, blanks and duplicates dropped, order kept."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise RowError(f"field `{where}` must be a list of strings")
    return list(dict.fromkeys(item.strip() for item in value if item.strip()))


def clip(passage: str, limit: int) -> str:
    """`passage` cut at the end to at most `limit` characters (at a word boundary, marked `[...]`)."""
    if len(passage) <= limit:
        return passage
    if limit <= len(CLIP_MARKER):
        return passage[:limit]
    cut = passage[: limit - len(CLIP_MARKER)]
    space = cut.rfind(" ")
    if space > len(cut) // 2:
        cut = cut[:space]
    return cut.rstrip() + CLIP_MARKER


def passages(items: Iterable[tuple[str, str, bool]], limit: int) -> str:
    """(title, text, keep) passages joined in their order within `limit` characters.

    Over the limit, passages not marked `keep` (e.g. distractors) are dropped from the last one back first;
    what remains is then clipped at the end.
    """
    blocks = [(f"# {title}\n{body}" if title else body, keep) for title, body, keep in items if body.strip()]
    joined = "\n\n".join(block for block, _ in blocks)
    for index in reversed(range(len(blocks))):
        if len(joined) <= limit:
            break
        if not blocks[index][1]:
            del blocks[index]
            joined = "\n\n".join(block for block, _ in blocks)
    return clip(joined, limit)


def lettered(options: list[tuple[str, str]]) -> str:
    """Multiple-choice options as `A. text` lines."""
    return "\n".join(f"{label}. {option}" for label, option in options)


@dataclass(frozen=True)
class QA:
    """One question in a dataset's template: the user prompt, the assistant's target, the reward columns."""

    prompt: str
    completion: str
    extra: dict[str, Any] = field(default_factory=dict)


def qa_converters(parse: Callable[[dict[str, Any]], QA]) -> dict[str, Converter]:
    """`messages` (prompt -> completion, loss on the completion only) and `prompt_only` (prompt + extras)."""

    def to_messages(row: dict[str, Any]) -> Record:
        qa = parse(row)
        return {"messages": [{"role": "user", "content": qa.prompt}, {"role": "assistant", "content": qa.completion}]}

    def to_prompt_only(row: dict[str, Any]) -> Record:
        qa = parse(row)
        return {**qa.extra, "prompt": [{"role": "user", "content": qa.prompt}]}

    return {"messages": to_messages, "prompt_only": to_prompt_only}
