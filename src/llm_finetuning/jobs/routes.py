"""HTTP routes of the fine-tuning API (`/v1/files`, `/v1/fine_tuning/jobs/...`), added to the serving app.

Every route names the caller's owner (from its API key) and passes it down: the service only ever reads that
owner's rows. An upload is streamed to a staging file under the data folder and cut off at the size limit
(413) before it is parsed, so a large body never sits in memory.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request as StarletteRequest

from llm_finetuning.jobs.service import Service
from llm_finetuning.serve.protocol import ApiError, bad

CHUNK = 1 << 20


class _TooLarge(Exception):
    pass


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise bad(f"`{name}` must be a whole number", name)
    return int(value)


def add_job_routes(
    app: FastAPI,
    service: Service,
    owner_of: Callable[[Request], str],
    read_json: Callable[[Request], Awaitable[dict[str, Any]]],
) -> None:
    limit_bytes = service.max_upload_bytes

    @app.post("/v1/files")
    async def upload(request: Request) -> JSONResponse:
        owner = owner_of(request)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit_bytes + CHUNK:
            raise _too_large(limit_bytes)
        seen = [0]

        async def counted() -> dict[str, Any]:
            message = await request.receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit_bytes + CHUNK:  # the multipart framing adds a little to the file itself
                    raise _TooLarge
            return message

        limited = StarletteRequest(request.scope, counted)
        try:
            form = await limited.form(max_files=1, max_fields=8)
        except _TooLarge:
            raise _too_large(limit_bytes) from None
        except Exception as exc:  # a body that is not multipart/form-data, or a malformed one
            raise bad(f"the upload must be multipart/form-data with `file` and `purpose`: {exc}", "file") from None
        try:
            upload = form.get("file")
            purpose = form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise bad("`file` is required: the JSONL file to upload", "file")
            if not isinstance(purpose, str) or not purpose:
                raise bad("`purpose` is required (fine-tune)", "purpose")
            staging = service.data_dir / "staging"
            staging.mkdir(parents=True, exist_ok=True)
            staged = staging / secrets.token_hex(16)
            size = 0
            with staged.open("wb") as out:
                while chunk := await upload.read(CHUNK):
                    size += len(chunk)
                    if size > limit_bytes:
                        out.close()
                        staged.unlink(missing_ok=True)
                        raise _too_large(limit_bytes)
                    out.write(chunk)
            filename = upload.filename or "upload.jsonl"
        finally:
            await form.close()
        return JSONResponse(await run_in_threadpool(service.add_file, owner, filename, purpose, staged))

    @app.get("/v1/files")
    async def list_files(request: Request) -> JSONResponse:
        owner = owner_of(request)
        q = request.query_params
        page = await run_in_threadpool(
            service.list_files, owner, q.get("purpose"), _int(request, "limit", 10_000), q.get("after"),
            q.get("order", "desc"),
        )  # fmt: skip
        return JSONResponse(page)

    @app.get("/v1/files/{file_id}")
    async def get_file(request: Request, file_id: str) -> JSONResponse:
        from llm_finetuning.jobs.service import file_object

        row = await run_in_threadpool(service.get_file, owner_of(request), file_id)
        return JSONResponse(file_object(row))

    @app.delete("/v1/files/{file_id}")
    async def delete_file(request: Request, file_id: str) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.delete_file, owner_of(request), file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(request: Request, file_id: str) -> FileResponse:
        row = await run_in_threadpool(service.get_file, owner_of(request), file_id)
        media = "text/csv" if row.filename.endswith(".csv") else "application/octet-stream"
        return FileResponse(service.file_path(row.id), media_type=media)

    @app.post("/v1/fine_tuning/jobs")
    async def create_job(request: Request) -> JSONResponse:
        owner = owner_of(request)
        body = await read_json(request)
        return JSONResponse(await run_in_threadpool(service.create_job, owner, body))

    @app.get("/v1/fine_tuning/jobs")
    async def list_jobs(request: Request) -> JSONResponse:
        owner = owner_of(request)
        meta = {
            key[len("metadata[") : -1]: value
            for key, value in request.query_params.items()
            if key.startswith("metadata[") and key.endswith("]")
        }
        page = await run_in_threadpool(
            service.list_jobs, owner, _int(request, "limit", 20), request.query_params.get("after"), meta
        )
        return JSONResponse(page)

    @app.get("/v1/fine_tuning/jobs/{job_id}")
    async def get_job(request: Request, job_id: str) -> JSONResponse:
        owner = owner_of(request)
        job = await run_in_threadpool(service.get_job, owner, job_id)
        return JSONResponse(service.job_object(job))

    for action in ("cancel", "pause", "resume"):

        def control(name: str = action) -> Callable[..., Awaitable[JSONResponse]]:
            async def handler(request: Request, job_id: str) -> JSONResponse:
                owner = owner_of(request)
                return JSONResponse(await run_in_threadpool(getattr(service, name), owner, job_id))

            return handler

        app.post(f"/v1/fine_tuning/jobs/{{job_id}}/{action}")(control())

    @app.get("/v1/fine_tuning/jobs/{job_id}/events")
    async def events(request: Request, job_id: str) -> JSONResponse:
        owner = owner_of(request)
        page = await run_in_threadpool(
            service.events, owner, job_id, _int(request, "limit", 20), request.query_params.get("after")
        )
        return JSONResponse(page)

    @app.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
    async def checkpoints(request: Request, job_id: str) -> JSONResponse:
        owner = owner_of(request)
        page = await run_in_threadpool(
            service.checkpoints, owner, job_id, _int(request, "limit", 10), request.query_params.get("after")
        )
        return JSONResponse(page)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the file is over this server's upload limit of {limit} bytes", "file"
    )
