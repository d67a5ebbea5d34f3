"""Tools and tool calls as data: one shape for every layout people write them in.

Canonical shapes (what chat templates receive, the shape transformers documents for tool use):
- a tool:      {"type": "function", "function": {"name", "description"?, "parameters"?}}
- a call:      {"id": str, "type": "function", "function": {"name": str, "arguments": dict}}
- an assistant message that calls: {"role": "assistant", "content": str, "tool_calls": [call, ...]}
- a tool's answer: {"role": "tool", "content": str, "tool_call_id"?: str, "name"?: str}

Arguments are kept as objects, not JSON strings: templates render them with `tojson`, and a round-trip test can
compare them as values. Layouts read: OpenAI `tools` / `tool_calls` (arguments as a JSON string or an object),
the legacy OpenAI `functions` / `function_call`, and the ShareGPT function-calling layout (`function_call` turns
holding `{"name", "arguments"}` or a list of them, a `tools` column holding a JSON list of function definitions).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from llm_finetuning.errors import RowError

Tool = dict[str, Any]
Call = dict[str, Any]
ID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _json(value: Any, where: str, what: str) -> Any:
    """`value`, decoded first when it is a JSON string."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise RowError(f"field `{where}` is not valid JSON {what} ({exc.msg} at character {exc.pos})") from None


def normalize_tools(value: Any, where: str) -> list[Tool]:
    """A `tools` (or legacy `functions`) column as a list of `{"type": "function", "function": {...}}`."""
    value = _json(value, where, "(a list of function definitions)")
    if value in (None, []):
        return []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"field `{where}` must be a list of function definitions, got {type(value).__name__}")
    tools, names = [], set()
    for index, tool in enumerate(value):
        spot = f"{where}[{index}]"
        if not isinstance(tool, dict):
            raise RowError(f"field `{spot}` must be a function definition object, got {type(tool).__name__}")
        if "function" in tool:
            if tool.get("type", "function") != "function":
                raise RowError(f"field `{spot}.type` is `{tool['type']}`; only `function` tools are supported")
            function, spot = tool["function"], f"{spot}.function"
        else:
            function = tool
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowError(f"field `{spot}.name` must be the function's name (a non-empty string)")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise RowError(f"field `{spot}.parameters` must be a JSON schema object")
        if function["name"] in names:
            raise RowError(f"field `{spot}.name`: `{function['name']}` is declared twice")
        names.add(function["name"])
        tools.append({"type": "function", "function": dict(function)})
    return tools


def call_id(*parts: Any) -> str:
    """A deterministic 9-character alphanumeric call id (the length Mistral's templates require)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return "".join(ID_ALPHABET[byte % len(ID_ALPHABET)] for byte in digest[:9])


def normalize_call(value: Any, where: str, fallback_id: str) -> Call:
    """One call: `{"name", "arguments"}` (ShareGPT), `{"function": {...}}` or `{"id", "type", "function"}`."""
    if not isinstance(value, dict):
        raise RowError(f"field `{where}` must be a call object with `name` and `arguments`")
    function = value.get("function", value)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
        raise RowError(f"field `{where}` must name the function it calls (`name`, a non-empty string)")
    spot = f"{where}.function" if "function" in value else where
    arguments = function.get("arguments", function.get("parameters", {}))
    arguments = _json(arguments, f"{spot}.arguments", "(the call's arguments as an object)")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RowError(f"field `{spot}.arguments` must be an object of named arguments, got {type(arguments).__name__}")
    identifier = value.get("id")
    if identifier is not None and (not isinstance(identifier, str) or not identifier):
        raise RowError(f"field `{where}.id` must be a non-empty string")
    return {
        "id": identifier or fallback_id,
        "type": "function",
        "function": {"name": function["name"], "arguments": arguments},
    }


def normalize_calls(value: Any, where: str, seed: Any) -> list[Call]:
    """A message's calls: one call or a list of them, possibly as a JSON string (ShareGPT `function_call`)."""
    value = _json(value, where, "(a call, or a list of calls)")
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise RowError(f"field `{where}` holds no call")
    return [
        normalize_call(call, f"{where}[{i}]" if isinstance(value, list) else where, call_id(seed, i))
        for i, call in enumerate(calls)
    ]


def link_tool_answers(messages: list[dict[str, Any]]) -> None:
    """Give each tool answer without `tool_call_id` the id of the call it answers (calls are answered in order)."""
    pending: list[Call] = []
    for message in messages:
        if message.get("tool_calls"):
            pending = list(message["tool_calls"])
        elif message["role"] == "tool":
            call = pending.pop(0) if pending else None
            if call is not None:
                message.setdefault("tool_call_id", call["id"])
                message.setdefault("name", call["function"]["name"])


def check_declared(messages: list[dict[str, Any]], tools: list[Tool], where: str) -> None:
    """Every call names a declared tool, when tools are declared."""
    if not tools:
        return
    names = {tool["function"]["name"] for tool in tools}
    for turn, message in enumerate(messages, start=1):
        for call in message.get("tool_calls") or ():
            name = call["function"]["name"]
            if name not in names:
                raise RowError(
                    f"turn {turn} calls `{name}`, which `{where}` does not declare "
                    f"(declared: {', '.join(sorted(names))}); add it to the tools or fix the call"
                )


def arguments_json(call: Call) -> str:
    """The call's arguments as the JSON string the OpenAI API carries."""
    return json.dumps(call["function"]["arguments"], ensure_ascii=False)
