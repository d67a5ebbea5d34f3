"""The OpenAI request shapes the server accepts: parsing and validation, before anything reaches the model.

Everything here is plain Python (no torch, no web framework), so each rule is unit-tested on its own. A parameter
is either honoured or refused with a 400 that names it: nothing is silently ignored.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from llm_finetuning.data.tool_calls import link_tool_answers, normalize_calls, normalize_tools
from llm_finetuning.errors import RowError


@dataclass(frozen=True)
class ServerLimits:
    max_tokens: int = 1024
    """Largest `max_tokens` a request may ask for."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 beyond)."""
    max_n: int = 8
    """Largest `n` (choices per request)."""
    max_stops: int = 4
    """Most `stop` strings a request may give (OpenAI's limit)."""
    max_stop_chars: int = 256
    """Longest `stop` string."""
    request_timeout_s: float = 300.0
    """Time limit of one request from arrival to its last token (queue wait included)."""
    body_timeout_s: float = 30.0
    """Time a client has to send its whole body (slow clients are answered 408)."""
    max_inputs: int = 2048
    """Most texts in one embeddings request, and documents in one rerank request (OpenAI's embeddings limit)."""


class ApiError(Exception):
    """An OpenAI-shaped error: HTTP status, message, `type`, `param` and `code`."""

    def __init__(
        self,
        status: HTTPStatus,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or _KINDS.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


_KINDS = {
    HTTPStatus.UNAUTHORIZED: "authentication_error",
    HTTPStatus.NOT_FOUND: "invalid_request_error",
    HTTPStatus.TOO_MANY_REQUESTS: "rate_limit_error",
    HTTPStatus.SERVICE_UNAVAILABLE: "server_error",
    HTTPStatus.INTERNAL_SERVER_ERROR: "server_error",
    HTTPStatus.GATEWAY_TIMEOUT: "timeout_error",
}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, message, param, code)


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks of the engine (shared by its `n` choices)."""

    model: str
    max_tokens: int | None  # None: the default, capped by what the context leaves
    sampling: Sampling
    stops: tuple[str, ...] = ()
    n: int = 1
    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True)
class ToolChoice:
    """What the reply may do with the declared tools: `none` (answer in text), `auto` (the model decides),
    `required` (call some tool) or `function` (call the tool `name`)."""

    mode: str = "none"
    name: str | None = None


@dataclass(frozen=True)
class ChatRequest:
    params: GenerationParams
    messages: list[dict[str, Any]] = field(default_factory=list)
    """Canonical messages (data/tool_calls.py): assistant calls with arguments as objects, linked tool answers."""
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: ToolChoice = ToolChoice()
    parallel_tool_calls: bool = True

    @property
    def uses_tools(self) -> bool:
        """Tools are declared, or the conversation holds calls or tool answers."""
        return bool(self.tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in self.messages)


@dataclass(frozen=True)
class CompletionRequest:
    params: GenerationParams
    prompt: str = ""


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """The body as a JSON object: strict UTF-8, no NaN/Infinity, bounded nesting; 4xx otherwise."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise ApiError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"the body must be sent as application/json (got {media or 'no content type'})",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        body = json.loads(text or "{}", parse_constant=_reject_constant)
    except RecursionError:
        raise bad("the body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers past Python's digit limit
        raise bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise bad("the body must be a JSON object")
    return body


# Keys a client may send, per endpoint; anything else is refused by name (OpenAI does the same).
_COMMON = {
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "stop",
    "n",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "seed",
    "user",
}
_CHAT = _COMMON | {
    "messages",
    "max_completion_tokens",
    "top_logprobs",
    "response_format",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "metadata",
    "store",
}
_COMPLETION = _COMMON | {"prompt", "echo", "best_of", "suffix"}


def _check_keys(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(str(key) for key in body if key not in allowed)
    if unknown:
        raise bad(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise bad(f"`{key}` must be a number in [{low}, {high}]", key)
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise bad(f"`{key}` must be an integer in [{low}, {high}]", key)
    return value


def _unsupported(body: dict[str, Any], key: str, allowed: Any, why: str) -> None:
    """Refuse `key` unless it is absent or holds the one value that means "off"."""
    value = body.get(key)
    if value is not None and value != allowed:
        raise bad(f"`{key}` is not supported by this server: {why}", key)


def _stops(body: dict[str, Any], limits: ServerLimits) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or len(stops) > limits.max_stops
        or not all(isinstance(s, str) and 0 < len(s) <= limits.max_stop_chars for s in stops)
    ):
        raise bad(
            f"`stop` must be a string or a list of up to {limits.max_stops} non-empty strings of at most "
            f"{limits.max_stop_chars} characters",
            "stop",
        )
    return tuple(stops)


def _params(body: dict[str, Any], limits: ServerLimits, max_tokens_keys: tuple[str, ...]) -> GenerationParams:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad("`model` must name one of the served models (GET /v1/models lists them)", "model")
    max_tokens = None
    for key in max_tokens_keys:
        value = _integer(body, key, 1, limits.max_tokens)
        max_tokens = value if value is not None else max_tokens
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise bad("`top_p` must be above 0", "top_p")
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _number(body, penalty, 0.0, -2.0, 2.0) != 0:
            raise bad(f"`{penalty}` is not supported by this server: leave it at 0", penalty)
    if body.get("logit_bias"):
        raise bad("`logit_bias` is not supported by this server", "logit_bias")
    _unsupported(body, "logprobs", False, "token log-probabilities are not returned")
    _unsupported(body, "seed", None, "sampling is batched across requests; use temperature 0 for repeatable output")
    n = _integer(body, "n", 1, limits.max_n) or 1
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad("`stream` must be true or false", "stream")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not stream:
            raise bad("`stream_options` is only allowed with `stream: true`", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise bad("`stream_options` may only hold `include_usage`", "stream_options")
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise bad("`stream_options.include_usage` must be true or false", "stream_options")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad("`user` must be a string", "user")
    return GenerationParams(
        model=model,
        max_tokens=max_tokens,
        sampling=Sampling(temperature, top_p),
        stops=_stops(body, limits),
        n=n,
        stream=stream,
        include_usage=include_usage,
    )


_ROLES = ("system", "developer", "user", "assistant", "tool")


def _content(message: dict[str, Any], where: str) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and message.get("role") == "assistant":
        return ""
    if isinstance(content, list):  # content parts: text only
        parts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"`{where}.content[{index}]`: only text parts are supported", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"`{where}` needs string content (or a list of text parts)", where)


def _calls(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls` as canonical calls (arguments decoded from their JSON string)."""
    calls = message.get("tool_calls")
    if calls is None or calls == []:
        return []
    if not isinstance(calls, list):
        raise bad(f"`{where}.tool_calls` must be a list of calls", f"{where}.tool_calls")
    for index, call in enumerate(calls):
        if isinstance(call, dict) and call.get("type", "function") != "function":
            raise bad(f"`{where}.tool_calls[{index}].type` must be `function`", f"{where}.tool_calls")
    try:
        return normalize_calls(calls, f"{where}.tool_calls", where)
    except RowError as exc:
        raise bad(str(exc), f"{where}.tool_calls") from None


def _message(message: dict[str, Any], where: str) -> dict[str, Any]:
    role = "system" if message["role"] == "developer" else message["role"]
    if message.get("function_call") is not None:
        raise bad(f"`{where}.function_call` is the deprecated form of `tool_calls`: send `tool_calls`", where)
    if message.get("tool_calls") and role != "assistant":
        raise bad(f"`{where}.tool_calls`: only assistant messages carry tool calls", where)
    out: dict[str, Any] = {"role": role, "content": _content(message, where)}
    if role == "assistant" and (calls := _calls(message, where)):
        out["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            value = message.get(key)
            if value is not None and (not isinstance(value, str) or not value):
                raise bad(f"`{where}.{key}` must be a non-empty string", f"{where}.{key}")
            if value is not None:
                out[key] = value
    return out


def _link_answers(messages: list[dict[str, Any]]) -> None:
    """Give tool answers without an id the id of the call they answer (in order) and that call's function name;
    refuse ids no call has."""
    given = {index for index, message in enumerate(messages) if "name" in message}
    link_tool_answers(messages)
    names: dict[str, str] = {}
    for index, message in enumerate(messages):
        names.update((call["id"], call["function"]["name"]) for call in message.get("tool_calls") or ())
        answered = message.get("tool_call_id")
        if message["role"] != "tool" or answered is None:
            continue
        if answered not in names:
            raise bad(
                f"`messages[{index}].tool_call_id` is `{answered}`, which no earlier assistant `tool_calls` holds; "
                "give each tool message the `id` of the call it answers",
                f"messages[{index}].tool_call_id",
            )
        if index not in given:  # the name of the call it answers by id, not of the next one in order
            message["name"] = names[answered]


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("`messages` must be a non-empty list", "messages")
    out = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad(f"`{where}` needs a role ({', '.join(_ROLES)}) and string content", where)
        out.append(_message(message, where))
    _link_answers(out)
    return out


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
_FUNCTION_KEYS = ("name", "description", "parameters", "strict")
_TOOL_SHAPE = '{"type": "function", "function": {"name": ..., "description"?: ..., "parameters"?: {...}}}'


def _function(tool: Any, where: str) -> dict[str, Any]:
    """One entry of `tools`, checked field by field; the function definition without the empty fields."""
    if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
        raise bad(f"`{where}` must be {_TOOL_SHAPE}: only function tools are supported", where)
    for key in tool:
        if key not in ("type", "function"):
            raise bad(f"`{where}.{key}` is not a field of a tool; a tool is {_TOOL_SHAPE}", f"{where}.{key}")
    function, where = tool["function"], f"{where}.function"
    for key in function:
        if key not in _FUNCTION_KEYS:
            fields = ", ".join(_FUNCTION_KEYS)
            raise bad(f"`{where}.{key}` is not a field of a function (those are {fields})", f"{where}.{key}")
    name = function.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise bad(f"`{where}.name` must be 1 to 64 letters, digits, underscores or dashes", f"{where}.name")
    description, parameters = function.get("description"), function.get("parameters")
    if description is not None and not isinstance(description, str):
        raise bad(f"`{where}.description` must be a string", f"{where}.description")
    if parameters is not None and not isinstance(parameters, dict):
        raise bad(f"`{where}.parameters` must be a JSON schema object", f"{where}.parameters")
    if function.get("strict"):
        raise bad(
            f"`{where}.strict` is not supported by this server: calls are generated, not constrained to the schema; "
            "leave it out or false",
            f"{where}.strict",
        )
    kept = {"name": name, "description": description, "parameters": parameters}
    return {key: value for key, value in kept.items() if value is not None}


def _tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise bad(f"`tools` must be a list of {_TOOL_SHAPE}", "tools")
    functions = [_function(tool, f"tools[{index}]") for index, tool in enumerate(tools)]
    try:
        return normalize_tools(functions, "tools")
    except RowError as exc:  # a name declared twice
        raise bad(str(exc), "tools") from None


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]]) -> ToolChoice:
    value = body.get("tool_choice")
    names = [tool["function"]["name"] for tool in tools]
    if value is None or (value in ("none", "auto") and not tools):  # nothing to call: plain text
        return ToolChoice("auto" if tools else "none")
    if value in ("none", "auto", "required"):
        if not tools:
            raise bad("`tool_choice` is `required`, but no `tools` are given", "tool_choice")
        return ToolChoice(value)
    function = value.get("function") if isinstance(value, dict) and value.get("type") == "function" else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise bad(
            '`tool_choice` must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if name not in names:
        declared = ", ".join(f"`{n}`" for n in names) or "none"
        raise bad(f"`tool_choice` names `{name}`, which `tools` does not declare (declared: {declared})", "tool_choice")
    return ToolChoice("function", name)


def _refuse_legacy_functions(body: dict[str, Any]) -> None:
    """`functions` / `function_call` are refused rather than mapped: their replies have another shape
    (`message.function_call`), which a client asking in that form would expect."""
    if body.get("functions"):
        raise bad(
            "`functions` is the deprecated form of `tools` and is not accepted: send "
            '`tools: [{"type": "function", "function": ...}]` instead',
            "functions",
        )
    _unsupported(body, "function_call", "none", "it is the deprecated form of `tool_choice`; send `tool_choice`")


def parse_chat(body: dict[str, Any], limits: ServerLimits) -> ChatRequest:
    _check_keys(body, _CHAT)
    params = _params(body, limits, ("max_tokens", "max_completion_tokens"))
    _unsupported(body, "top_logprobs", None, "token log-probabilities are not returned")
    _refuse_legacy_functions(body)
    tools = _tools(body)
    choice = _tool_choice(body, tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise bad("`parallel_tool_calls` must be true or false", "parallel_tool_calls")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("`response_format` is not supported by this server beyond {'type': 'text'}", "response_format")
    return ChatRequest(
        params=params,
        messages=_messages(body),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel is not False,
    )


def parse_completion(body: dict[str, Any], limits: ServerLimits) -> CompletionRequest:
    _check_keys(body, _COMPLETION)
    params = _params(body, limits, ("max_tokens",))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad("`prompt` must be a non-empty string (one prompt per request)", "prompt")
    _unsupported(body, "echo", False, "the prompt is not echoed")
    _unsupported(body, "best_of", 1, "use `n`")
    _unsupported(body, "suffix", None, "insertion is not supported")
    return CompletionRequest(params=params, prompt=prompt)


def context_error(prompt_tokens: int, max_tokens: int, context: int) -> ApiError:
    return bad(
        f"This model's maximum context length is {context} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion). "
        "Please reduce the prompt or max_tokens.",
        "messages",
        "context_length_exceeded",
    )


def model_not_found(model: str, served: list[str]) -> ApiError:
    return ApiError(
        HTTPStatus.NOT_FOUND,
        f"The model `{model}` does not exist; this server serves {', '.join(served)}",
        "model",
        "model_not_found",
    )
