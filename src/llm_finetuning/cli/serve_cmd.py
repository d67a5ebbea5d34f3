"""`llmft serve`: an OpenAI-compatible HTTP server for a run directory or a model (and adapters of its base), or
for an embedding or reranker run (/v1/embeddings, /v1/rerank)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors
from llm_finetuning.errors import UserError


def parse_adapters(values: list[str]) -> list[tuple[str, str]]:
    """`NAME=RUN` pairs, in order; a clear error for anything else."""
    pairs = []
    for value in values:
        name, sep, run = value.partition("=")
        if not sep or not name.strip() or not run.strip():
            raise UserError(f"--adapter {value!r}: expected NAME=RUN, e.g. --adapter support=runs/support-lora")
        pairs.append((name.strip(), run.strip()))
    return pairs


@user_errors
def serve(
    target: str = typer.Argument(..., help="Run directory, model directory or hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs an API key."),
    port: int = typer.Option(8000, help="Port."),
    api_key: str = typer.Option(None, envvar="LLMFT_API_KEY", help="Required bearer token (or LLMFT_API_KEY)."),
    model_id: str = typer.Option(None, help="Model name reported by /v1/models (default: the directory name)."),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="NAME=RUN: also serve this adapter run (same base) as model id NAME; repeatable."
    ),
    engine: str = typer.Option("embedded", help="embedded (default, any device) or vllm (the vllm extra, CUDA)."),
    context_length: int = typer.Option(
        None, help="Prompt + completion tokens allowed (default: the run's data.max_length, else the model's)."
    ),
    max_tokens: int = typer.Option(1024, help="Largest max_tokens a request may ask for."),
    max_batch_size: int = typer.Option(32, help="Most sequences generated (or texts encoded) together."),
    max_queue: int = typer.Option(
        256, help="Sequences (encoder models: requests) that may wait; beyond, requests get 429 with Retry-After."
    ),
    request_timeout: float = typer.Option(300.0, help="Seconds one request may take, queue wait included (504)."),
    max_body_bytes: int = typer.Option(1 << 20, help="Largest request body (413 beyond)."),
    tensor_parallel: int = typer.Option(1, help="--engine vllm: GPUs to split the model over."),
) -> None:
    """Serve /v1/models, /v1/chat/completions and /v1/completions (streaming too), /health and /metrics; for an
    embedding run /v1/embeddings, for a reranker run /v1/rerank, instead of the two generation endpoints."""
    setup_logging()
    adapters = parse_adapters(adapter)
    name = model_id or os.path.basename(os.path.normpath(target))
    from llm_finetuning.serve.encoders import encoder_kind

    kind = encoder_kind(target)
    if kind is not None:
        given = [flag for flag, value in (("--adapter", adapters), ("--context-length", context_length)) if value]
        if engine != "embedded":
            given.append(f"--engine {engine}")
        if given:  # refused rather than ignored: each only means something for a text-generation model
            raise UserError(f"{', '.join(given)}: not for a {kind} model, which the embedded engine serves on its own")
    elif engine == "vllm":
        _serve_vllm(target, name, adapters, host, port, api_key, context_length, max_batch_size, tensor_parallel)
        return
    elif engine != "embedded":
        raise UserError(f"--engine {engine}: choose embedded or vllm")
    from llm_finetuning.serve.server import Engine, ServerLimits, create_server

    if kind is not None:
        from llm_finetuning.serve.encoders import load_encoder

        served = load_encoder(target, name, kind, max_batch_size=max_batch_size, max_queue=max_queue)
    else:
        from llm_finetuning.serve.loading import load_served

        loaded = load_served(target, name, adapters)
        served = Engine(
            loaded.model,
            loaded.tokenizer,
            name,
            served=loaded.served,
            context_length=context_length or loaded.trained_length,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
        )
    limits = ServerLimits(max_tokens=max_tokens, request_timeout_s=request_timeout, max_body_bytes=max_body_bytes)
    server = create_server(served, host, port, api_key, limits)
    models = ", ".join(served.model_ids())
    console.print(f"serving [bold]{models}[/] on http://{host}:{server.server_address[1]}/v1 (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _serve_vllm(
    target: str,
    name: str,
    adapters: list[tuple[str, str]],
    host: str,
    port: int,
    api_key: str | None,
    context_length: int | None,
    max_batch_size: int,
    tensor_parallel: int,
) -> None:
    from llm_finetuning.serve import vllm_backend
    from llm_finetuning.serve.loading import trained_length
    from llm_finetuning.serve.server import is_loopback

    vllm_backend.check_available()
    if not is_loopback(host) and not api_key:
        raise UserError(f"serving on {host} (beyond this machine) needs an API key: pass --api-key or LLMFT_API_KEY")
    with tempfile.TemporaryDirectory(prefix="llmft-vllm-") as workdir:
        plan = vllm_backend.plan(
            target,
            name,
            adapters,
            host=host,
            port=port,
            api_key=api_key,
            context_length=context_length or trained_length(target),
            max_batch_size=max_batch_size,
            workdir=Path(workdir),
            tensor_parallel=tensor_parallel,
        )
        raise typer.Exit(vllm_backend.run(plan))
