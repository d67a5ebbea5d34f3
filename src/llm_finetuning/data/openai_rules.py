"""Check JSONL files against the OpenAI fine-tuning API's data rules, and convert them to llmft rows.

Two methods, as the API names them:
- `supervised`: one chat per line, `{"messages": [...], "tools"?, "parallel_tool_calls"?, "functions"?}`.
- `dpo`: `{"input": {"messages": [...], ...}, "preferred_output": [msg], "non_preferred_output": [msg]}`.

Validation reports every problem with its 1-based line and field path, so a user can fix a file in one pass;
the file-level rules (at least `MIN_EXAMPLES` examples) are reported at line 0. Token counts and over-length
warnings need a transformers tokenizer. `to_llmft_rows` turns a validated file into rows of the project's
`messages` and `preference` formats (see `data/formats.py`).
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llm_finetuning.errors import DataError, UserError

logger = logging.getLogger(__name__)

METHODS = ("supervised", "dpo")
MIN_EXAMPLES = 10
ROLES = ("system", "developer", "user", "assistant", "tool", "function")
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call", "refusal")
SUPERVISED_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
DPO_KEYS = ("input", "preferred_output", "non_preferred_output")
DPO_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
FUNCTION_KEYS = ("name", "description", "parameters", "strict")
# Keys that give a line's format away, to tell a line of the other method from a merely broken one.
FORMAT_MARKERS = {"supervised": ("messages",), "dpo": DPO_KEYS}
# Without a chat template, each message costs its text plus a few tokens of role markup (OpenAI counts ~3-4).
TOKENS_PER_MESSAGE = 4
NON_TEXT_PARTS = {"image_url": "images", "input_audio": "audio", "file": "files"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a file: where, and what to do."""

    line: int  # 1-based line of the JSONL file; 0 for the whole file
    field: str  # e.g. "messages[2].weight"; "" for the whole line
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}, `{self.field}`: {self.message}" if self.field else f"{where}: {self.message}"


@dataclass
class OpenAIReport:
    """What `validate_openai_lines` found in a file."""

    method: str
    examples: int
    errors: list[Problem]
    warnings: list[Problem]
    token_counts: list[int]
    has_tools: bool
    more_errors: int = 0  # errors found beyond `max_errors`, counted but not kept
    more_warnings: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.more_errors

    def summary(self, shown: int = 10) -> str:
        errors, warnings = len(self.errors) + self.more_errors, len(self.warnings) + self.more_warnings
        lines = [
            f"{self.method} fine-tuning file: {self.examples} examples, "
            f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
        ]
        if self.token_counts:
            counts = self.token_counts
            lines.append(
                f"tokens per example: min {min(counts)}, mean {sum(counts) / len(counts):.1f}, max {max(counts)}; "
                f"total {sum(counts)} over {len(counts)} valid examples"
            )
        if self.has_tools:
            lines.append("uses tools or function calls")
        listed = (("errors", self.errors, self.more_errors), ("warnings", self.warnings, self.more_warnings))
        for title, items, hidden in listed:
            if items or hidden:
                lines.append(f"{title}:")
                lines += [f"  {p}" for p in items[:shown]]
                rest = len(items) - len(items[:shown]) + hidden
                if rest:
                    lines.append(f"  ... and {rest} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        counts = self.token_counts
        tokens = (
            {"min": min(counts), "mean": sum(counts) / len(counts), "max": max(counts), "total": sum(counts)}
            if counts
            else None
        )
        return {
            "method": self.method,
            "ok": self.ok,
            "examples": self.examples,
            "errors": [asdict(p) for p in self.errors],
            "more_errors": self.more_errors,
            "warnings": [asdict(p) for p in self.warnings],
            "more_warnings": self.more_warnings,
            "token_counts": list(counts),
            "tokens": tokens,
            "has_tools": self.has_tools,
        }


# ------------------------------------------------------------------------------------------- checks
@dataclass
class _Example:
    """The problems of one line, and what its later messages must agree with (declared tools, call ids)."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    tool_names: set[str] | None = None  # None: no `tools` given, so calls are not checked against them
    function_names: set[str] | None = None
    call_ids: set[str] = field(default_factory=set)
    uses_tools: bool = False

    def add(self, where: str, message: str) -> None:
        self.problems.append((where, message))


JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}


def _type(value: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it."""
    return "null" if value is None else JSON_TYPES.get(type(value), type(value).__name__)


def _unknown_keys(ex: _Example, obj: dict[str, Any], allowed: tuple[str, ...], prefix: str, what: str) -> None:
    for key in obj:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            ex.add(f"{prefix}{key}", f"is not {what}; {hint}allowed: {', '.join(allowed)}")


def _json_arguments(ex: _Example, value: Any, where: str) -> None:
    if not isinstance(value, str):
        ex.add(where, f"must be a string holding JSON, got {_type(value)}")
        return
    try:
        json.loads(value)
    except json.JSONDecodeError as exc:
        ex.add(where, f"is not valid JSON ({exc.msg}); give the arguments as a JSON-encoded string")


def _check_function(ex: _Example, spec: Any, where: str) -> str | None:
    """A function declaration `{name, description?, parameters?}`; returns its name."""
    if not isinstance(spec, dict):
        ex.add(where, f"must be an object with `name`, got {_type(spec)}")
        return None
    _unknown_keys(ex, spec, FUNCTION_KEYS, f"{where}.", "a function key")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        ex.add(f"{where}.name", "is required: the function's name as a string")
        name = None
    if "description" in spec and not isinstance(spec["description"], str):
        ex.add(f"{where}.description", f"must be a string, got {_type(spec['description'])}")
    if "parameters" in spec and not isinstance(spec["parameters"], dict):
        ex.add(f"{where}.parameters", f"must be a JSON schema object, got {_type(spec['parameters'])}")
    return name


def _check_tools(ex: _Example, obj: dict[str, Any], prefix: str) -> None:
    if "tools" in obj:
        ex.uses_tools = True
        tools, ex.tool_names = obj["tools"], set()
        if not isinstance(tools, list):
            ex.add(f"{prefix}tools", f"must be a list of {{type: function, function: {{...}}}}, got {_type(tools)}")
        else:
            for i, tool in enumerate(tools):
                where = f"{prefix}tools[{i}]"
                if not isinstance(tool, dict) or tool.get("type") != "function":
                    ex.add(where, 'must be an object with `type: "function"` and `function`')
                    continue
                _unknown_keys(ex, tool, ("type", "function"), f"{where}.", "a tool key")
                name = _check_function(ex, tool.get("function"), f"{where}.function")
                if name:
                    ex.tool_names.add(name)
    if "functions" in obj:
        ex.uses_tools = True
        functions, ex.function_names = obj["functions"], set()
        if not isinstance(functions, list):
            ex.add(f"{prefix}functions", f"must be a list of {{name, description, parameters}}, got {_type(functions)}")
        else:
            for i, spec in enumerate(functions):
                name = _check_function(ex, spec, f"{prefix}functions[{i}]")
                if name:
                    ex.function_names.add(name)
    if "parallel_tool_calls" in obj and not isinstance(obj["parallel_tool_calls"], bool):
        ex.add(f"{prefix}parallel_tool_calls", f"must be true or false, got {_type(obj['parallel_tool_calls'])}")


def _content_text(content: Any) -> str | None:
    """The text of a string or a list of text parts; None where it is neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        return "".join(p["text"] for p in content)
    return None


def _check_content(ex: _Example, message: dict[str, Any], where: str, role: str) -> None:
    content = message.get("content")
    calls = bool(message.get("tool_calls") or message.get("function_call"))
    if content is None:
        if role == "assistant" and calls:
            return
        need = "an assistant message needs content unless it carries tool_calls or function_call"
        ex.add(f"{where}.content", f"is missing; {need if role == 'assistant' else 'give the message text'}")
        return
    if isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                continue
            if kind == "text":
                ex.add(f"{where}.content[{j}].text", "must be a string")
            elif kind in NON_TEXT_PARTS:
                ex.add(f"{where}.content[{j}]", f"is a `{kind}` part; {NON_TEXT_PARTS[kind]} are not supported here")
            else:
                ex.add(f"{where}.content[{j}]", 'must be a text part `{"type": "text", "text": ...}`')
    elif not isinstance(content, str):
        ex.add(f"{where}.content", f"must be a string or a list of text parts, got {_type(content)}")
        return
    text = _content_text(content)
    if text is None or text.strip():
        return
    if role in ("system", "developer", "user"):
        ex.add(f"{where}.content", f"is empty; a {role} message needs text")
    elif role == "assistant" and not calls and message.get("weight", 1) == 1:
        # An empty trained answer teaches the model to stop at once; llmft's trainer refuses it too.
        ex.add(f"{where}.content", "is empty; give the answer, or set weight 0 to keep it out of training")


def _check_call(ex: _Example, call: Any, where: str) -> None:
    if not isinstance(call, dict):
        ex.add(where, f'must be an object {{id, type: "function", function}}, got {_type(call)}')
        return
    _unknown_keys(ex, call, ("id", "type", "function"), f"{where}.", "a tool call key")
    call_id = call.get("id")
    if not isinstance(call_id, str) or not call_id:
        ex.add(f"{where}.id", "is required: a string the tool message answers with `tool_call_id`")
    elif call_id in ex.call_ids:
        ex.add(f"{where}.id", f"`{call_id}` repeats an earlier tool call's id; give each call its own")
    else:
        ex.call_ids.add(call_id)
    if call.get("type") != "function":
        ex.add(f"{where}.type", f'must be "function", got {call.get("type")!r}')
    function = call.get("function")
    if not isinstance(function, dict):
        ex.add(f"{where}.function", "must be an object {name, arguments}")
        return
    _unknown_keys(ex, function, ("name", "arguments"), f"{where}.function.", "a function call key")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        ex.add(f"{where}.function.name", "is required: the name of the function called")
    elif ex.tool_names is not None and name not in ex.tool_names:
        known = ", ".join(sorted(ex.tool_names)) or "none"
        ex.add(f"{where}.function.name", f"calls `{name}`, which `tools` does not declare (declared: {known})")
    _json_arguments(ex, function.get("arguments"), f"{where}.function.arguments")


def _check_message(ex: _Example, message: Any, where: str, output: bool = False) -> str | None:
    """One message; returns its role where it has a valid one. A dpo `output` checks its content itself."""
    if not isinstance(message, dict):
        ex.add(where, f"must be an object with `role` and `content`, got {_type(message)}")
        return None
    _unknown_keys(ex, message, MESSAGE_KEYS, f"{where}.", "a message key")
    role = message.get("role")
    if role not in ROLES:
        got = "missing" if role is None else f"`{role}`"
        ex.add(f"{where}.role", f"is {got}; expected one of {', '.join(ROLES)}")
        return None
    if not output:
        _check_content(ex, message, where, role)
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            ex.add(f"{where}.weight", f"is only allowed on assistant messages, not on a {role} message")
        elif isinstance(weight, bool) or weight not in (0, 1) or not isinstance(weight, int):
            ex.add(f"{where}.weight", f"must be 0 or 1, got {json.dumps(weight)}")
    if "name" in message and not isinstance(message["name"], str):
        ex.add(f"{where}.name", f"must be a string, got {_type(message['name'])}")
    if role == "function" and not isinstance(message.get("name"), str):
        ex.add(f"{where}.name", "is required on a function message: the function it answers")
    for key in ("tool_calls", "function_call", "refusal"):
        if key in message and role != "assistant":
            ex.add(f"{where}.{key}", f"is only allowed on assistant messages, not on a {role} message")
    if "refusal" in message and message["refusal"] is not None and not isinstance(message["refusal"], str):
        ex.add(f"{where}.refusal", f"must be a string or null, got {_type(message['refusal'])}")
    if message.get("tool_calls") is not None:
        ex.uses_tools = True
        calls = message["tool_calls"]
        if not isinstance(calls, list):
            ex.add(f"{where}.tool_calls", f"must be a list of tool calls, got {_type(calls)}")
        else:
            for k, call in enumerate(calls):
                _check_call(ex, call, f"{where}.tool_calls[{k}]")
    if message.get("function_call") is not None:
        ex.uses_tools = True
        call = message["function_call"]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            ex.add(f"{where}.function_call", "must be an object {name, arguments}")
        else:
            _unknown_keys(ex, call, ("name", "arguments"), f"{where}.function_call.", "a function call key")
            if ex.function_names is not None and call["name"] not in ex.function_names:
                ex.add(f"{where}.function_call.name", f"calls `{call['name']}`, which `functions` does not declare")
            _json_arguments(ex, call.get("arguments"), f"{where}.function_call.arguments")
    if role in ("tool", "function"):
        ex.uses_tools = True
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            ex.add(f"{where}.tool_call_id", "is required on a tool message: the id of the call it answers")
        elif call_id not in ex.call_ids:
            ex.add(f"{where}.tool_call_id", f"is `{call_id}`, which no earlier tool call in this example has")
    elif "tool_call_id" in message:
        ex.add(f"{where}.tool_call_id", f"is only allowed on tool messages, not on a {role} message")
    return role


def _check_messages(ex: _Example, messages: Any, where: str) -> list[str | None]:
    if messages is None:
        ex.add(where, "is required: a non-empty list of {role, content} messages")
        return []
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else _type(messages)
        ex.add(where, f"must be a non-empty list of {{role, content}} messages, got {got}")
        return []
    return [_check_message(ex, m, f"{where}[{i}]") for i, m in enumerate(messages)]


def _check_supervised(ex: _Example, row: dict[str, Any]) -> None:
    _unknown_keys(ex, row, SUPERVISED_KEYS, "", "a supervised fine-tuning key")
    _check_tools(ex, row, "")
    roles = _check_messages(ex, row.get("messages"), "messages")
    if not roles or None in roles:  # a broken message may be the assistant turn: its own error says enough
        return
    trained = [m for m, r in zip(row["messages"], roles, strict=True) if r == "assistant"]
    if not trained:
        ex.add("messages", "has no assistant message; each example needs at least one to learn from")
    elif all(m.get("weight", 1) == 0 for m in trained):
        ex.add("messages", "gives every assistant message weight 0, so it teaches nothing; set weight 1 on one")


def _check_output(ex: _Example, value: Any, where: str) -> None:
    if not isinstance(value, list) or len(value) != 1:
        ex.add(where, "must be a list of exactly one assistant message")
        return
    message = value[0]
    role = _check_message(ex, message, f"{where}[0]", output=True)
    if role is None:
        return
    if role != "assistant":
        ex.add(f"{where}[0].role", f"must be assistant, got `{role}`")
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        ex.add(f"{where}[0].content", "must be the response as a non-empty string")
    if "weight" in message and role == "assistant":  # _check_message already refused it on other roles
        ex.add(f"{where}[0].weight", "is not used in a dpo output; remove it")


def _check_dpo(ex: _Example, row: dict[str, Any]) -> None:
    _unknown_keys(ex, row, DPO_KEYS, "", "a dpo fine-tuning key")
    given = row.get("input")
    if not isinstance(given, dict):
        ex.add("input", f"is required: an object with `messages`, got {_type(given)}")
    else:
        _unknown_keys(ex, given, DPO_INPUT_KEYS, "input.", "a dpo input key")
        _check_tools(ex, given, "input.")
        roles = _check_messages(ex, given.get("messages"), "input.messages")
        if roles and roles[-1] == "assistant":
            ex.add(
                f"input.messages[{len(roles) - 1}]",
                "is an assistant message; the input must end before the response (it goes in the outputs)",
            )
    for name in ("preferred_output", "non_preferred_output"):
        _check_output(ex, row.get(name), name)
    if "preferred_output" in row and row.get("preferred_output") == row.get("non_preferred_output"):
        ex.add("non_preferred_output", "is identical to preferred_output, so there is no preference to learn")


def _other_format(row: dict[str, Any], method: str) -> str | None:
    """The other method, where the row's keys say it belongs to it and not to `method`."""
    other = "dpo" if method == "supervised" else "supervised"
    if not any(key in row for key in FORMAT_MARKERS[method]) and any(key in row for key in FORMAT_MARKERS[other]):
        return other
    return None


# ------------------------------------------------------------------------------------------- tokens
def _plain_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as chat templates expect them: text content, `developer` as `system`, calls kept."""
    out = []
    for m in messages:
        plain: dict[str, Any] = {
            "role": "system" if m["role"] == "developer" else m["role"],
            "content": _content_text(m.get("content")) or "",
        }
        for key in ("tool_calls", "tool_call_id", "name"):
            if key in m:
                plain[key] = m[key]
        out.append(plain)
    return out


def count_tokens(tokenizer: Any, messages: list[dict[str, Any]]) -> int:
    """Tokens of a conversation: its chat template where the tokenizer has one, else text plus a few per message."""
    plain = _plain_messages(messages)
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(plain, tokenize=True)
            # transformers 5 returns a BatchEncoding, 4.x a list of ids
            return len(ids["input_ids"] if hasattr(ids, "keys") else ids)
        except Exception as exc:  # templates raise on shapes they do not know (tool turns, role order)
            logger.debug("chat template failed (%s); counting message texts instead", exc)
    total = 0
    for m in plain:
        text = m["content"] + "".join(json.dumps(c, ensure_ascii=False) for c in m.get("tool_calls") or [])
        total += len(tokenizer(text)["input_ids"]) + TOKENS_PER_MESSAGE
    return total


def _example_tokens(tokenizer: Any, row: dict[str, Any], method: str) -> int:
    if method == "supervised":
        return count_tokens(tokenizer, row["messages"])
    prompt = row["input"]["messages"]
    return max(count_tokens(tokenizer, prompt + row[side]) for side in ("preferred_output", "non_preferred_output"))


# ---------------------------------------------------------------------------------------- validation
def _decode(raw: str | bytes, number: int) -> tuple[str | None, Problem | None]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, Problem(number, "", f"is not UTF-8 text (byte {exc.start}); save the file as UTF-8")
    if number == 1 and raw.startswith("\ufeff"):
        logger.info("line 1 starts with a UTF-8 byte-order mark; it is ignored")
        raw = raw[1:]
    return raw.strip(), None


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UserError(f"method `{method}` is not an OpenAI fine-tuning method; use one of {', '.join(METHODS)}")


def validate_openai_lines(
    lines: Iterable[str] | Iterable[bytes],
    method: str = "supervised",
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    min_examples: int = MIN_EXAMPLES,
    max_errors: int = 100,
) -> OpenAIReport:
    """Check the lines of a JSONL file against OpenAI's rules for `method`; blank lines are skipped."""
    _check_method(method)
    report = OpenAIReport(method, 0, [], [], [], False)

    def error(problem: Problem) -> None:
        if len(report.errors) < max_errors:
            report.errors.append(problem)
        else:
            report.more_errors += 1

    for number, raw in enumerate(lines, start=1):
        text, problem = _decode(raw, number)
        if problem is not None:
            report.examples += 1
            error(problem)
            continue
        if not text:
            continue
        report.examples += 1
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            error(
                Problem(
                    number, "", f"is not valid JSON ({exc.msg} at column {exc.colno}); write one JSON object per line"
                )
            )
            continue
        if not isinstance(row, dict):
            error(Problem(number, "", f"must be a JSON object, got {_type(row)}"))
            continue
        other = _other_format(row, method)
        if other is not None:
            error(
                Problem(
                    number,
                    "",
                    f"is a {other} example, but this file is in the {method} format; keep one format per file",
                )
            )
            continue
        example = _Example()
        (_check_supervised if method == "supervised" else _check_dpo)(example, row)
        report.has_tools = report.has_tools or example.uses_tools
        for where, message in example.problems:
            error(Problem(number, where, message))
        if example.problems or tokenizer is None:
            continue
        tokens = _example_tokens(tokenizer, row, method)
        report.token_counts.append(tokens)
        if max_length is not None and tokens > max_length:
            warning = Problem(number, "", f"has {tokens} tokens; it would be cut to max_length {max_length} tokens")
            if len(report.warnings) < max_errors:
                report.warnings.append(warning)
            else:
                report.more_warnings += 1
    # File-level rules come first: they are what a user must fix before anything else matters.
    if report.examples < max(min_examples, 1):
        count = f"{report.examples} example{'s' * (report.examples != 1)}" if report.examples else "no examples"
        need = f"{max(min_examples, 1)} example{'s' * (max(min_examples, 1) != 1)}"
        report.errors.insert(0, Problem(0, "", f"has {count}; OpenAI requires at least {need}"))
    return report


def _open_lines(path: str | Path) -> Iterator[bytes]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    # Binary, split on "\n" only: JSON may hold U+2028 and other characters that text mode would split on.
    with path.open("rb") as handle:
        yield from handle


def validate_openai_file(path: str | Path, method: str = "supervised", **kwargs: Any) -> OpenAIReport:
    """`validate_openai_lines` over a file; raises `DataError` where it does not exist."""
    return validate_openai_lines(_open_lines(path), method, **kwargs)


def detect_method(path_or_first_line: str | bytes | Path | dict[str, Any]) -> str:
    """The method of a file: dpo if its first example (a path's first non-blank line) has `preferred_output`.

    Anything unreadable counts as "supervised": validation then reports it.
    """
    row: Any = path_or_first_line
    if isinstance(row, bytes):
        row = row.decode("utf-8", errors="replace")
    if isinstance(row, Path) or (isinstance(row, str) and not row.lstrip("\ufeff \t").startswith("{")):
        lines = _open_lines(row)
        row = next((line for line in lines if line.strip()), b"").decode("utf-8", errors="replace")
        lines.close()  # the rest of the file is not needed
    if isinstance(row, str):
        try:
            row = json.loads(row.lstrip("\ufeff"))
        except json.JSONDecodeError:
            return "supervised"  # validation then reports the line
    return "dpo" if isinstance(row, dict) and "preferred_output" in row else "supervised"


# ---------------------------------------------------------------------------------------- conversion
def _llmft_message(message: dict[str, Any], keep_weight: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "role": "system" if message["role"] == "developer" else message["role"],
        "content": _content_text(message.get("content")) or "",
    }
    if keep_weight and message.get("weight", 1) == 0:  # weight 1 is the project's default
        out["weight"] = 0
    for key in ("tool_calls", "function_call", "tool_call_id", "name"):  # the `messages` format reads them
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def _has_tools(row: dict[str, Any], messages: list[dict[str, Any]]) -> bool:
    return any(k in row for k in ("tools", "functions")) or any(
        m.get("tool_calls") or m.get("function_call") or m.get("role") in ("tool", "function") for m in messages
    )


def to_llmft_rows(path: str | Path, method: str) -> Iterator[dict[str, Any]]:
    """Rows of the project's `messages` (supervised) or `preference` (dpo) format from a validated file.

    Supervised examples keep their tools and tool calls (the `messages` format reads OpenAI's shapes); a DPO
    example with tools raises `UserError`, since preference pairs carry no tools.
    """
    _check_method(method)
    for number, raw in enumerate(_open_lines(path), start=1):
        text = raw.decode("utf-8").lstrip("\ufeff").strip()
        if not text:
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {number}: not valid JSON ({exc.msg}); validate the file first") from None
        if method == "supervised":
            declared = {key: row[key] for key in ("tools", "functions") if row.get(key)}
            yield {"messages": [_llmft_message(m) for m in row["messages"]], **declared}
            continue
        source = row["input"]
        if _has_tools(source, source["messages"]):
            raise UserError(
                f"{path}, line {number}: the DPO example has tools or tool calls; preference pairs carry no tools, "
                "so remove such examples or write the calls as message text"
            )
        yield {
            "prompt": [_llmft_message(m, keep_weight=False) for m in source["messages"]],
            "chosen": [_llmft_message(row["preferred_output"][0], keep_weight=False)],
            "rejected": [_llmft_message(row["non_preferred_output"][0], keep_weight=False)],
        }
