"""`llmft serve`: an OpenAI-compatible HTTP server for a run directory or a model."""

from __future__ import annotations

import os

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def serve(
    target: str = typer.Argument(..., help="Run directory, model directory or hub id."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs an API key."),
    port: int = typer.Option(8000, help="Port."),
    api_key: str = typer.Option(None, envvar="LLMFT_API_KEY", help="Required bearer token (or LLMFT_API_KEY)."),
    model_id: str = typer.Option(None, help="Model name reported by /v1/models (default: the directory name)."),
    max_tokens: int = typer.Option(1024, help="Largest max_tokens a request may ask for."),
) -> None:
    """Serve /v1/models, /v1/chat/completions and /v1/completions (streaming too) until Ctrl-C."""
    setup_logging()
    from llm_finetuning.serve.generation import load_for_inference
    from llm_finetuning.serve.server import Engine, ServerLimits, create_server

    model, tokenizer = load_for_inference(target)
    name = model_id or os.path.basename(os.path.normpath(target))
    server = create_server(Engine(model, tokenizer, name), host, port, api_key, ServerLimits(max_tokens=max_tokens))
    console.print(f"serving [bold]{name}[/] on http://{host}:{server.server_address[1]}/v1 (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
