"""The encoder endpoints of the application: `POST /v1/embeddings` (OpenAI's shape) for a bi-encoder and
`POST /v1/rerank` (Cohere's, Jina's and vLLM's shape; also `/rerank` and `/v2/rerank`) for a cross-encoder.

They sit behind the same key, body limits, error bodies and access log as the generation routes (serve/app.py);
the model runs on the engine's worker thread, never on the event loop. A server answers only the endpoints of the
model it serves: any other one gets an OpenAI-style 404 saying which endpoints it does answer.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from http import HTTPStatus
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from llm_finetuning.serve.encoder_protocol import parse_embeddings, parse_rerank
from llm_finetuning.serve.encoders import EMBEDDING, Encoded, EncoderEngine
from llm_finetuning.serve.metrics import Metrics
from llm_finetuning.serve.protocol import ApiError, ServerLimits, bad, model_not_found
from llm_finetuning.serve.reading import wait_disconnect

EMBEDDING_PATHS = ("/v1/embeddings",)
RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")

Authorise = Callable[[Request], None]
ReadJson = Callable[[Request], Awaitable[dict[str, Any]]]


def add_encoder_routes(
    app: FastAPI,
    engine: EncoderEngine,
    *,
    authorise: Authorise,
    read_json: ReadJson,
    limits: ServerLimits,
    metrics: Metrics,
) -> None:
    """The routes of a server whose engine is an `EncoderEngine`."""
    answers = EMBEDDING_PATHS if engine.kind == EMBEDDING else RERANK_PATHS
    others = [p for p in (*EMBEDDING_PATHS, *RERANK_PATHS, *GENERATION_PATHS) if p not in answers]
    what = "an embedding" if engine.kind == EMBEDDING else "a reranking"
    add_refusals(app, others, authorise, f"`{engine.model_id}` is {what} model; this server answers POST {answers[0]}")

    def check_model(model: str) -> None:
        if model not in engine.served:
            raise model_not_found(model, engine.model_ids())

    async def embeddings(request: Request) -> Response:
        parsed = parse_embeddings(await read_json(request), limits)
        check_model(parsed.model)
        if parsed.dimensions is not None and parsed.dimensions > engine.dimension:
            raise bad(
                f"`dimensions` is {parsed.dimensions}, but this model's embeddings have {engine.dimension}",
                "dimensions",
            )
        encoded = await _outcome(request, engine.submit(parsed.inputs), limits, metrics)
        if encoded is None:
            return Response(status_code=499)
        vectors = encoded.values
        if parsed.dimensions is not None:  # matryoshka: the leading values, back on the unit sphere
            vectors = vectors[:, : parsed.dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        vectors = vectors.astype("<f4")
        data = [
            {"object": "embedding", "index": i, "embedding": _b64(v) if parsed.base64 else v.tolist()}
            for i, v in enumerate(vectors)
        ]
        tokens = sum(encoded.tokens)
        metrics.prompt_tokens.labels(parsed.model).inc(tokens)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse({"object": "list", "data": data, "model": parsed.model, "usage": usage})

    async def rerank(request: Request) -> Response:
        parsed = parse_rerank(await read_json(request), limits)
        check_model(parsed.model)
        pairs = [(parsed.query, document) for document in parsed.documents]
        encoded = await _outcome(request, engine.submit(pairs), limits, metrics)
        if encoded is None:
            return Response(status_code=499)
        scores = encoded.values.reshape(-1)
        order = np.argsort(-scores, kind="stable")[: parsed.top_n or len(scores)]  # ties keep the given order
        results = []
        for index in order.tolist():
            result: dict[str, Any] = {"index": index, "relevance_score": float(scores[index])}
            if parsed.return_documents:
                result["document"] = {"text": parsed.documents[index]}
            results.append(result)
        tokens = sum(encoded.tokens)
        metrics.prompt_tokens.labels(parsed.model).inc(tokens)
        ident = f"rerank-{uuid.uuid4().hex[:24]}"
        return JSONResponse({"id": ident, "model": parsed.model, "results": results, "usage": {"total_tokens": tokens}})

    endpoint = embeddings if engine.kind == EMBEDDING else rerank
    for path in answers:
        app.add_api_route(path, endpoint, methods=["POST"])


def add_refusals(app: FastAPI, paths: list[str] | tuple[str, ...], authorise: Authorise, message: str) -> None:
    """Routes that answer 404 with `message`, the way OpenAI answers a model asked at the wrong endpoint (a
    missing route would say nothing about the model)."""

    async def refuse(request: Request) -> Response:
        authorise(request)
        raise ApiError(
            HTTPStatus.NOT_FOUND, f"{message}, not POST {request.url.path[:120]}", "model", "unsupported_endpoint"
        )

    for path in paths:
        app.add_api_route(path, refuse, methods=["POST"])


async def _outcome(request: Request, future: Future, limits: ServerLimits, metrics: Metrics) -> Encoded | None:
    """The engine's answer; None when the client went away first (its request is dropped if not yet started)."""
    work = asyncio.wrap_future(future)
    watch = asyncio.create_task(wait_disconnect(request))
    finished, _ = await asyncio.wait({work, watch}, timeout=limits.request_timeout_s, return_when="FIRST_COMPLETED")
    watch.cancel()
    if work in finished:
        if work.cancelled():  # the engine closed before it got to this request
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the server is shutting down")
        return work.result()
    work.cancel()  # also cancels the engine's future: a request not yet started is never encoded
    metrics.cancelled.inc()
    if watch in finished:
        request.state.note = "client went away: encoding cancelled"
        return None
    raise ApiError(
        HTTPStatus.GATEWAY_TIMEOUT,
        f"the request took longer than this server's limit of {limits.request_timeout_s:g} s",
        code="timeout",
    )


def _b64(vector: np.ndarray) -> str:
    return base64.b64encode(vector.tobytes()).decode("ascii")
