"""`llmft train`: run a training job from a YAML config."""

from __future__ import annotations

import typer

from llm_finetuning.cli.common import console, setup_logging, user_errors
from llm_finetuning.config import load_config
from llm_finetuning.runs.rundir import check_run_dir


@user_errors
def train(
    config: str = typer.Argument(..., help="YAML config file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: training.learning_rate=1e-4 ..."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run directory from its last checkpoint."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Train a model from CONFIG. Everything about the run is written to its `output_dir`."""
    setup_logging(verbose)
    if overwrite and resume:
        raise typer.BadParameter("--overwrite and --resume cannot be used together. Choose one.")
    from llm_finetuning.stages import is_stages_file

    if is_stages_file(config):
        if overrides or resume:
            raise typer.BadParameter("a stages file takes no overrides or --resume; edit the stage configs instead")
        from llm_finetuning.stages import run_stages

        for stage in run_stages(config, overwrite=overwrite):
            console.print(f"[green]{stage.status}[/] stage {stage.name}: {stage.run_dir}")
        return
    resolved = load_config(config, overrides or [])
    check_run_dir(resolved.output_dir, overwrite=overwrite, resume=resume)  # fail before the slow imports
    from llm_finetuning.train import train as run_training  # heavy imports only once the config is valid

    result = run_training(resolved, overwrite=overwrite, resume=resume)
    color = "green" if result.status == "completed" else "yellow"
    console.print(f"[{color}]{result.status}[/]: run directory {result.run.root}")
    for key in ("train_loss", "eval_loss"):
        if key in result.metrics:
            console.print(f"  {key}: {result.metrics[key]:.4f}")
    if result.status == "interrupted":
        console.print(f"  resume with: llmft train {config} --resume")
        raise typer.Exit(130)
