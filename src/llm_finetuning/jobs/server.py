"""`llmft jobs`: the fine-tuning API and the models it trains, on the serving stack (uvicorn, the same app).

One process holds the HTTP server, the database and the scheduler; each job trains in a worker process of its
own (local executor) or as a Ray job. Base models come from the command line (`--model NAME=PATH`); every
succeeded job's `fine_tuned_model` is served by `/v1/chat/completions` to its owner, loaded at first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_finetuning.errors import UserError
from llm_finetuning.jobs.routes import add_job_routes
from llm_finetuning.jobs.service import BaseModel, Executor, Service
from llm_finetuning.jobs.store import Store
from llm_finetuning.serve.engine import Engine
from llm_finetuning.serve.keys import ApiKeys
from llm_finetuning.serve.pool import EnginePool
from llm_finetuning.serve.protocol import ServerLimits
from llm_finetuning.serve.server import Server, create_server

logger = logging.getLogger(__name__)


class JobCatalog:
    """Base models for everybody; a succeeded job's model for its owner only."""

    def __init__(self, store: Store, models: dict[str, BaseModel]) -> None:
        self.store, self.models = store, models

    def visible(self, owner: str | None) -> list[str]:
        ids = list(self.models)
        if owner is not None:
            ids += [job.fine_tuned_model for job in self.store.models_of(owner)]
        return ids

    def locate(self, model: str, owner: str | None) -> str | None:
        if model in self.models:
            return self.models[model].path
        if owner is None or not model.startswith("ft:"):
            return None
        job = self.store.model_owner(model)
        return job.run_dir if job is not None and job.owner == owner else None


def load_engine(path: str, model_id: str, max_batch_size: int = 8, max_queue: int = 256) -> Engine:
    from llm_finetuning.serve.loading import load_served

    loaded = load_served(path, model_id)
    return Engine(
        loaded.model,
        loaded.tokenizer,
        model_id,
        served=loaded.served,
        context_length=loaded.trained_length,
        max_batch_size=max_batch_size,
        max_queue=max_queue,
    )


def parse_models(values: list[str]) -> dict[str, BaseModel]:
    models: dict[str, BaseModel] = {}
    for value in values:
        name, sep, path = value.partition("=")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise UserError(
                f"--model {value!r}: expected NAME=PATH, e.g. --model qwen2.5-0.5b=Qwen/Qwen2.5-0.5B-Instruct"
            )
        if ":" in name or "/" in name:
            raise UserError(f"--model {value!r}: the name may not hold ':' or '/' (it is part of fine-tuned model ids)")
        if name in models:
            raise UserError(f"--model {name}: given twice")
        models[name] = BaseModel(name, path)
    if not models:
        raise UserError("give at least one base model: --model NAME=PATH")
    return models


def read_template(path: str | None) -> dict[str, Any]:
    """The server's partial llmft config every job starts from; checked now, with a stand-in job."""
    if path is None:
        return {}
    try:
        template = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"--template {path}: cannot read it ({exc})") from None
    if not isinstance(template, dict):
        raise UserError(f"--template {path}: expected a mapping of config sections (adapter, training, data...)")
    from pydantic import ValidationError

    from llm_finetuning.config.schema import Config
    from llm_finetuning.jobs import hyperparameters

    for kind in ("supervised", "dpo"):
        trial = hyperparameters.build_config(
            template, "model", hyperparameters.resolve(kind, {}, "", 100), 0, "train.jsonl", None, "run"
        )
        try:
            Config.model_validate(trial)
        except ValidationError as exc:
            raise UserError(f"--template {path}: a {kind} job would get an invalid config: {exc}") from None
    return template


@dataclass
class JobsServer:
    server: Server
    service: Service
    executor: Executor

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def shutdown(self) -> None:
        self.server.shutdown()

    def close(self) -> None:
        self.executor.close()
        self.server.server_close()


def create_jobs_server(
    data_dir: Path,
    models: dict[str, BaseModel],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    keys: ApiKeys | None = None,
    database: str | None = None,
    template: dict[str, Any] | None = None,
    executor: str = "local",
    devices: list[str] | None = None,
    ray_address: str | None = None,
    gpus_per_job: float = 0,
    max_upload_bytes: int = 512 << 20,
    max_loaded: int = 2,
    cancel_grace_s: float = 10.0,
    limits: ServerLimits | None = None,
) -> JobsServer:
    """Bound and ready (call `serve_forever`); jobs the database holds from an earlier start are picked up."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(database or f"sqlite:///{data_dir / 'jobs.db'}")
    service = Service(store, data_dir, models, template or {}, max_upload_bytes=max_upload_bytes)
    if executor == "local":
        from llm_finetuning.jobs.local import LocalExecutor

        runner: Executor = LocalExecutor(
            store, service.files_dir, service.jobs_dir, devices, cancel_grace_s=cancel_grace_s
        )
    elif executor == "ray":
        from llm_finetuning.jobs.ray_executor import RayExecutor

        runner = RayExecutor(store, service.files_dir, ray_address, gpus_per_job=gpus_per_job)
    else:
        raise UserError(f"--executor {executor}: choose local or ray")
    service.executor = runner
    pool = EnginePool(JobCatalog(store, models), load_engine, max_loaded=max_loaded)

    def extend(app: Any, owner_of: Any, read_json: Any) -> None:
        add_job_routes(app, service, owner_of, read_json)

    server = create_server(pool, host, port, keys or ApiKeys(), limits, extend)
    runner.start()
    return JobsServer(server, service, runner)
