"""`llmft estimate`: peak memory per device, time and cost of a config, and how to make it fit.

Exit status: 0 when the config fits the `--gpu` given (or when no GPU is given), 1 when it does not fit that
GPU, 2 for a mistake in the config or the options.
"""

from __future__ import annotations

import json

import typer
from rich.table import Table

from llm_finetuning.cli.common import console, setup_logging, user_errors

GIB, MIB = 2**30, 2**20


def _size(value: float) -> str:
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value / MIB:.1f} MiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds / length:.1f} {unit}"
    return f"{seconds:.1f} s"


def _money(usd: float | None) -> str:
    return "-" if usd is None else f"${usd:,.2f}"


@user_errors
def estimate(
    config: str = typer.Argument(..., help="YAML config file."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides: training.per_device_batch_size=2 ..."),
    gpu: str = typer.Option(None, "--gpu", help="GPU of the table to check against: H100, A100-40GB, L4, ..."),
    gpus: int = typer.Option(1, "--gpus", help="Devices the run is spread over."),
    sharding: str = typer.Option(
        None, "--sharding", help="none, zero1, zero2, zero3 or fsdp (default: the config's distributed: section)."
    ),
    model_config: str = typer.Option(
        None, "--model-config", help="The model's config.json, when model.name is a hub id not in the local cache."
    ),
    gpu_table: str = typer.Option(None, "--gpu-table", help="Your own GPU table (YAML, as the shipped gpus.yaml)."),
    utilization: float = typer.Option(0.35, "--utilization", help="Fraction of the GPU's peak FLOP/s reached."),
    examples: int = typer.Option(None, "--examples", help="Training examples (local .jsonl files are counted)."),
    avg_tokens: int = typer.Option(None, "--avg-tokens", help="Mean tokens per example (packing, pretraining)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Estimate peak memory per device (weights, adapter, gradients, optimizer states, activations, logits,
    KV cache, reference and reward models, sharding), time and cost per epoch, and what would make CONFIG fit
    `--gpu`. Reads only the model's config.json. Exits 1 when CONFIG does not fit the `--gpu` given."""
    setup_logging(verbose)
    from llm_finetuning.config import load_config
    from llm_finetuning.estimate import estimate as run_estimate

    resolved = load_config(config, overrides or [])
    result = run_estimate(
        resolved,
        model_config=model_config,
        gpu=gpu,
        gpus=gpus,
        sharding=sharding,
        gpu_table=gpu_table,
        utilization=utilization,
        examples=examples,
        avg_tokens=avg_tokens,
    )
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
    else:
        _print(result)
    if result.fits is False:
        raise typer.Exit(1)


def _print(result) -> None:  # type: ignore[no-untyped-def]
    plan, mem, params = result.plan, result.memory, result.plan.params
    quant = f", {plan.quantization} weights" if plan.quantization != "none" else ""
    console.print(
        f"[bold]{result.source}[/] ({result.shape.model_type}): {params.total / 1e9:.3g}B parameters, "
        f"{params.trainable_count / 1e6:.4g}M trainable; {plan.method}, {plan.dtype}{quant}, "
        f"{plan.sequences} x {plan.seq_len} tokens per micro-batch, accumulation {plan.accumulation}, "
        f"checkpointing {'on' if plan.checkpointing else 'off'}, {plan.optimizer}, "
        f"{plan.gpus} device(s){'' if plan.sharding == 'none' else ', ' + plan.sharding}",
        soft_wrap=True,
    )
    table = Table(title="memory per device", header_style="bold")
    table.add_column("component")
    table.add_column("size", justify="right")
    for name, value in mem.components.items():
        if value:
            table.add_row(name, _size(value))
    acts = mem.activations_by_checkpointing
    table.add_row(
        "[dim]activations without / with checkpointing[/]", f"[dim]{_size(acts['without'])} / {_size(acts['with'])}[/]"
    )
    table.add_row(f"peak allocated ({mem.peak_phase})", _size(mem.peak_allocated), style="bold")
    if mem.overhead:
        table.add_row("CUDA context and allocator overhead", _size(mem.overhead))
    table.add_row("needed per device", _size(mem.total), style="bold")
    console.print(table)
    if result.gpu is not None:
        verdict = "[green]fits[/]" if result.fits else "[red]does not fit[/]"
        console.print(f"{result.gpu.name} ({result.gpu.memory_gib:g} GiB): {verdict}")
    _print_speed(result)
    if result.suggestions:
        tips = Table(title="to make it fit", header_style="bold")
        for column in ("change", "set", "needs", "fits"):
            tips.add_column(column)
        for s in result.suggestions:
            tips.add_row(s.label, " ".join(s.overrides + s.options), _size(s.total_bytes), "yes" if s.fits else "no")
        console.print(tips)


def _print_speed(result) -> None:  # type: ignore[no-untyped-def]
    rows = [r for r in result.by_gpu if r.gpu is result.gpu] if result.gpu is not None else result.by_gpu
    if not rows:
        return
    first = rows[0].throughput
    per_epoch = first.steps_per_epoch is not None
    summary = f"time and cost: {first.tokens_per_step:,} tokens per step, utilisation {first.utilization:.0%}, "
    summary += f"{first.steps_per_epoch:,} steps per epoch" if per_epoch else "per 1000 steps (pass --examples N)"
    console.print(summary, soft_wrap=True)
    table = Table(header_style="bold")
    for column in ("gpu", "memory", "fits", "per step", "per epoch" if per_epoch else "per 1k steps", "cost"):
        table.add_column(column, justify="left" if column in ("gpu", "fits") else "right")
    for row in rows:
        t = row.throughput
        seconds = t.seconds_per_epoch if per_epoch else t.seconds_per_1k_steps
        fits = "yes" if row.fits else "[red]no[/]"
        memory = f"{_size(row.total_bytes)} / {row.gpu.memory_gib:g} GiB"
        table.add_row(
            row.gpu.name, memory, fits, _duration(t.seconds_per_step), _duration(seconds), _money(t.cost(seconds))
        )
    console.print(table)
