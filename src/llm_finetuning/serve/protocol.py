"""The OpenAI request shapes the server accepts: parsing and validation, before anything reaches the model.

Everything here is plain Python (no torch, no web framework), so each rule is unit-tested on its own. A parameter
is either honoured or refused with a 400 that names it: nothing is silently ignored.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any


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
class ChatRequest:
    params: GenerationParams
    messages: list[dict[str, str]] = field(default_factory=list)


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


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("`messages` must be a non-empty list", "messages")
    out = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            raise bad(f"`{where}` needs a role ({', '.join(_ROLES)}) and string content", where)
        if message.get("tool_calls"):
            raise bad(f"`{where}.tool_calls`: tool calls are not supported by this server", where)
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": _content(message, where)})
    return out


def parse_chat(body: dict[str, Any], limits: ServerLimits) -> ChatRequest:
    _check_keys(body, _CHAT)
    params = _params(body, limits, ("max_tokens", "max_completion_tokens"))
    _unsupported(body, "top_logprobs", None, "token log-probabilities are not returned")
    for key in ("tools", "functions"):
        if body.get(key):
            raise bad(f"`{key}` is not supported by this server: it serves plain chat", key)
    for key in ("tool_choice", "function_call"):
        _unsupported(body, key, "none", "no tools are served")
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise bad("`response_format` is not supported by this server beyond {'type': 'text'}", "response_format")
    return ChatRequest(params=params, messages=_messages(body))


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
