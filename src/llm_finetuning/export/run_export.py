"""One entry point for `llmft export` and the UI's export buttons: the format and type checks, the default
destination, and the exporter of each format."""

from __future__ import annotations

from pathlib import Path

from llm_finetuning.errors import UserError

FORMATS = ("hf", "gguf", "ollama")
GGUF_TYPES = ("f16", "bf16", "q8_0", "f32")


def default_destination(run_dir: str | Path, fmt: str) -> str:
    return f"{str(run_dir).rstrip('/')}/export-{fmt}"


def export_run(run_dir: str | Path, fmt: str = "hf", outtype: str = "f16", output: str | Path | None = None) -> Path:
    """Export `run_dir` as `fmt` (hf, gguf, ollama) to `output` (default RUN_DIR/export-FORMAT); returns the path
    written (the folder, or the GGUF file)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: choose one of {', '.join(FORMATS)}.")
    if outtype not in GGUF_TYPES:
        raise UserError(f"--outtype {outtype}: choose one of {', '.join(GGUF_TYPES)}.")
    destination = str(output) if output else default_destination(run_dir, fmt)
    run_dir = str(run_dir)
    if fmt == "hf":
        from llm_finetuning.export.hf import export_hf

        return Path(export_hf(run_dir, destination))
    if fmt == "gguf":
        from llm_finetuning.export.gguf import export_gguf

        return Path(export_gguf(run_dir, destination, outtype))
    from llm_finetuning.export.ollama import export_ollama

    return Path(export_ollama(run_dir, destination, outtype))
