"""Entry point of the `llmft` command."""

from __future__ import annotations

import typer

from llm_finetuning import __version__
from llm_finetuning.cli import (
    check_cmd,
    config_cmd,
    data_cmd,
    env_cmd,
    estimate_cmd,
    eval_cmd,
    export_cmd,
    generate_cmd,
    jobs_cmd,
    merge_cmd,
    merge_models_cmd,
    quickstart_cmd,
    recipes_cmd,
    rewards_cmd,
    runs_cmd,
    serve_cmd,
    train_cmd,
    ui_cmd,
)

app = typer.Typer(
    name="llmft",
    help="Fine-tune and align open language models from one validated YAML file.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("train", epilog=config_cmd.schema_epilog())(train_cmd.train)
app.command("check")(check_cmd.check)
app.command("env")(env_cmd.env)
app.command("estimate")(estimate_cmd.estimate)
app.command("eval")(eval_cmd.eval_cmd)
app.command("merge")(merge_cmd.merge)
app.command("merge-models")(merge_models_cmd.merge_models_cmd)
app.command("export")(export_cmd.export)
app.command("generate")(generate_cmd.generate)
app.command("chat")(generate_cmd.chat)
app.command("serve")(serve_cmd.serve)
app.command("jobs")(jobs_cmd.jobs)
app.command("quickstart")(quickstart_cmd.quickstart)
app.command("ui")(ui_cmd.ui)
app.command("runs")(runs_cmd.runs)
app.add_typer(config_cmd.app, name="config")
app.add_typer(data_cmd.app, name="data")
app.add_typer(rewards_cmd.app, name="rewards")
app.add_typer(recipes_cmd.app, name="recipes")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llm-finetuning {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Fine-tune and align open language models from one validated YAML file."""


def main() -> None:
    app()


if __name__ == "__main__":
    main()
