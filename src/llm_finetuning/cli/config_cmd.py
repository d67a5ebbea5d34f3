"""`llmft config`: show the schema, validate a file, print the resolved config."""

from __future__ import annotations

import typer
import yaml
from rich.markup import escape
from rich.table import Table

from llm_finetuning.cli.common import console, user_errors
from llm_finetuning.config import load_config
from llm_finetuning.config.describe import describe

app = typer.Typer(help="Inspect the config schema and config files.", no_args_is_help=True)


@app.command("schema")
def schema(
    section: str = typer.Argument(None, help="Only keys under this prefix, e.g. `training` or `adapter`."),
) -> None:
    """Every config key with its type, default and description."""
    table = Table(show_lines=False, header_style="bold")
    for column in ("key", "type", "default", "description"):
        table.add_column(column, overflow="fold")
    for row in describe():
        if section and not (row.key == section or row.key.startswith((f"{section}.", f"{section}["))):
            continue
        description = escape(row.description)
        if row.variant:
            description = f"[dim]({escape(row.variant)})[/] {description}"
        table.add_row(escape(row.key), escape(row.type), escape(row.default), description)
    console.print(table)


@app.command("validate")
@user_errors
def validate(
    config: str = typer.Argument(..., help="YAML config file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. training.learning_rate=1e-4."),
) -> None:
    """Check a config file (with its `extends:` chain and overrides) against the schema."""
    load_config(config, overrides or [])
    console.print(f"[green]ok[/] {config}")


@app.command("show")
@user_errors
def show(
    config: str = typer.Argument(..., help="YAML config file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. training.learning_rate=1e-4."),
) -> None:
    """Print the fully resolved config: `extends:` merged, overrides applied, defaults filled in."""
    resolved = load_config(config, overrides or [])
    # Plain output: it must stay valid YAML (no markup, no wrapping at the terminal width).
    typer.echo(yaml.safe_dump(resolved.model_dump(mode="json"), sort_keys=False), nl=False)


def schema_epilog() -> str:
    """The list of config keys for `llmft train --help`."""
    lines = ["Config keys (full table: llmft config schema):\n\n"]
    for row in describe():
        text = escape(" ".join(row.description.split()))
        if "." not in row.key and row.type[:1].isupper():
            lines.append(f"\n\n[bold]{row.key}[/]: {text}\n\n")
            continue
        variant = f" ({escape(row.variant)})" if row.variant else ""
        lines.append(f"  {escape(row.key)}{variant}: {text}\n\n")
    return "".join(lines)
