"""`llmft export`: package a run for use elsewhere."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def export(
    run_dir: str = typer.Argument(..., help="Run directory."),
    fmt: str = typer.Option("hf", "--format", help="Export format: hf (merged safetensors + model card)."),
    output: str = typer.Option(None, "--output", help="Export folder (default: RUN_DIR/export-FORMAT)."),
) -> None:
    """Export a run: `hf` writes merged safetensors, the tokenizer and a model card."""
    setup_logging()
    from llm_finetuning.errors import UserError

    if fmt != "hf":
        raise UserError(f"--format {fmt}: only `hf` is available in this version (gguf and ollama are planned).")
    from llm_finetuning.export.hf import export_hf

    path = export_hf(run_dir, output or f"{run_dir.rstrip('/')}/export-{fmt}")
    console.print(f"exported to {path}", soft_wrap=True)
