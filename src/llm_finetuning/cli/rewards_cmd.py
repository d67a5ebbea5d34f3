"""`llmft rewards`: the reward library (list), scoring completions with a config's rewards, reward models."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from llm_finetuning.cli.common import console, setup_logging, user_errors

app = typer.Typer(help="Rewards: list the library, score completions, use trained reward models.", no_args_is_help=True)


@app.command("list")
@user_errors
def list_rewards() -> None:
    """Every reward of the library: kind, reference columns, default weight and top value."""
    from llm_finetuning.rewards.registry import registry

    table = Table()
    for column in ("name", "kind", "reads", "weight", "max"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", ratio=1)
    for spec in sorted(registry().values(), key=lambda s: (s.kind, s.name)):
        table.add_row(
            spec.name,
            spec.kind,
            " or ".join(spec.references) or "-",
            f"{spec.default_weight:g}",
            "-" if spec.max_value is None else f"{spec.max_value:g}",
            spec.description.split(". ")[0].rstrip(".") + ".",
        )
    console.print(table)


@app.command("score")
@user_errors
def score(
    config: str = typer.Argument(..., help="A `method: grpo` YAML config: its rewards and weights are used."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: method.rewards.0.weight=2 ..."),
    completions: str = typer.Option(
        None, "--completions", help="JSONL of {completion, <reference columns>...}; default: ideal completions."
    ),
    output: str = typer.Option(None, "--output", help="Write every row with its rewards and total here (JSONL)."),
) -> None:
    """Score completions with every reward of CONFIG and print a table (mean, min, max, share at the top score).

    Without --completions, the training data's reference answers are rendered as ideal completions (reasoning
    and answer tags), which should all earn the top correctness score."""
    setup_logging()
    from llm_finetuning.config import load_config
    from llm_finetuning.methods.grpo import judge_client
    from llm_finetuning.rewards.scoring import completions_from_file, completions_from_references, score_rows

    resolved = load_config(config, overrides or [])
    if completions:
        rows = completions_from_file(completions)
    else:
        from llm_finetuning.data.pipeline import prepare_records

        data = prepare_records(resolved.data, "prompt_only", resolved.training.seed)
        rows = completions_from_references(list(data.train))
    report = score_rows(resolved, rows, judge_client(resolved))
    table = Table("reward", "weight", "mean", "min", "max", "at top", title=f"{len(rows)} completions")
    for summary in report.rewards:
        at_max = summary.at_max
        table.add_row(
            summary.name,
            f"{summary.weight:g}",
            f"{summary.mean:.4f}",
            f"{min(summary.values):.4f}",
            f"{max(summary.values):.4f}",
            "-" if at_max is None else f"{at_max:.1%}",
        )
    totals = report.totals()
    table.add_row(
        "total (weighted)", "", f"{sum(totals) / len(totals):.4f}", f"{min(totals):.4f}", f"{max(totals):.4f}", ""
    )
    console.print(table)
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            for index, row in enumerate(report.rows):
                scores = {s.name: s.values[index] for s in report.rewards}
                handle.write(json.dumps({**row, "rewards": scores, "total": totals[index]}) + "\n")
        console.print(f"wrote {output}")


@app.command("model")
@user_errors
def model_score(
    run_dir: str = typer.Argument(..., help="Run directory of a `method: reward` run."),
    pairs: str = typer.Argument(..., help="JSONL file of {prompt, response} objects."),
    output: str = typer.Option(None, help="Write the pairs with a `score` field here (JSONL)."),
) -> None:
    """Score (prompt, response) pairs with a trained reward model; print (or write) every score."""
    from llm_finetuning.data.reading import read_rows
    from llm_finetuning.errors import DataError
    from llm_finetuning.scoring import load_reward_model
    from llm_finetuning.scoring import score as score_pairs

    rows = []
    for item in read_rows(pairs):
        if isinstance(item, DataError):
            raise item
        if not isinstance(item.data.get("prompt"), str) or not isinstance(item.data.get("response"), str):
            raise DataError(f"{item.where}: needs string fields `prompt` and `response`")
        rows.append(item.data)
    model, tokenizer = load_reward_model(run_dir)
    scores = score_pairs(model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows])
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({**r, "score": s}) + "\n" for r, s in zip(rows, scores, strict=True))
    for row, value in zip(rows, scores, strict=True):
        console.print(f"{value:+.4f}  {row['response'][:70]!r}", highlight=False, soft_wrap=True)
