"""`llmft reward score`: score (prompt, response) pairs with a trained reward model."""

from __future__ import annotations

import json

import typer

from llm_finetuning.cli.common import console, user_errors

app = typer.Typer(help="Use trained reward models.", no_args_is_help=True)


@app.command("score")
@user_errors
def score_pairs(
    run_dir: str = typer.Argument(..., help="Run directory of a `method: reward` run."),
    pairs: str = typer.Argument(..., help="JSONL file of {prompt, response} objects."),
    output: str = typer.Option(None, help="Write the pairs with a `score` field here (JSONL)."),
) -> None:
    """Print (or write) the reward of every response."""
    from llm_finetuning.data.reading import read_rows
    from llm_finetuning.errors import DataError
    from llm_finetuning.scoring import load_reward_model, score

    rows = []
    for item in read_rows(pairs):
        if isinstance(item, DataError):
            raise item
        if not isinstance(item.data.get("prompt"), str) or not isinstance(item.data.get("response"), str):
            raise DataError(f"{item.where}: needs string fields `prompt` and `response`")
        rows.append(item.data)
    model, tokenizer = load_reward_model(run_dir)
    scores = score(model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows])
    if output:
        with open(output, "w", encoding="utf-8") as handle:
            handle.writelines(json.dumps({**r, "score": s}) + "\n" for r, s in zip(rows, scores, strict=True))
    for row, value in zip(rows, scores, strict=True):
        console.print(f"{value:+.4f}  {row['response'][:70]!r}", highlight=False, soft_wrap=True)
