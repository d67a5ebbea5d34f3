"""The fine-tuning API's logic, free of HTTP: files, jobs, events, checkpoints and their OpenAI shapes.

Uploaded files live under `<data>/files/<file id>` (the name a client gave is kept in the database only, so no
part of a request reaches the filesystem). A job is validated when it is created (its files against OpenAI's
data rules for its method, token counts against the model's context), converted to llmft rows under
`<data>/jobs/<job id>/`, and queued; the executor runs it.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

import yaml

from llm_finetuning.data.openai_rules import OpenAIReport, detect_method, to_llmft_rows, validate_openai_file
from llm_finetuning.errors import UserError
from llm_finetuning.jobs import hyperparameters
from llm_finetuning.jobs.store import TERMINAL, Row, Store, new_id
from llm_finetuning.serve.protocol import ApiError, bad

logger = logging.getLogger(__name__)

PURPOSES = ("fine-tune", "fine-tune-results", "batch", "assistants", "vision", "user_data", "evals")
_SUFFIX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_LIST = 100


class Executor(Protocol):
    name: str

    def start(self) -> None: ...
    def close(self) -> None: ...
    def notify(self) -> None: ...
    def stop(self, job_id: str) -> None: ...


@dataclass(frozen=True)
class BaseModel:
    """A model jobs may start from: the id clients name and where the server loads it from."""

    id: str
    path: str


@dataclass
class Service:
    store: Store
    data_dir: Path
    models: dict[str, BaseModel]
    template: dict[str, Any] = field(default_factory=dict)
    executor: Executor | None = None
    max_upload_bytes: int = 512 << 20
    _tokenizers: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def file_path(self, file_id: str) -> Path:
        if not re.fullmatch(r"file-[0-9a-f]{24}", file_id):  # ids are ours; anything else never reaches a path
            raise ApiError(HTTPStatus.NOT_FOUND, f"No such File object: {file_id}", "id", "file_not_found")
        return self.files_dir / file_id

    # -------------------------------------------------------------------------------------------- files
    def add_file(self, owner: str, filename: str, purpose: str, staged: Path) -> dict[str, Any]:
        """Take the upload at `staged` (already within the size limit) as a file of `owner`."""
        if purpose not in PURPOSES:
            staged.unlink(missing_ok=True)
            raise bad(f"`purpose` must be one of {', '.join(PURPOSES)}, got {purpose!r}", "purpose")
        file_id = new_id("file")
        examples = method = None
        if purpose == "fine-tune":
            report = validate_openai_file(staged, detect_method(staged), min_examples=1)
            if not report.ok:
                staged.unlink(missing_ok=True)
                raise ApiError(HTTPStatus.BAD_REQUEST, _problems(filename, report), "file", "invalid_file_format")
            examples, method = report.examples, report.method
        self.files_dir.mkdir(parents=True, exist_ok=True)
        size = staged.stat().st_size
        staged.replace(self.file_path(file_id))
        row = self.store.add_file(
            id=file_id,
            owner=owner,
            filename=Path(filename).name[:255] or "upload.jsonl",
            purpose=purpose,
            bytes=size,
            status="processed",
            examples=examples,
            method=method,
        )
        return file_object(row)

    def get_file(self, owner: str, file_id: str) -> Row:
        row = self.store.file(file_id, owner)
        if row is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"No such File object: {file_id}", "id", "file_not_found")
        return row

    def delete_file(self, owner: str, file_id: str) -> dict[str, Any]:
        self.get_file(owner, file_id)
        self.store.delete_file(file_id, owner)
        self.file_path(file_id).unlink(missing_ok=True)
        return {"id": file_id, "object": "file", "deleted": True}

    def list_files(self, owner: str, purpose: str | None, limit: int, after: str | None, order: str) -> dict:
        if order not in ("asc", "desc"):
            raise bad("`order` must be asc or desc", "order")
        rows = self.store.list_files(owner, purpose, _limit(limit, 10_000) + 1, after, order)
        return _page([file_object(r) for r in rows], limit)

    # --------------------------------------------------------------------------------------------- jobs
    def create_job(self, owner: str, body: dict[str, Any]) -> dict[str, Any]:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad("`model` is required: one of the models this server fine-tunes", "model")
        if model not in self.models:
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                f"model `{model}` is not available for fine-tuning here; available: {', '.join(self.models)}",
                "model",
                "model_not_available",
            )
        kind, params, where = hyperparameters.request_method(body)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not _SUFFIX.match(suffix)):
            raise bad("`suffix` must be 1-64 letters, digits, '-' or '_'", "suffix")
        seed = body.get("seed")
        if seed is None:
            seed = secrets.randbelow(2**31)
        elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise bad("`seed` must be a whole number from 0 to 2147483647", "seed")
        meta = body.get("metadata")
        if meta is not None and (
            not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
        ):
            raise bad("`metadata` must map strings to strings", "metadata")
        if body.get("integrations"):
            raise bad(
                "`integrations` are not supported by this server (its runs log to their own folder)", "integrations"
            )
        base = self.models[model]
        train = self._checked_file(owner, body.get("training_file"), "training_file", kind, base)
        valid = None
        if body.get("validation_file") is not None:
            valid = self._checked_file(owner, body["validation_file"], "validation_file", kind, base)
        resolved = hyperparameters.resolve(kind, params, where, train.examples)
        job_id = new_id("ftjob")
        folder = self.jobs_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        train_path = _write_rows(folder / "train.jsonl", self.file_path(train.id), kind)
        valid_path = _write_rows(folder / "validation.jsonl", self.file_path(valid.id), kind) if valid else None
        config = hyperparameters.build_config(
            self.template, base.path, resolved, seed, str(train_path), str(valid_path) if valid_path else None,
            str(folder / "run"),
        )  # fmt: skip
        self._validate_config(config, folder)
        row = self.store.add_job(
            id=job_id,
            owner=owner,
            model=model,
            training_file=train.id,
            validation_file=valid.id if valid else None,
            method={"type": kind},
            hyperparameters=resolved.as_openai(),
            suffix=suffix,
            seed=seed,
            metadata=meta,
            status="queued",
            resume=False,
            config=config,
            run_dir=str(folder / "run"),
            executor=self.executor.name if self.executor else "local",
        )
        self.store.add_event(job_id, f"Validated {train.examples} training examples; created fine-tuning job {job_id}")
        self.store.add_event(job_id, "Job queued")
        if self.executor:
            self.executor.notify()
        return self.job_object(row)

    def _checked_file(self, owner: str, file_id: Any, param: str, kind: str, base: BaseModel) -> Row:
        if not isinstance(file_id, str):
            raise bad(f"`{param}` is required: the id of an uploaded file", param)
        row = self.store.file(file_id, owner)
        if row is None:
            raise ApiError(HTTPStatus.BAD_REQUEST, f"invalid {param}: no file {file_id}", param, "invalid_file")
        if row.purpose != "fine-tune":
            raise bad(f"file {file_id} was uploaded with purpose {row.purpose}; upload it with fine-tune", param)
        minimum = 10 if param == "training_file" else 1
        max_length = int((self.template.get("data") or {}).get("max_length", 1024))
        report = validate_openai_file(
            self.file_path(file_id), kind, tokenizer=self._tokenizer(base), max_length=max_length, min_examples=minimum
        )
        if not report.ok:
            raise ApiError(HTTPStatus.BAD_REQUEST, _problems(file_id, report), param, "invalid_file_format")
        if report.has_tools:
            self._check_tool_support(file_id, param, kind, base)
        row.values["examples"] = report.examples
        return row

    def _check_tool_support(self, file_id: str, param: str, kind: str, base: BaseModel) -> None:
        """Tool calls train with supervised jobs on a chat template that writes them."""
        from llm_finetuning.data.templates import BUILTIN_TEMPLATES, TOOL_TEMPLATES
        from llm_finetuning.data.tool_parsers import format_for_template

        why = None
        if kind != "supervised":
            why = "preference pairs carry no tools; only supervised jobs train on tool calls"
        else:
            chosen = (self.template.get("data") or {}).get("chat_template")
            builtin = BUILTIN_TEMPLATES.get(chosen) if isinstance(chosen, str) else None
            if builtin is not None:
                writes_calls = builtin.tool_format is not None
            else:
                writes_calls = format_for_template(chosen or self._tokenizer(base).chat_template) is not None
            if not writes_calls:
                why = (
                    f"the chat template of base model {base.id} does not write tool calls; the server's job "
                    f"template needs `data.chat_template` set to one of {', '.join(TOOL_TEMPLATES)}"
                )
        if why:
            raise ApiError(
                HTTPStatus.BAD_REQUEST, f"file {file_id} has tools or tool calls: {why}", param, "unsupported_file"
            )

    def _tokenizer(self, base: BaseModel) -> Any:
        with self._lock:
            if base.id not in self._tokenizers:
                from transformers import AutoTokenizer

                try:
                    self._tokenizers[base.id] = AutoTokenizer.from_pretrained(base.path)
                except OSError as exc:
                    raise ApiError(
                        HTTPStatus.INTERNAL_SERVER_ERROR, f"cannot load the tokenizer of `{base.id}`: {exc}"
                    ) from None
            return self._tokenizers[base.id]

    def _validate_config(self, config: dict[str, Any], folder: Path) -> None:
        from pydantic import ValidationError

        from llm_finetuning.config.schema import Config

        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        try:
            Config.model_validate(config)
        except ValidationError as exc:  # the server's template is at fault, not the request
            raise ApiError(
                HTTPStatus.INTERNAL_SERVER_ERROR, f"the server's job template gives an invalid config: {exc}"
            ) from None

    def get_job(self, owner: str, job_id: str) -> Row:
        row = self.store.job(job_id, owner)
        if row is None:
            raise ApiError(
                HTTPStatus.NOT_FOUND, f"No such fine-tuning job: {job_id}", "fine_tuning_job_id", "not_found"
            )
        return row

    def list_jobs(self, owner: str, limit: int, after: str | None, metadata_filter: dict[str, str]) -> dict:
        rows = self.store.list_jobs(owner, _limit(limit) + 1, after, metadata_filter)
        return _page([self.job_object(r) for r in rows], limit)

    def cancel(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.get_job(owner, job_id)
        if job.status in TERMINAL:
            raise bad(f"job {job_id} is already {job.status}", "fine_tuning_job_id", "job_not_cancellable")
        if self.store.update_job(
            job_id, only_if=(job.status,), status="cancelled", control="cancel", finished_at=int(time.time())
        ):
            self.store.add_event(job_id, "Job cancelled")
            if self.executor:  # a queued job may already be submitted (Ray): stopping is a no-op otherwise
                self.executor.stop(job_id)
        return self.job_object(self.store.job(job_id))

    def pause(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.get_job(owner, job_id)
        if job.status == "queued":
            self.store.update_job(job_id, only_if=("queued",), status="paused")
            self.store.add_event(job_id, "Job paused before it started")
        elif job.status == "running":
            self.store.update_job(job_id, only_if=("running",), control="pause")
            self.store.add_event(job_id, "Pausing: the job saves a checkpoint after its current step")
            if self.executor:
                self.executor.stop(job_id)
        else:
            raise bad(f"job {job_id} is {job.status}; only a queued or running job can be paused", "fine_tuning_job_id")
        return self.job_object(self.store.job(job_id))

    def resume(self, owner: str, job_id: str) -> dict[str, Any]:
        job = self.get_job(owner, job_id)
        if job.status != "paused":
            raise bad(f"job {job_id} is {job.status}; only a paused job can be resumed", "fine_tuning_job_id")
        self.store.update_job(job_id, only_if=("paused",), status="queued", control=None)
        self.store.add_event(job_id, "Job resumed: queued to continue from its last checkpoint")
        if self.executor:
            self.executor.notify()
        return self.job_object(self.store.job(job_id))

    def events(self, owner: str, job_id: str, limit: int, after: str | None) -> dict:
        self.get_job(owner, job_id)
        rows = self.store.events(job_id, _limit(limit) + 1, after)
        return _page([event_object(r) for r in rows], limit)

    def checkpoints(self, owner: str, job_id: str, limit: int, after: str | None) -> dict:
        self.get_job(owner, job_id)
        rows = self.store.checkpoints(job_id, _limit(limit) + 1, after)
        page = _page([checkpoint_object(r) for r in rows], limit)
        if page["data"]:
            page["first_id"], page["last_id"] = page["data"][0]["id"], page["data"][-1]["id"]
        return page

    def job_object(self, job: Row) -> dict[str, Any]:
        return {
            "object": "fine_tuning.job",
            "id": job.id,
            "model": job.model,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "fine_tuned_model": job.fine_tuned_model,
            "organization_id": f"org-{job.owner}",
            "result_files": job.result_files or [],
            "status": job.status,
            "validation_file": job.validation_file,
            "training_file": job.training_file,
            "hyperparameters": {k: v for k, v in job.hyperparameters.items() if k != "beta"},
            "method": _method_object(job),
            "trained_tokens": job.trained_tokens,
            "error": job.error,
            "seed": job.seed,
            "suffix": job.suffix,
            "metadata": job.metadata,
            "estimated_finish": None,
            "integrations": [],
            "user_provided_suffix": job.suffix,
        }


def _method_object(job: Row) -> dict[str, Any]:
    kind = job.method["type"]
    return {"type": kind, kind: {"hyperparameters": dict(job.hyperparameters)}}


def file_object(row: Row) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": row.created_at,
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": row.values.get("status_details"),
        "expires_at": None,
    }


def event_object(row: Row) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.event",
        "id": row.id,
        "created_at": row.created_at,
        "level": row.level,
        "message": row.message,
        "type": row.type,
        "data": row.data or {},
    }


def checkpoint_object(row: Row) -> dict[str, Any]:
    return {
        "object": "fine_tuning.job.checkpoint",
        "id": row.id,
        "created_at": row.created_at,
        "fine_tuning_job_id": row.job_id,
        "fine_tuned_model_checkpoint": row.fine_tuned_model_checkpoint,
        "step_number": row.step_number,
        "metrics": row.metrics,
    }


def _limit(limit: int, most: int = MAX_LIST) -> int:
    if not 1 <= limit <= most:
        raise bad(f"`limit` must be between 1 and {most}", "limit")
    return limit


def _page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"object": "list", "data": data[:limit], "has_more": len(data) > limit}


def _problems(name: str, report: OpenAIReport, shown: int = 20) -> str:
    lines = [str(p) for p in report.errors[:shown]]
    more = f" (and {len(report.errors) - shown} more)" if len(report.errors) > shown else ""
    return f"{name} does not follow the {report.method} fine-tuning format: " + "; ".join(lines) + more


def _write_rows(path: Path, source: Path, kind: str) -> Path:
    import json

    try:
        with path.open("w", encoding="utf-8") as out:
            for row in to_llmft_rows(source, kind):
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
    except UserError as exc:
        raise bad(str(exc), "training_file") from None
    return path
