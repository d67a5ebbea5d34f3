"""`llmft export`: package a run for use elsewhere."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def export(
    run_dir: str = typer.Argument(..., help="Run directory (or, for gguf/ollama, a Hugging Face model folder)."),
    fmt: str = typer.Option("hf", "--format", help="hf (merged safetensors + model card), gguf, or ollama."),
    outtype: str = typer.Option("f16", "--outtype", help="GGUF tensor type: f16, bf16, q8_0 or f32."),
    output: str = typer.Option(None, "--output", help="Export folder (default: RUN_DIR/export-FORMAT)."),
) -> None:
    """Export a run: `hf` writes merged safetensors, the tokenizer and a model card; `gguf` a single GGUF file
    with the tokenizer and chat template embedded; `ollama` that GGUF file plus a Modelfile whose template,
    parameters and stop tokens come from the trained chat template."""
    setup_logging()
    from llm_finetuning.export.run_export import export_run

    path = export_run(run_dir, fmt, outtype, output)
    console.print(f"exported to {path}", soft_wrap=True)
