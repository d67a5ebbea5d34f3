"""`llmft jobs`: the OpenAI fine-tuning API (files, jobs, events, checkpoints) over this machine or a Ray
cluster, serving each fine-tuned model the moment its job ends."""

from __future__ import annotations

from pathlib import Path

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors
from llm_finetuning.errors import UserError


@user_errors
def jobs(
    model: list[str] = typer.Option(
        [], "--model", help="NAME=PATH: a base model clients may fine-tune (hub id or folder); repeatable."
    ),
    data: Path = typer.Option(Path("llmft-jobs"), help="Folder of uploaded files, job runs and the SQLite database."),
    database: str = typer.Option(None, help="SQLAlchemy URL (default: SQLite in --data; postgresql+psycopg://...)."),
    template: str = typer.Option(None, help="YAML: the llmft config sections every job starts from (adapter...)."),
    executor: str = typer.Option("local", help="local (worker processes here) or ray (each job a Ray job)."),
    devices: str = typer.Option("cpu", help="local: device sets, one job at a time each: cpu, 0, '0,1;2,3'."),
    ray_address: str = typer.Option(None, help="ray: the cluster's dashboard address (default: RAY_ADDRESS)."),
    gpus_per_job: float = typer.Option(0, help="ray: GPUs each job asks for."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs API keys."),
    port: int = typer.Option(8000, help="Port."),
    api_key: str = typer.Option(None, envvar="LLMFT_API_KEY", help="One bearer token (owner `default`)."),
    api_keys: Path = typer.Option(None, help="YAML of `owner: key` lines: one owner per key, each sees its own."),
    max_upload_mb: int = typer.Option(512, help="Largest file upload in MiB (413 beyond)."),
    max_loaded: int = typer.Option(2, help="Models kept loaded for chat at once (the least recently used goes)."),
) -> None:
    """Serve /v1/files, /v1/fine_tuning/jobs (create, list, retrieve, cancel, pause, resume, events,
    checkpoints), /v1/models and /v1/chat/completions for the base and fine-tuned models."""
    setup_logging()
    from llm_finetuning.jobs.local import parse_devices
    from llm_finetuning.jobs.server import create_jobs_server, parse_models, read_template
    from llm_finetuning.serve.keys import ApiKeys, load_keys

    if api_key and api_keys:
        raise UserError("give --api-key or --api-keys, not both")
    keys = load_keys(api_keys) if api_keys else ApiKeys.single(api_key)
    served = create_jobs_server(
        data,
        parse_models(model),
        host=host,
        port=port,
        keys=keys,
        database=database,
        template=read_template(template),
        executor=executor,
        devices=parse_devices(devices),
        ray_address=ray_address,
        gpus_per_job=gpus_per_job,
        max_upload_bytes=max_upload_mb << 20,
        max_loaded=max_loaded,
    )
    address = served.server.server_address
    console.print(f"fine-tuning API on http://{host}:{address[1]}/v1 ({executor} executor; Ctrl-C stops)")
    try:
        served.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        served.close()
