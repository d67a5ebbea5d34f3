"""`llmft merge-models`: merge several fine-tuned models of one architecture (linear, SLERP, TIES, DARE)."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def merge_models_cmd(
    config: str = typer.Argument(..., help="YAML merge config (method, models, base_model, output_dir, ...)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the weights in a non-empty output_dir."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail."),
) -> None:
    """Merge models listed in a YAML file; paths in it are relative to the file."""
    # Imported here so `llmft --help` does not pay for torch and transformers.
    from llm_finetuning.export.merge_config import load_merge_config
    from llm_finetuning.export.merge_models import merge_models

    setup_logging(verbose)
    merge_config = load_merge_config(config)
    output = merge_models(merge_config, overwrite=overwrite)
    console.print(f"Merged model saved to {output}", highlight=False, soft_wrap=True)
