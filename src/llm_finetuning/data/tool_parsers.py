"""Read tool calls back out of a model's reply, in the layout its chat template trains.

Three layouts, one per family of built-in tool templates (data/templates.py), also recognised in the templates
that models ship with:
- `hermes`:  `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` after any text (Hermes, Qwen2.5+).
- `llama3`:  the reply is a JSON object `{"name": ..., "parameters": {...}}`, one per line (Llama 3.1+).
- `mistral`: `[TOOL_CALLS] [{"name": ..., "arguments": {...}, "id": ...}, ...]` (Mistral v3 tokenizers).

A reply that opens a call but does not parse is kept as plain content and marked `malformed`, so a caller can
serve it as text or count it as a failed call; it never raises.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from llm_finetuning.data.tool_calls import Call, call_id
from llm_finetuning.errors import RowError


@dataclass
class ParsedReply:
    """The text of a reply and the calls it makes (canonical call dicts, arguments as objects)."""

    content: str
    calls: list[Call] = field(default_factory=list)
    malformed: bool = False
    """The reply started a call that did not parse; `content` is then the whole reply."""


def _call(obj: Any, arguments_key: str, index: int, text: str) -> Call:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        raise ValueError("a call must be an object with a name")
    arguments = obj.get(arguments_key, obj.get("arguments", obj.get("parameters", {})))
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("a call's arguments must be an object")
    identifier = obj.get("id") if isinstance(obj.get("id"), str) and obj.get("id") else call_id(text, index)
    return {"id": identifier, "type": "function", "function": {"name": obj["name"], "arguments": arguments}}


@dataclass(frozen=True)
class ToolCallFormat:
    """One layout: the text that opens a call in a reply, and how to read the calls."""

    name: str
    opener: str
    """Text a reply starts a call with; a streaming server holds back text that could be its beginning."""

    def find(self, text: str) -> int:
        """Where the first call starts in `text`, or -1."""
        if self.name == "llama3":
            match = _LLAMA_CALL.search(text)
            return match.start() if match else -1
        return text.find(self.opener)

    def parse(self, text: str) -> ParsedReply:
        start = self.find(text)
        if start < 0:
            return ParsedReply(text)
        try:
            calls = _PARSERS[self.name](text[start:])
        except (ValueError, TypeError, json.JSONDecodeError):
            return ParsedReply(text, malformed=True)
        if not calls:
            return ParsedReply(text, malformed=True)
        return ParsedReply(text[:start].strip(), calls)

    def prefill(self, name: str | None = None) -> str:
        """Text that makes a reply a call when generation starts from it: the layout's call opener, or for a call
        of `name` the opener through the arguments key. Read the reply with `parse(prefill + generated)`."""
        head, key = _PREFILLS[self.name]
        if name is None:
            return head or '{"name": '  # llama3 has no marker: the call's first key is the opener
        return f'{head}{{"name": {json.dumps(name)}, "{key}": '


def _hermes(text: str) -> list[Call]:
    calls, rest = [], text
    while rest.strip():
        if not rest.lstrip().startswith("<tool_call>"):
            raise ValueError("text after a call")
        body = rest.lstrip()[len("<tool_call>") :]
        end = body.find("</tool_call>")
        inner, rest = (body, "") if end < 0 else (body[:end], body[end + len("</tool_call>") :])
        calls.append(_call(json.loads(inner), "arguments", len(calls), text))
    return calls


_LLAMA_CALL = re.compile(r'(?:<\|python_tag\|>)?\{\s*"name"\s*:')


def _llama3(text: str) -> list[Call]:
    decoder, calls = json.JSONDecoder(), []
    position = 0
    text = text.removeprefix("<|python_tag|>")
    while True:
        while position < len(text) and text[position] in " \t\r\n;":
            position += 1
        if position == len(text):
            return calls
        obj, position = decoder.raw_decode(text, position)
        calls.append(_call(obj, "parameters", len(calls), text))


def _mistral(text: str) -> list[Call]:
    body = text[len("[TOOL_CALLS]") :].strip()
    items, end = json.JSONDecoder().raw_decode(body)
    if body[end:].strip():
        raise ValueError("text after the calls")
    items = items if isinstance(items, list) else [items]
    return [_call(item, "arguments", index, text) for index, item in enumerate(items)]


_PARSERS = {"hermes": _hermes, "llama3": _llama3, "mistral": _mistral}
# The text before a call's JSON object and the key its arguments go under, as each layout's template writes them.
_PREFILLS = {
    "hermes": ("<tool_call>\n", "arguments"),
    "llama3": ("", "parameters"),
    "mistral": ("[TOOL_CALLS] [", "arguments"),
}
FORMATS: dict[str, ToolCallFormat] = {
    "hermes": ToolCallFormat("hermes", "<tool_call>"),
    "llama3": ToolCallFormat("llama3", '{"name"'),
    "mistral": ToolCallFormat("mistral", "[TOOL_CALLS]"),
}


def format_for_template(template: str | None) -> ToolCallFormat | None:
    """The call layout a chat template writes, from the markers in its text; None if it writes no calls."""
    if not template or "tool_calls" not in template:
        return None
    if "[TOOL_CALLS]" in template:
        return FORMATS["mistral"]
    if "<tool_call>" in template:
        return FORMATS["hermes"]
    if "ipython" in template or "<|python_tag|>" in template:
        return FORMATS["llama3"]
    return None


def tool_format(name: str) -> ToolCallFormat:
    """A layout by name (`hermes`, `llama3`, `mistral`)."""
    if name not in FORMATS:
        raise RowError(f"unknown tool call format `{name}`; known: {', '.join(FORMATS)}")
    return FORMATS[name]
