"""Reading a request, shared by every route: its body within the server's limits, and noticing a client that
went away while its answer was being computed."""

from __future__ import annotations

import asyncio
from http import HTTPStatus

from fastapi import Request

from llm_finetuning.serve.protocol import ApiError, ServerLimits, bad


async def read_body(request: Request, limits: ServerLimits) -> bytes:
    """The body, at most `max_body_bytes` (413; what is sent past it is read and dropped up to a bound, so the
    client gets the answer instead of a reset) within `body_timeout_s` (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or len(declared) > 18):
        raise bad("the Content-Length header is not a number")
    too_large = ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request body is over {limits.max_body_bytes} bytes")
    chunks: list[bytes] = []

    async def collect() -> None:
        size, bound = 0, 64 * limits.max_body_bytes
        async for chunk in request.stream():
            size += len(chunk)
            if size > bound:
                break
            if size <= limits.max_body_bytes:
                chunks.append(chunk)
        if size > limits.max_body_bytes:
            raise too_large

    if declared is not None and int(declared) > 64 * limits.max_body_bytes:
        raise too_large
    try:
        await asyncio.wait_for(collect(), limits.body_timeout_s)
    except TimeoutError:
        raise ApiError(
            HTTPStatus.REQUEST_TIMEOUT, f"the body was not received within {limits.body_timeout_s:g} s"
        ) from None
    return b"".join(chunks)


async def wait_disconnect(request: Request) -> None:
    """Return once the client has gone away (call it only after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
