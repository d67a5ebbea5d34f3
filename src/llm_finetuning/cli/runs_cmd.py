"""`llmft runs`: the run directories under a folder, with what each needs next.

A run killed with SIGKILL (or on a machine that lost power) never writes `interrupted` into its manifest; it is
listed as interrupted once its recorded process is gone, with the command that resumes it from its last complete
checkpoint.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from llm_finetuning.cli.common import console, user_errors

_STYLE = {"completed": "green", "running": "cyan", "interrupted": "yellow", "failed": "red"}


def resume_command(run_dir: Path) -> str:
    return f"llmft train {shlex.quote(str(Path(run_dir) / 'config.yaml'))} --resume"


@user_errors
def runs(
    folder: str = typer.Argument("runs", help="Folder holding run directories (searched 3 levels deep)."),
    as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON."),
) -> None:
    """List runs: status (a killed run shows as interrupted), method, model, step, last loss, and the command that
    resumes an interrupted or failed run."""
    from llm_finetuning.errors import UserError
    from llm_finetuning.ui.runs import list_runs

    if not Path(folder).is_dir():
        raise UserError(f"{folder}: no such folder; give the folder your runs write into (`output_dir`)")
    found = list_runs(Path(folder))
    listing = []
    for run in found:
        resumable = run.status in ("interrupted", "failed") and run.checkpoint is not None
        listing.append(
            {
                "run": str(run.path),
                "status": run.status,
                "method": run.method,
                "model": run.model,
                "step": run.step,
                "loss": run.last.get("loss"),
                "started_at": run.started_at,
                "checkpoint": str(run.checkpoint) if run.checkpoint else None,
                "resume": resume_command(run.path) if resumable else None,
                "error": run.error or None,
            }
        )
    if as_json:
        typer.echo(json.dumps(listing, indent=2))  # plain: rich would wrap long paths at the terminal width
        return
    if not listing:
        console.print(f"no runs under {escape(folder)}")
        return
    table = Table(header_style="bold")
    for name in ("run", "status", "method", "model", "step", "loss", "started"):
        table.add_column(name, overflow="fold")
    for item in listing:
        style = _STYLE.get(item["status"], "")
        loss = item["loss"]
        table.add_row(
            escape(item["run"]),
            f"[{style}]{item['status']}[/]" if style else item["status"],
            item["method"],
            escape(item["model"]),
            "" if item["step"] is None else str(item["step"]),
            f"{loss:.4f}" if isinstance(loss, float) else "",
            item["started_at"],
        )
    console.print(table)
    for item in listing:
        if item["resume"]:
            console.print(
                f"{escape(item['run'])}: {item['status']}; resume with: {escape(item['resume'])}",
                soft_wrap=True,
                highlight=False,
            )
        elif item["status"] in ("interrupted", "failed"):
            console.print(
                f"{escape(item['run'])}: {item['status']}, no complete checkpoint to resume from",
                soft_wrap=True,
                highlight=False,
            )
