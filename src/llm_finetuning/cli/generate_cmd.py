"""`llmft generate` (batched, to JSONL) and `llmft chat` (interactive, streamed)."""

from __future__ import annotations

import json

import typer

from llm_finetuning.cli.common import console, user_errors


@user_errors
def generate(
    target: str = typer.Argument(..., help="Run directory, model directory or hub id."),
    prompts: str = typer.Option(..., "--prompts", help="JSONL of {prompt} or {messages} objects, or a text file."),
    output: str = typer.Option(None, "--output", help="Where to write the JSONL (default: stdout)."),
    max_new_tokens: int = typer.Option(256, help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, help="0 for greedy decoding."),
    top_p: float = typer.Option(1.0, help="Nucleus sampling mass."),
    batch_size: int = typer.Option(8, help="Prompts per generation batch."),
) -> None:
    """Generate a completion for every prompt of a file, in batches, and write JSONL."""
    from pathlib import Path

    from llm_finetuning.errors import DataError
    from llm_finetuning.serve.generation import generate as run_generation
    from llm_finetuning.serve.generation import load_for_inference

    rows = []
    for number, line in enumerate(Path(prompts).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        if prompts.endswith(".jsonl"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{prompts}:{number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not ("prompt" in row or "messages" in row):
                raise DataError(f"{prompts}:{number}: needs a `prompt` or `messages` field")
        else:
            row = {"prompt": line}
        rows.append(row)
    model, tokenizer = load_for_inference(target)
    completions = run_generation(
        model,
        tokenizer,
        [r.get("messages") or r["prompt"] for r in rows],
        max_new_tokens,
        temperature,
        top_p,
        batch_size,
    )
    lines = [
        json.dumps({**row, "completion": text}, ensure_ascii=False) for row, text in zip(rows, completions, strict=True)
    ]
    if output:
        Path(output).write_text("\n".join(lines) + "\n", encoding="utf-8")
        console.print(f"wrote {len(lines)} completions to {output}", soft_wrap=True)
    else:
        typer.echo("\n".join(lines))


@user_errors
def chat(
    target: str = typer.Argument(..., help="Run directory, model directory or hub id."),
    system: str = typer.Option(None, help="System message."),
    max_new_tokens: int = typer.Option(256, help="Tokens per reply."),
    temperature: float = typer.Option(0.0, help="0 for greedy decoding."),
) -> None:
    """Chat with a trained model in the terminal (its own chat template, streamed). Empty line or /exit quits."""
    from llm_finetuning.serve.generation import load_for_inference, stream_chat

    model, tokenizer = load_for_inference(target)
    messages = [{"role": "system", "content": system}] if system else []
    console.print("[dim]Type a message; an empty line or /exit quits, /reset clears the conversation.[/]")
    while True:
        try:
            text = input("you> ")
        except EOFError:
            break
        if not text.strip() or text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            messages = messages[:1] if system else []
            continue
        messages.append({"role": "user", "content": text})
        typer.echo("model> ", nl=False)
        reply = ""
        for piece in stream_chat(model, tokenizer, messages, max_new_tokens, temperature):
            reply += piece
            typer.echo(piece, nl=False)
        typer.echo("")
        messages.append({"role": "assistant", "content": reply})
