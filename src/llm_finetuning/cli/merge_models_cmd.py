"""`llmft merge-models CONFIG [OUTPUT]`: merge models of one architecture (linear, SLERP, TIES, DARE, DELLA, ...).

CONFIG is llmft's merge YAML or a mergekit YAML as shared on model cards; `llmft merge-models mergekit.yml out`
is `mergekit-yaml mergekit.yml out`. See docs/merging.md.
"""

from __future__ import annotations

from pathlib import Path

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def merge_models_cmd(
    config: str = typer.Argument(..., help="Merge YAML: llmft's (method, models, ...) or mergekit's (merge_method)."),
    output: str | None = typer.Argument(None, help="Output directory; overrides the config's output_dir."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of the random drops (dare_*, della*), as mergekit's --random-seed."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the weights in a non-empty output directory."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log more detail."),
) -> None:
    """Merge the models a YAML file lists; relative paths in it are looked up beside the file, then here."""
    # Imported here so `llmft --help` does not pay for torch and transformers.
    from llm_finetuning.export.merge_config import load_merge_config, read_format
    from llm_finetuning.export.merge_models import merge_models

    setup_logging(verbose)
    merge_config = load_merge_config(config)
    if seed is not None:
        merge_config.seed = seed
    original = Path(config) if read_format(config) == "mergekit" else None
    result = merge_models(merge_config, overwrite=overwrite, output_dir=output, original=original)
    console.print(f"Merged model saved to {result}", highlight=False, soft_wrap=True)
