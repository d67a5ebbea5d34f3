"""Prove that a chat template rendered the whole conversation: nothing dropped, nothing run together.

A template drops what it has no branch for (a `tool` turn, a call, the declared tools) without a word, and the
model then trains on a conversation that never happened. After rendering, each message's content, each call's
name and arguments, and each declared tool's name, description and parameter names must be found in the text:
messages in order (system messages anywhere, since some templates move the system prompt into a user turn),
and with something other than whitespace between consecutive messages, or the template has merged them.
Text may appear as given or JSON-escaped (templates render tool results and arguments with `tojson`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llm_finetuning.data.templates import TOOL_TEMPLATES
from llm_finetuning.errors import RowError


def _variants(value: Any) -> tuple[str, ...]:
    if not isinstance(value, str):
        return (json.dumps(value, ensure_ascii=False),)
    text = value.strip()
    forms = [text, json.dumps(text, ensure_ascii=False)[1:-1], json.dumps(text)[1:-1]]
    return tuple(dict.fromkeys(forms))


def _leaves(value: Any) -> Iterator[tuple[str, Any]]:
    """(what, value) for each key and scalar inside a call's arguments, in order."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"argument `{key}`", key
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif not (isinstance(value, str) and not value.strip()):
        yield "an argument value", value


def message_fragments(message: dict[str, Any]) -> list[tuple[str, Any]]:
    """(what, text) pairs a rendering of `message` must contain, in order."""
    out = [("its content", message["content"])] if message["content"].strip() else []
    for call in message.get("tool_calls") or ():
        name = call["function"]["name"]
        out.append((f"its call of `{name}`", name))
        arguments = call["function"]["arguments"]
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        out += [(f"{what} of its call of `{name}`", leaf) for what, leaf in _leaves(arguments)]
    return out


def _find(text: str, value: Any, start: int) -> tuple[int, int]:
    found = [(text.find(form, start), len(form)) for form in _variants(value)]
    found = [(at, length) for at, length in found if at >= 0]
    return min(found) if found else (-1, 0)


def _snippet(message: dict[str, Any]) -> str:
    text = " ".join(message["content"].split())
    if not text and message.get("tool_calls"):
        text = "call " + ", ".join(c["function"]["name"] for c in message["tool_calls"])
    return text if len(text) <= 40 else text[:37] + "..."


def _advice(role: str, calls: bool) -> str:
    if role == "tool" or calls:
        return (
            f"Use a template that renders tools and tool turns (data.chat_template: {', '.join(TOOL_TEMPLATES)}), "
            "or give your own Jinja template as `data.chat_template`."
        )
    return (
        "Use a template that renders every role (data.chat_template: chatml), or give your own as data.chat_template."
    )


def check_rendering(
    text: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, template: str
) -> None:
    """Raise `RowError` naming the turn, its role and `template` when `text` lost or merged part of the row."""
    cursor, previous = 0, None
    for turn, message in enumerate(messages, start=1):
        role = message["role"]
        fragments = message_fragments(message)
        if not fragments:
            continue
        anchored = role != "system"
        position, first = (cursor if anchored else 0), None
        for what, value in fragments:
            at, length = _find(text, value, position)
            if at < 0:
                raise RowError(
                    f"turn {turn} of {len(messages)} ({role}: {_snippet(message)!r}) is missing {what} from the text "
                    f"{template} renders, so the model would train on a conversation that never happened. "
                    + _advice(role, bool(message.get("tool_calls")))
                )
            first = at if first is None else first
            position = at + length
        if not anchored:
            continue
        if previous is not None and not text[cursor:first].strip():
            before_turn, before_role = previous
            raise RowError(
                f"turns {before_turn} ({before_role}) and {turn} ({role}: {_snippet(message)!r}) run together in the "
                f"text {template} renders, with nothing between them to tell where one ends. "
                + _advice(role, bool(message.get("tool_calls")))
            )
        cursor, previous = position, (turn, role)
    for tool in tools or ():
        _check_tool(text, tool["function"], template)


def _check_tool(text: str, function: dict[str, Any], template: str) -> None:
    wanted = [("name", function["name"])]
    if isinstance(function.get("description"), str) and function["description"].strip():
        wanted.append(("description", function["description"]))
    properties = (function.get("parameters") or {}).get("properties") or {}
    wanted += [(f"parameter `{key}`", key) for key in properties]
    for what, value in wanted:
        if _find(text, value, 0)[0] < 0:
            raise RowError(
                f"the {what} of the tool `{function['name']}` given in `tools` is missing from the text {template} "
                f"renders, so the model never sees the function it is taught to call. Use a template that renders "
                f"tools (data.chat_template: {', '.join(TOOL_TEMPLATES)}), or give your own as `data.chat_template`."
            )
