"""Map a raw row of each supported format onto the canonical record: a list of chat messages.

Every format ends up as `[{"role": ..., "content": ...}, ...]` with at least one assistant message, so one
tokenization path (the chat template and the loss mask) serves them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


class RowError(ValueError):
    """A row does not fit its format; the message names the field."""


def _field(row: dict[str, Any], columns: dict[str, str], name: str, required: bool = True) -> Any:
    column = columns.get(name, name)
    if column not in row or row[column] is None:
        if required:
            mapped = f" (mapped from `{name}`)" if column != name else ""
            raise RowError(f"field `{column}`{mapped} is missing; set `columns: {{{name}: <your column>}}`")
        return None
    return row[column]


def _text(row: dict[str, Any], columns: dict[str, str], name: str, required: bool = True) -> str | None:
    value = _field(row, columns, name, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"field `{columns.get(name, name)}` must be a string, got {type(value).__name__}")
    return value


def from_messages(row: dict[str, Any], columns: dict[str, str]) -> list[Message]:
    value = _field(row, columns, "messages")
    field = columns.get("messages", "messages")
    if not isinstance(value, list) or not value:
        raise RowError(f"field `{field}` must be a non-empty list of {{role, content}} objects")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RowError(f"field `{field}[{index}]` must be an object with `role` and `content`")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RowError(f"field `{field}[{index}].role` is `{role}`; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise RowError(f"field `{field}[{index}].content` must be a string")
        messages.append({"role": role, "content": content})
    return messages


def from_alpaca(row: dict[str, Any], columns: dict[str, str]) -> list[Message]:
    instruction = _text(row, columns, "instruction")
    extra = _text(row, columns, "input", required=False)
    output = _text(row, columns, "output")
    system = _text(row, columns, "system", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def from_prompt_completion(row: dict[str, Any], columns: dict[str, str]) -> list[Message]:
    prompt = _text(row, columns, "prompt")
    completion = _text(row, columns, "completion")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def text_field(row: dict[str, Any], columns: dict[str, str]) -> str:
    """The document of a `text` row."""
    text = _text(row, columns, "text")
    if not text.strip():
        raise RowError(f"field `{columns.get('text', 'text')}` is empty")
    return text


FORMATS: dict[str, Callable[[dict[str, Any], dict[str, str]], list[Message]]] = {
    "messages": from_messages,
    "alpaca": from_alpaca,
    "prompt_completion": from_prompt_completion,
}


def to_messages(
    row: dict[str, Any], fmt: str, columns: dict[str, str], system_prompt: str | None = None
) -> list[Message]:
    """The canonical messages of a row; raises `RowError` naming the offending field."""
    messages = FORMATS[fmt](row, columns)
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("the conversation has no assistant message, so there is nothing to learn from it")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        raise RowError("an assistant message is empty")
    if system_prompt and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages
