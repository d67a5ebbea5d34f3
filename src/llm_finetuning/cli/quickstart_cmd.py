"""`llmft quickstart`: train a tiny model on a synthetic task offline and show before/after."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from llm_finetuning.cli.common import console, setup_logging, user_errors


@user_errors
def quickstart(
    output_dir: str = typer.Option("runs/quickstart", help="Run directory to create."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory."),
    max_steps: int = typer.Option(400, help="Optimizer steps."),
) -> None:
    """Fine-tune a tiny model on a synthetic task, offline, and compare held-out accuracy before and after."""
    setup_logging()
    from llm_finetuning.quickstart import INSTRUCTION, run_quickstart

    console.rule("[bold]llmft quickstart")
    console.print(
        "A tiny random Llama-shaped model learns one skill: "
        f"[italic]'{INSTRUCTION} qzvek'[/] -> [italic]'QZVEK'[/] on made-up words.\n"
        "Accuracy is exact match on held-out words the model never saw in training.\n"
    )
    started = time.monotonic()
    outcome = run_quickstart(output_dir=output_dir, overwrite=overwrite, max_steps=max_steps)
    elapsed = time.monotonic() - started
    table = Table(title=f"held-out exact match ({outcome.eval_examples} words)", header_style="bold")
    table.add_column("model")
    table.add_column("accuracy", justify="right")
    table.add_row("before training", f"{outcome.before:.1f}%")
    table.add_row("after training", f"[bold green]{outcome.after:.1f}%[/]")
    table.add_row("change", f"{outcome.after - outcome.before:+.1f} points")
    console.print(table)
    run = outcome.result.run.root
    console.print(f"status: {outcome.result.status} in {elapsed:.0f}s")
    console.print(f"run directory: [bold]{run}[/] (config.yaml, manifest.json, metrics.jsonl, plots/, final/)")
    console.print("\nNext:")
    commands = [
        (f"llmft config show {run}/config.yaml", "the resolved config of this run"),
        ("llmft config schema", "every option, described"),
        (f"llmft train {run}/config.yaml output_dir=runs/again training.max_steps=100", "train again, overridden"),
        ("llmft env", "versions, device, optional extras"),
    ]
    for command, why in commands:
        # soft_wrap keeps each command on one line, so it can be copied
        console.print(f"  {command}  [dim]# {why}[/]", soft_wrap=True, highlight=False)
