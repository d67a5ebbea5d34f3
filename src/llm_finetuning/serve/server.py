"""`llmft serve`: an OpenAI-compatible HTTP server (`/v1/models`, `/v1/chat/completions`, `/v1/completions`).

Standard library only (`http.server`), one model per process. Requests are validated before they reach the
model and answered with OpenAI-style 4xx errors; generation is serialised by a lock, so concurrent requests are
safe (they queue). Binding anything but loopback requires an API key.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextIteratorStreamer

from llm_finetuning.errors import UserError
from llm_finetuning.serve.generation import generation_settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerLimits:
    max_tokens: int = 1024
    """Largest `max_tokens` a request may ask for."""
    max_body_bytes: int = 1 << 20
    """Largest request body accepted."""


class RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"`{key}` must be a number in [{low}, {high}]", key)
    return float(value)


def _stops(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise RequestError(HTTPStatus.BAD_REQUEST, "`stop` must be a string or a list of up to 4 strings", "stop")
    return stops


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(HTTPStatus.BAD_REQUEST, "`messages` must be a non-empty list", "messages")
    out = []
    for index, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant", "tool")
            or not isinstance(message.get("content"), str)
        ):
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"`messages[{index}]` needs a role and string content", f"messages[{index}]"
            )
        out.append({"role": message["role"], "content": message["content"]})
    return out


class Engine:
    """The model, its tokenizer and a lock: one generation at a time."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, model_id: str) -> None:
        self.model, self.tokenizer, self.model_id = model.eval(), tokenizer, model_id
        self.lock = threading.Lock()

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _settings(self, max_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        return generation_settings(self.tokenizer, max_tokens, temperature, top_p)

    @torch.no_grad()
    def complete(self, text: str, max_tokens: int, temperature: float, top_p: float, stops: list[str]) -> dict:
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with self.lock:
            tokens = self.model.generate(**inputs, **self._settings(max_tokens, temperature, top_p))
        new = tokens[0, inputs["input_ids"].shape[1] :].tolist()
        ended = self.tokenizer.eos_token_id in new
        completion = self.tokenizer.decode(new, skip_special_tokens=True)
        finish = "stop" if ended else "length"
        for stop in stops:
            if stop in completion:
                completion, finish = completion.split(stop, 1)[0], "stop"
        return {
            "text": completion,
            "finish_reason": finish,
            "prompt_tokens": inputs["input_ids"].shape[1],
            "completion_tokens": len(new),
        }

    def stream(self, text: str, max_tokens: int, temperature: float, top_p: float):  # noqa: ANN201
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        settings = {**inputs, **self._settings(max_tokens, temperature, top_p), "streamer": streamer}

        def run() -> None:
            with self.lock, torch.no_grad():
                self.model.generate(**settings)

        Thread(target=run, daemon=True).start()
        return streamer


def make_handler(engine: Engine, api_key: str | None, limits: ServerLimits) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            logger.info("%s %s", self.address_string(), format % args)  # never the body or the key

        def _send(self, status: HTTPStatus, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, error: RequestError) -> None:
            kind = "authentication_error" if error.status == HTTPStatus.UNAUTHORIZED else "invalid_request_error"
            self._send(error.status, {"error": {"message": error.message, "type": kind, "param": error.param}})

        def _authorise(self) -> None:
            if api_key is not None and self.headers.get("Authorization", "") != f"Bearer {api_key}":
                raise RequestError(HTTPStatus.UNAUTHORIZED, "missing or wrong API key")

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            try:
                self._authorise()
                if self.path.rstrip("/") != "/v1/models":
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}")
                model = {"id": engine.model_id, "object": "model", "created": 0, "owned_by": "llmft"}
                self._send(HTTPStatus.OK, {"object": "list", "data": [model]})
            except RequestError as error:
                self._error(error)

        def do_POST(self) -> None:  # noqa: N802
            try:
                self._authorise()
                body = self._body()
                if self.path.rstrip("/") == "/v1/chat/completions":
                    self._chat(body)
                elif self.path.rstrip("/") == "/v1/completions":
                    self._completion(body)
                else:
                    raise RequestError(HTTPStatus.NOT_FOUND, f"no route {self.path}")
            except RequestError as error:
                self._error(error)

        def _body(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > limits.max_body_bytes:
                # Read (and drop) what the client is sending, up to a bound, so it receives the 413 instead of a
                # broken pipe; past the bound the connection is closed.
                remaining = min(length, 16 * limits.max_body_bytes)
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    remaining = remaining - len(chunk) if chunk else 0
                self.close_connection = length > 16 * limits.max_body_bytes
                raise RequestError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {limits.max_body_bytes} bytes"
                )
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise RequestError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
            return body

        def _options(self, body: dict[str, Any]) -> tuple[int, float, float, list[str]]:
            default = min(256, limits.max_tokens)
            max_tokens = body.get("max_tokens", body.get("max_completion_tokens", default))
            if (
                not isinstance(max_tokens, int)
                or isinstance(max_tokens, bool)
                or not 1 <= max_tokens <= limits.max_tokens
            ):
                raise RequestError(HTTPStatus.BAD_REQUEST, f"`max_tokens` must be 1..{limits.max_tokens}", "max_tokens")
            temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
            top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
            if top_p == 0:
                raise RequestError(HTTPStatus.BAD_REQUEST, "`top_p` must be above 0", "top_p")
            return max_tokens, temperature, top_p, _stops(body)

        def _chat(self, body: dict[str, Any]) -> None:
            messages = _messages(body)
            max_tokens, temperature, top_p, stops = self._options(body)
            text = engine.prompt_text(messages)
            ident, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            if body.get("stream"):
                self._stream_chat(ident, created, text, max_tokens, temperature, top_p, stops)
                return
            result = engine.complete(text, max_tokens, temperature, top_p, stops)
            self._send(
                HTTPStatus.OK,
                {
                    "id": ident,
                    "object": "chat.completion",
                    "created": created,
                    "model": engine.model_id,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": result["text"]},
                            "finish_reason": result["finish_reason"],
                        }
                    ],
                    "usage": _usage(result),
                },
            )

        def _completion(self, body: dict[str, Any]) -> None:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise RequestError(HTTPStatus.BAD_REQUEST, "`prompt` must be a non-empty string", "prompt")
            max_tokens, temperature, top_p, stops = self._options(body)
            result = engine.complete(prompt, max_tokens, temperature, top_p, stops)
            self._send(
                HTTPStatus.OK,
                {
                    "id": f"cmpl-{uuid.uuid4().hex[:24]}",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": engine.model_id,
                    "choices": [
                        {"index": 0, "text": result["text"], "finish_reason": result["finish_reason"], "logprobs": None}
                    ],
                    "usage": _usage(result),
                },
            )

        def _stream_chat(self, ident, created, text, max_tokens, temperature, top_p, stops) -> None:  # noqa: ANN001
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def event(delta: dict[str, Any], finish: str | None = None) -> None:
                chunk = {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": engine.model_id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                }
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            event({"role": "assistant", "content": ""})
            produced, finish = "", "length"
            for piece in engine.stream(text, max_tokens, temperature, top_p):
                combined = produced + piece
                cuts = [combined.find(stop) for stop in stops if stop in combined]
                if cuts:  # a stop string may straddle two pieces: cut in the combined text
                    piece, finish = combined[: min(cuts)][len(produced) :], "stop"
                produced += piece
                if piece:
                    event({"content": piece})
                if finish == "stop":
                    break
            else:
                ids = engine.tokenizer(produced, add_special_tokens=False)["input_ids"]
                finish = "length" if len(ids) >= max_tokens else "stop"
            event({}, finish)
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

    return Handler


def _usage(result: dict[str, Any]) -> dict[str, int]:
    return {
        "prompt_tokens": result["prompt_tokens"],
        "completion_tokens": result["completion_tokens"],
        "total_tokens": result["prompt_tokens"] + result["completion_tokens"],
    }


def create_server(
    engine: Engine,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: ServerLimits | None = None,
) -> ThreadingHTTPServer:
    """The server, bound but not yet serving (call `serve_forever`). Non-loopback hosts need an API key."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not api_key:
        raise UserError(f"serving on {host} (beyond this machine) needs an API key: pass --api-key or LLMFT_API_KEY")
    server = ThreadingHTTPServer((host, port), make_handler(engine, api_key, limits or ServerLimits()))
    server.daemon_threads = True
    return server
