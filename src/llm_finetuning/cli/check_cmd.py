"""`llmft check`: pre-flight checks of a config before any run."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from llm_finetuning.cli.common import console, masked_text, setup_logging, user_errors

STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


@user_errors
def check(
    config: str = typer.Argument(..., help="YAML config file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: data.max_length=2048 ..."),
    rows: int = typer.Option(200, "--rows", min=1, help="Rows sampled from every data source."),
    examples: int = typer.Option(2, "--examples", min=0, help="Examples shown with their trained tokens."),
    gpu: str = typer.Option(None, "--gpu", help="Fail when the memory estimate does not fit this GPU (H100, L4...)."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="Devices the run is spread over (for the memory estimate)."),
) -> None:
    """Check CONFIG before training: config, data rows, masked examples, lengths, EOS and pad, reward
    contracts, the exported chat template, the memory estimate. Exits 1 when a check fails; warnings name likely
    mistakes and leave the exit code at 0."""
    setup_logging()
    from llm_finetuning.check.preflight import run_checks
    from llm_finetuning.config import load_config
    from llm_finetuning.data.inspect import histogram

    resolved = load_config(config, overrides or [])
    console.print(f"[green]config valid[/]: {escape(config)}")
    report = run_checks(resolved, rows, gpu, gpus)
    for sample in report.sources:
        console.print(
            f"\n[bold]{escape(sample.label)}[/] ({sample.split}): {sample.rows} rows sampled, "
            f"{len(sample.bad_rows)} malformed",
            soft_wrap=True,
        )
        if sample.lengths:
            table = Table("tokens", "examples", "", header_style="bold")
            buckets = histogram(sample.lengths)
            peak = max(count for _, _, count in buckets) or 1
            for low, high, count in buckets:
                over = " (over max_length)" if low > report.max_length else ""
                table.add_row(f"{low}-{high}{over}", str(count), "#" * round(30 * count / peak))
            console.print(table)
            over = sum(length > report.max_length for length in sample.lengths)
            console.print(f"longer than data.max_length={report.max_length}: {over / len(sample.lengths):.1%}")
        for index, encoded in enumerate(sample.examples[:examples]):
            console.print(f"example {index + 1} ([bold green]green[/] tokens carry loss):")
            console.print(masked_text(encoded, report.tokenizer))
    if report.findings:
        console.print()
    for finding in report.findings:
        level = finding.level
        console.print(f"[{STYLE[level]}]{level}[/] {escape(finding.where)}: {escape(finding.message)}", soft_wrap=True)
    errors, warnings = len(report.by_level("error")), len(report.by_level("warning"))
    console.print(f"\n{'[red]failed' if errors else '[green]passed'}[/]: {errors} errors, {warnings} warnings")
    if errors:
        raise typer.Exit(1)
