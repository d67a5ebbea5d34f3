"""The OpenAI-compatible ASGI application (FastAPI): `/v1/models`, `/v1/chat/completions`, `/v1/completions`
(streamed as server-sent events too), `/health` and Prometheus `/metrics`; for an embedding or reranking model,
`/v1/embeddings` or `/v1/rerank` instead of the generation routes (serve/encoder_routes.py).

Every request is bounded before it reaches the model: body size and read time, JSON shape, parameters, the
model id and the context; the queue answers 429 when full. A client that goes away cancels its generation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_finetuning.serve.encoder_routes import (
    EMBEDDING_PATHS,
    GENERATION_PATHS,
    RERANK_PATHS,
    add_encoder_routes,
    add_refusals,
)
from llm_finetuning.serve.encoders import EncoderEngine
from llm_finetuning.serve.engine import Delta, Engine, Failed, Finished, Ticket
from llm_finetuning.serve.keys import ApiKeys
from llm_finetuning.serve.metrics import Metrics
from llm_finetuning.serve.pool import EnginePool
from llm_finetuning.serve.protocol import (
    ApiError,
    ChatRequest,
    GenerationParams,
    ServerLimits,
    bad,
    context_error,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_json,
)
from llm_finetuning.serve.reading import read_body, wait_disconnect
from llm_finetuning.serve.tools import ReplyStream, ToolPlan, check_prompt, plan_tools, reply_message

logger = logging.getLogger("llm_finetuning.serve")

_ENDPOINTS = {*GENERATION_PATHS, *EMBEDDING_PATHS, *RERANK_PATHS, "/v1/models", "/health", "/metrics"}
DEFAULT_MAX_TOKENS = 256


class AccessLog:
    """One log line and the request metrics per HTTP request (never its body or headers)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [0]

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            elapsed = time.perf_counter() - start
            path = scope.get("path", "")
            endpoint = path.rstrip("/") if path.rstrip("/") in _ENDPOINTS else "other"
            if endpoint.startswith("/v1/models"):
                endpoint = "/v1/models"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(elapsed)
            client = scope.get("client") or ("-", 0)
            note = (scope.get("state") or {}).get("note")  # what ended the request early, set by the app
            suffix = f" ({note})" if note else ""
            logger.info('%s "%s %s" %d %.3fs%s', client[0], scope.get("method"), path[:120], status[0], elapsed, suffix)


@dataclass
class _Outcome:
    texts: list[str]
    finish: list[str | None]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)


def create_app(
    engine: Engine | EncoderEngine | EnginePool,
    api_key: str | ApiKeys | None = None,
    limits: ServerLimits | None = None,
    extend: Callable[[FastAPI, Callable[[Request], str], Callable[[Request], Awaitable[dict[str, Any]]]], None]
    | None = None,
) -> FastAPI:
    """The application over `engine` (one model and its adapters, an encoder, or a pool of models loaded on
    demand); every route but /health needs `Authorization: Bearer <key>` when keys are set. `extend(app,
    owner_of, read_json)` adds more routes (the fine-tuning API) that share the app's errors, keys and limits."""
    keys = api_key if isinstance(api_key, ApiKeys) else ApiKeys.single(api_key)
    limits = limits or ServerLimits()
    metrics = Metrics(engine.pending_count, engine.active_count)
    app = FastAPI(title="llmft serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(AccessLog, metrics=metrics)
    app.state.engine, app.state.metrics, app.state.limits = engine, metrics, limits

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = (
            f"no route {request.method} {request.url.path[:120]}"
            if error.status_code in (404, 405)
            else str(error.detail)
        )
        return JSONResponse(ApiError(HTTPStatus(error.status_code), message).body(), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s", request.url.path[:120])
        failure = ApiError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(error).__name__}")
        return JSONResponse(failure.body(), status_code=500)

    def authorise(request: Request) -> str:
        """The owner of the request's API key (401 without a valid one)."""
        return keys.owner(request)

    pool = engine if isinstance(engine, EnginePool) else None

    def visible(owner: str | None) -> list[str]:
        return pool.model_ids(owner) if pool is not None else engine.model_ids()

    def engine_of(model: str, owner: str) -> Engine:
        """The engine answering `model` for `owner` (a pool loads it on first use: call off the event loop)."""
        if pool is not None:
            return pool.engine_for(model, owner)
        if model not in engine.served:
            raise model_not_found(model, engine.model_ids())
        return engine

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "models": visible(None), "queue_depth": engine.pending_count()})

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorise(request)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "llmft"}

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        owner = authorise(request)
        return JSONResponse({"object": "list", "data": [model_card(m) for m in visible(owner)]})

    @app.get("/v1/models/{name:path}")
    async def model(request: Request, name: str) -> JSONResponse:
        owner = authorise(request)
        if name not in visible(owner):
            raise model_not_found(name, visible(owner))
        return JSONResponse(model_card(name))

    async def read_json(request: Request) -> dict[str, Any]:
        authorise(request)
        raw = await read_body(request, limits)
        return parse_json(raw, request.headers.get("content-type"))

    if extend is not None:
        extend(app, authorise, read_json)
    if isinstance(engine, EncoderEngine):
        add_encoder_routes(app, engine, authorise=authorise, read_json=read_json, limits=limits, metrics=metrics)
        return app
    served = ", ".join(f"`{m}`" for m in visible(None))
    add_refusals(
        app,
        (*EMBEDDING_PATHS, *RERANK_PATHS),
        authorise,
        f"this server serves text-generation models ({served}); embeddings and reranking need a run of the "
        "embedding or reranker method",
    )

    def budget(served: Engine, prompt_tokens: int, params: GenerationParams) -> int:
        context = served.context_length
        if params.max_tokens is None:
            wanted = min(DEFAULT_MAX_TOKENS, limits.max_tokens, context - prompt_tokens)
            if wanted < 1:
                raise context_error(prompt_tokens, 1, context)
            return wanted
        if prompt_tokens + params.max_tokens > context:
            raise context_error(prompt_tokens, params.max_tokens, context)
        return params.max_tokens

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        parsed = parse_chat(await read_json(request), limits)
        served = await run_in_threadpool(engine_of, parsed.params.model, authorise(request))
        plan = plan_tools(parsed, served.tokenizer_of(parsed.params.model), parsed.params.model)
        text = await run_in_threadpool(_chat_prompt, served, parsed, plan)
        return await generate(request, served, "chat", parsed.params, text, plan)

    @app.post("/v1/completions")
    async def completion(request: Request) -> Response:
        parsed = parse_completion(await read_json(request), limits)
        served = await run_in_threadpool(engine_of, parsed.params.model, authorise(request))
        return await generate(request, served, "text", parsed.params, parsed.prompt)

    async def generate(
        request: Request, served: Engine, kind: str, params: GenerationParams, text: str, plan: ToolPlan | None = None
    ) -> Response:
        plan = plan or ToolPlan()
        started = time.monotonic()
        ids = await run_in_threadpool(served.encode, params.model, text)
        if not ids:
            raise bad("the prompt is empty once tokenized", "prompt")
        max_tokens = budget(served, len(ids), params)
        loop = asyncio.get_running_loop()
        outcome = _Outcome(texts=[""] * params.n, finish=[None] * params.n)

        def deliver_to(index: int):  # noqa: ANN202
            def deliver(event: Delta | Finished | Failed) -> None:
                try:
                    loop.call_soon_threadsafe(outcome.events.put_nowait, (index, event))
                except RuntimeError:  # the event loop has closed (server stopping): nobody is waiting
                    pass

            return deliver

        tickets = [
            Ticket(params.model, ids, max_tokens, params.sampling, deliver_to(i), params.stops, plan.drop_ids)
            for i in range(params.n)
        ]
        served.submit(tickets)
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        deadline = started + limits.request_timeout_s
        if params.stream:
            stream = _stream(kind, ident, params, plan, tickets, outcome, deadline, started, metrics, request)
            return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        watch = asyncio.create_task(wait_disconnect(request))
        work = asyncio.create_task(_collect(params.n, outcome, started, params.model, metrics))
        finished, _ = await asyncio.wait(
            {work, watch}, timeout=deadline - time.monotonic(), return_when="FIRST_COMPLETED"
        )
        if work not in finished:
            work.cancel()
            for ticket in tickets:
                ticket.cancel()
            metrics.cancelled.inc()
            if watch in finished:
                request.state.note = f"client went away: {ident} cancelled"
                return Response(status_code=499)
            watch.cancel()
            raise ApiError(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"the request took longer than this server's limit of {limits.request_timeout_s:g} s",
                code="timeout",
            )
        watch.cancel()
        work.result()
        usage = _usage(outcome)
        if kind == "chat":
            replies = [reply_message(plan, t, f) for t, f in zip(outcome.texts, outcome.finish, strict=True)]
            choices = [
                {"index": i, "message": message, "finish_reason": finish, "logprobs": None}
                for i, (message, finish) in enumerate(replies)
            ]
            obj = "chat.completion"
        else:
            choices = [
                {"index": i, "text": t, "finish_reason": f, "logprobs": None}
                for i, (t, f) in enumerate(zip(outcome.texts, outcome.finish, strict=True))
            ]
            obj = "text_completion"
        return JSONResponse(
            {
                "id": ident,
                "object": obj,
                "created": int(time.time()),
                "model": params.model,
                "choices": choices,
                "usage": usage,
            }
        )

    return app


def _chat_prompt(served: Engine, parsed: ChatRequest, plan: ToolPlan) -> str:
    """The prompt of a chat request (its tools included), checked to hold them, then the plan's prefill."""
    model = parsed.params.model
    try:
        text = served.render(model, parsed.messages, parsed.tools)
    except Exception as exc:  # the run's chat template refusing a conversation (roles, order) is a 400
        raise bad(f"the chat template of `{model}` refused these messages: {exc}", "messages") from None
    check_prompt(text, parsed, served.tokenizer_of(model), model)
    return text + plan.prefill


async def _collect(n: int, outcome: _Outcome, started: float, model: str, metrics: Metrics) -> None:
    left = n
    while left:
        index, event = await outcome.events.get()
        left -= _apply(index, event, outcome, started, model, metrics)


def _apply(index: int, event: Any, outcome: _Outcome, started: float, model: str, metrics: Metrics) -> int:
    """Fold one engine event into the outcome; 1 when it ends its choice. A failure raises its error."""
    if isinstance(event, Delta):
        if outcome.first_token is None:
            outcome.first_token = time.monotonic()
            metrics.ttft.labels(model).observe(outcome.first_token - started)
        outcome.texts[index] += event.text
        return 0
    if isinstance(event, Failed):
        raise event.error
    outcome.finish[index] = event.reason
    outcome.prompt_tokens = event.prompt_tokens
    outcome.completion_tokens += event.completion_tokens
    metrics.completion_tokens.labels(model).inc(event.completion_tokens)
    if index == 0:
        metrics.prompt_tokens.labels(model).inc(event.prompt_tokens)
    return 1


def _usage(outcome: _Outcome) -> dict[str, int]:
    return {
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
    }


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream(
    kind: str,
    ident: str,
    params: GenerationParams,
    plan: ToolPlan,
    tickets: list[Ticket],
    outcome: _Outcome,
    deadline: float,
    started: float,
    metrics: Metrics,
    request: Request,
) -> AsyncIterator[str]:
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    replies = [ReplyStream(plan) for _ in range(params.n)]  # chat only: what may be a tool call is held back

    def chunk(
        index: int, delta: dict[str, Any] | None, finish: str | None = None, role: bool = False
    ) -> dict[str, Any]:
        if kind == "chat":
            body: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            body.update(delta or {})
            choice: dict[str, Any] = {"index": index, "delta": body, "finish_reason": finish, "logprobs": None}
        else:
            text = (delta or {}).get("content") or ""
            choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
        return {"id": ident, "object": obj, "created": created, "model": params.model, "choices": [choice]}

    finished = False
    try:
        if kind == "chat":
            for index in range(params.n):
                yield _sse(chunk(index, None, role=True))
        left = params.n
        while left:
            try:
                index, event = await asyncio.wait_for(outcome.events.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                yield _sse(ApiError(HTTPStatus.GATEWAY_TIMEOUT, "the request ran past the time limit").body())
                return
            try:
                ended = _apply(index, event, outcome, started, params.model, metrics)
            except ApiError as error:
                yield _sse(error.body())
                return
            if isinstance(event, Delta):
                deltas = replies[index].feed(event.text) if kind == "chat" else [{"content": event.text}]
                for delta in deltas:
                    yield _sse(chunk(index, delta))
            elif ended:
                left -= 1
                finish = outcome.finish[index]
                deltas, finish = replies[index].end(finish) if kind == "chat" else ([], finish)
                for delta in deltas:
                    yield _sse(chunk(index, delta))
                yield _sse(chunk(index, None, finish))
        if params.include_usage:
            yield _sse(
                {
                    "id": ident,
                    "object": obj,
                    "created": created,
                    "model": params.model,
                    "choices": [],
                    "usage": _usage(outcome),
                }
            )
        yield _sse("[DONE]")
        finished = True
    finally:
        if not finished:
            for ticket in tickets:
                ticket.cancel()
            metrics.cancelled.inc()
            if not all(t.done for t in tickets):  # the access line says so: one line per request
                request.state.note = f"stream {ident} ended early (client gone or time limit): generation cancelled"
