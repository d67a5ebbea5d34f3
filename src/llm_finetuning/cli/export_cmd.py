"""`llmft export`: package a run for use elsewhere."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors

FORMATS = ("hf", "gguf", "ollama")
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")


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
    from llm_finetuning.errors import UserError

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    if outtype not in GGUF_TYPES:
        raise UserError(f"--outtype {outtype}: choose one of {', '.join(GGUF_TYPES)}.")
    destination = output or f"{run_dir.rstrip('/')}/export-{fmt}"
    if fmt == "hf":
        from llm_finetuning.export.hf import export_hf

        path = export_hf(run_dir, destination)
    elif fmt == "gguf":
        from llm_finetuning.export.gguf import export_gguf

        path = export_gguf(run_dir, destination, outtype)
    else:
        from llm_finetuning.export.ollama import export_ollama

        path = export_ollama(run_dir, destination, outtype)
    console.print(f"exported to {path}", soft_wrap=True)
