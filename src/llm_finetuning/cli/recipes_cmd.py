"""`llmft recipes`: list, show and copy the recipes shipped with the package."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from llm_finetuning.cli.common import console, user_errors
from llm_finetuning.recipes.catalog import Recipe, all_recipes, copy_recipe, get_recipe, render

app = typer.Typer(help="The collection's pipelines as ready-to-run configs.", no_args_is_help=True)


@app.command("list")
@user_errors
def list_recipes(
    prefix: str = typer.Argument(None, help="Only recipes whose name starts with this, e.g. `math_reasoning`."),
) -> None:
    """Every recipe with its method, adapter, model and what it trains. Run one with `llmft train NAME`."""
    from llm_finetuning.config import load_config

    recipes = [r for r in all_recipes(None) if not prefix or r.name.startswith(prefix.strip("/"))]
    if not recipes:
        console.print(f"No recipe starts with `{escape(prefix)}`; `llmft recipes list` shows them all.")
        raise typer.Exit(1)
    table = Table(header_style="bold")
    table.add_column("name", no_wrap=True)  # whole, so it can be copied into `llmft train`
    for column in ("method", "adapter", "model", "trains"):
        table.add_column(column, overflow="fold")
    for recipe in recipes:
        if recipe.kind != "train":
            method, adapter, model = _workflow_columns(recipe)
            table.add_row(escape(recipe.name), method, adapter, escape(model), escape(recipe.summary))
            continue
        config = load_config(recipe.path)
        table.add_row(
            escape(recipe.name),
            config.method.name,
            config.adapter.method + (f" ({config.model.quantization})" if config.model.quantization != "none" else ""),
            escape(config.model.name),
            escape(recipe.summary),
        )
    console.print(table)


def _workflow_columns(recipe: Recipe) -> tuple[str, str, str]:
    """method, adapter and model columns of a generation or stages recipe."""
    from llm_finetuning.stages import stage_names
    from llm_finetuning.synth import load_generate_config

    if recipe.kind == "generate":
        config = load_generate_config(recipe.path)
        return f"generate: {config.task.name}", "-", f"teacher {config.teacher.model}"
    return "stages: " + " -> ".join(stage_names(recipe.path)), "-", "-"


@app.command("show")
@user_errors
def show(name: str = typer.Argument(..., help="Recipe name, e.g. `supervised_finetuning/lora/arc`.")) -> None:
    """Print the recipe as one self-contained YAML file: its description, then every key it sets."""
    # Plain output: it must stay valid YAML (no markup, no wrapping at the terminal width).
    typer.echo(render(get_recipe(name)), nl=False)


@app.command("copy")
@user_errors
def copy(
    name: str = typer.Argument(..., help="Recipe name, e.g. `supervised_finetuning/lora/arc`."),
    destination: str = typer.Argument(..., help="File to write, or a folder (gets `<dataset>.yaml`)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Copy a recipe into a file of your own (its `extends:` merged in), to edit and train."""
    target = copy_recipe(name, destination, overwrite=overwrite)
    console.print(f"[green]copied[/] {escape(name)} -> {escape(str(target))}")
    console.print(f"  train it with: llmft train {escape(str(target))}")
