"""Where the fine-tuning API keeps its state: files, jobs, events and checkpoints, in one SQL database.

SQLite in the server's data folder by default; any SQLAlchemy URL (`postgresql+psycopg://...`) for a deployment
that several servers or Ray workers share. The server and each job's worker process write to the same database:
SQLite runs in WAL mode with a busy timeout so that they wait for each other instead of failing. Every read and
write names its owner (the API key's name), so one key never sees another key's rows.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from llm_finetuning.errors import UserError

metadata = MetaData()

files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(100), nullable=False, index=True),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("created_at", Integer, nullable=False),
    Column("status", String(20), nullable=False),
    Column("status_details", Text),
    Column("examples", Integer),
    Column("method", String(20)),
    Column("deleted", Boolean, nullable=False, default=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(100), nullable=False, index=True),
    Column("seq", Integer, nullable=False),  # creation order (ids are random): the list's order and cursor
    Column("model", String(200), nullable=False),
    Column("training_file", String(40), nullable=False),
    Column("validation_file", String(40)),
    Column("method", JSON, nullable=False),
    Column("hyperparameters", JSON, nullable=False),
    Column("suffix", String(64)),
    Column("seed", Integer, nullable=False),
    Column("metadata", JSON),
    Column("status", String(20), nullable=False),
    Column("control", String(20)),  # what the server asked of a running job: cancel | pause
    Column("resume", Boolean, nullable=False, default=False),  # the next start continues from the last checkpoint
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Integer, nullable=False),
    Column("started_at", Integer),
    Column("finished_at", Integer),
    Column("fine_tuned_model", String(300), index=True),
    Column("error", JSON),
    Column("trained_tokens", Integer),
    Column("result_files", JSON, nullable=False),
    Column("config", JSON, nullable=False),  # the llmft config the job trains with
    Column("run_dir", Text, nullable=False),
    Column("executor", String(20), nullable=False),
    Column("slot", String(100)),  # the device set it runs on
    Column("pid", Integer),
    Column("external_id", String(200)),  # the Ray job's submission id
)

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("job_id", String(40), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("level", String(10), nullable=False),
    Column("message", Text, nullable=False),
    Column("type", String(10), nullable=False),
    Column("data", JSON),
)

checkpoints = Table(
    "checkpoints",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    Column("job_id", String(40), nullable=False, index=True),
    Column("created_at", Integer, nullable=False),
    Column("step_number", Integer, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("fine_tuned_model_checkpoint", String(300), nullable=False),
    Column("path", Text, nullable=False),
    Column("train_loss", Float),
)

TERMINAL = ("succeeded", "failed", "cancelled")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def fine_tuned_name(job: Any) -> str:
    """OpenAI's shape: `ft:{base model}:{owner}:{suffix}:{job id tail}` (no suffix: the field is left empty)."""
    return f"ft:{job.model}:{job.owner}:{job.suffix or ''}:{job.id.rsplit('-', 1)[-1][:8]}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (server and workers together)
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def connect(url: str) -> Engine:
    """The database at `url`, its tables created if absent; a clear error for a URL or driver that cannot work."""
    for plain in ("postgresql://", "postgres://"):  # the driver llmft installs (the postgres extra) is psycopg 3
        if url.startswith(plain):
            url = "postgresql+psycopg://" + url[len(plain) :]
    try:
        engine = create_engine(url, future=True, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise UserError(f"--database {url}: not a database URL SQLAlchemy can open ({exc})") from None
    except ModuleNotFoundError as exc:
        raise UserError(
            f"--database {url}: its driver is not installed ({exc.name}); for Postgres: pip install 'psycopg[binary]'"
        ) from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    metadata.create_all(engine)
    return engine


@dataclass
class Row:
    """A row as a plain mapping with attribute access (`job.status`)."""

    values: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


class Store:
    """Typed reads and writes over the four tables; every method opens its own short transaction."""

    def __init__(self, url: str) -> None:
        self.engine = connect(url)
        self.url = self.engine.url.render_as_string(hide_password=False)  # what the workers are given

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        with self.engine.begin() as connection:
            yield connection

    # -------------------------------------------------------------------------------------------- files
    def add_file(self, **values: Any) -> Row:
        values = {"created_at": int(time.time()), "deleted": False, **values}
        with self._tx() as tx:
            tx.execute(insert(files).values(**values))
        return self.file(values["id"], None)

    def file(self, file_id: str, owner: str | None) -> Row | None:
        query = select(files).where(files.c.id == file_id, files.c.deleted.is_(False))
        if owner is not None:
            query = query.where(files.c.owner == owner)
        with self._tx() as tx:
            found = tx.execute(query).mappings().first()
        return Row(dict(found)) if found else None

    def list_files(self, owner: str, purpose: str | None, limit: int, after: str | None, order: str) -> list[Row]:
        query = select(files).where(files.c.owner == owner, files.c.deleted.is_(False))
        if purpose:
            query = query.where(files.c.purpose == purpose)
        ascending = order == "asc"
        if after:
            cursor = self.file(after, owner)
            if cursor is not None:
                key = (files.c.created_at, files.c.id)
                mark = (cursor.created_at, cursor.id)
                query = query.where(
                    (key[0] > mark[0]) | ((key[0] == mark[0]) & (key[1] > mark[1]))
                    if ascending
                    else (key[0] < mark[0]) | ((key[0] == mark[0]) & (key[1] < mark[1]))
                )
        sort = (
            (files.c.created_at.asc(), files.c.id.asc())
            if ascending
            else (files.c.created_at.desc(), files.c.id.desc())
        )
        with self._tx() as tx:
            return [Row(dict(r)) for r in tx.execute(query.order_by(*sort).limit(limit)).mappings()]

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self._tx() as tx:
            done = tx.execute(
                update(files)
                .where(files.c.id == file_id, files.c.owner == owner, files.c.deleted.is_(False))
                .values(deleted=True)
            )
        return done.rowcount == 1

    # --------------------------------------------------------------------------------------------- jobs
    def add_job(self, **values: Any) -> Row:
        with self._tx() as tx:
            seq = (tx.execute(select(func.max(jobs.c.seq))).scalar() or 0) + 1
            values = {"seq": seq, "created_at": int(time.time()), "result_files": [], "attempts": 0, **values}
            tx.execute(insert(jobs).values(**values))
        return self.job(values["id"])

    def job(self, job_id: str, owner: str | None = None) -> Row | None:
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._tx() as tx:
            found = tx.execute(query).mappings().first()
        return Row(dict(found)) if found else None

    def list_jobs(self, owner: str, limit: int, after: str | None, metadata_filter: dict[str, str]) -> list[Row]:
        query = select(jobs).where(jobs.c.owner == owner)
        if after:
            cursor = self.job(after, owner)
            if cursor is not None:
                query = query.where(jobs.c.seq < cursor.seq)
        rows = []
        with self._tx() as tx:
            for found in tx.execute(query.order_by(jobs.c.seq.desc())).mappings():
                meta = found["metadata"] or {}
                if all(meta.get(k) == v for k, v in metadata_filter.items()):
                    rows.append(Row(dict(found)))
                if len(rows) == limit:
                    break
        return rows

    def jobs_in(self, *statuses: str) -> list[Row]:
        with self._tx() as tx:
            found = tx.execute(select(jobs).where(jobs.c.status.in_(statuses)).order_by(jobs.c.seq)).mappings()
            return [Row(dict(r)) for r in found]

    def update_job(self, job_id: str, *, only_if: tuple[str, ...] | None = None, **values: Any) -> bool:
        """Set `values`; with `only_if`, only while the job's status is one of those (False when it was not)."""
        statement = update(jobs).where(jobs.c.id == job_id)
        if only_if is not None:
            statement = statement.where(jobs.c.status.in_(only_if))
        with self._tx() as tx:
            return tx.execute(statement.values(**values)).rowcount == 1

    def model_owner(self, model: str) -> Row | None:
        """The succeeded job whose `fine_tuned_model` (or one of its checkpoints) is `model`."""
        with self._tx() as tx:
            found = tx.execute(
                select(jobs).where(jobs.c.fine_tuned_model == model, jobs.c.status == "succeeded")
            ).mappings()
            first = found.first()
        return Row(dict(first)) if first else None

    def models_of(self, owner: str) -> list[Row]:
        with self._tx() as tx:
            found = tx.execute(
                select(jobs).where(jobs.c.owner == owner, jobs.c.status == "succeeded").order_by(jobs.c.seq)
            ).mappings()
            return [Row(dict(r)) for r in found]

    # ------------------------------------------------------------------------------------------- events
    def add_event(self, job_id: str, message: str, level: str = "info", data: dict | None = None) -> None:
        kind = "metrics" if data is not None and "step" in data else "message"
        with self._tx() as tx:
            tx.execute(
                insert(events).values(
                    id=new_id("ftevent"),
                    job_id=job_id,
                    created_at=int(time.time()),
                    level=level,
                    message=message,
                    type=kind,
                    data=json.loads(json.dumps(data)) if data is not None else None,
                )
            )

    def events(self, job_id: str, limit: int, after: str | None) -> list[Row]:
        """Newest first, as OpenAI lists them; `after` an event id: the ones older than it."""
        query = select(events).where(events.c.job_id == job_id)
        with self._tx() as tx:
            if after:
                mark = tx.execute(select(events.c.seq).where(events.c.id == after)).scalar()
                if mark is not None:
                    query = query.where(events.c.seq < mark)
            found = tx.execute(query.order_by(events.c.seq.desc()).limit(limit)).mappings()
            return [Row(dict(r)) for r in found]

    # -------------------------------------------------------------------------------------- checkpoints
    def add_checkpoint(self, job_id: str, step: int, metrics: dict[str, Any], model: str, path: str) -> None:
        with self._tx() as tx:
            tx.execute(
                insert(checkpoints).values(
                    id=new_id("ftckpt"),
                    job_id=job_id,
                    created_at=int(time.time()),
                    step_number=step,
                    metrics=metrics,
                    fine_tuned_model_checkpoint=model,
                    path=path,
                )
            )

    def checkpoints(self, job_id: str, limit: int, after: str | None) -> list[Row]:
        query = select(checkpoints).where(checkpoints.c.job_id == job_id)
        with self._tx() as tx:
            if after:
                mark = tx.execute(select(checkpoints.c.seq).where(checkpoints.c.id == after)).scalar()
                if mark is not None:
                    query = query.where(checkpoints.c.seq < mark)
            found = tx.execute(query.order_by(checkpoints.c.seq.desc()).limit(limit)).mappings()
            return [Row(dict(r)) for r in found]
