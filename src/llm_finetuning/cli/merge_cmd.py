"""`llmft merge`: fold a run's adapter into its base model."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def merge(
    run_dir: str = typer.Argument(..., help="Run directory whose final/ holds an adapter."),
    force: bool = typer.Option(False, "--force", help="Merge again even if merged/ is up to date."),
) -> None:
    """Merge the LoRA/DoRA adapter of RUN_DIR into its base (dequantizing a QLoRA base) into RUN_DIR/merged."""
    setup_logging()
    from llm_finetuning.export.lora_merge import merge_run

    result = merge_run(run_dir, force=force)
    console.print(("[green]" if result.merged else "[yellow]") + result.message + "[/]", soft_wrap=True)
