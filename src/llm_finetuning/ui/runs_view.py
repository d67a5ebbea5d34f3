"""What the runs page shows of a run, as text and plot data: progress, metrics, evaluation, curves, the log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from llm_finetuning.ui import runs as runs_mod

CURVES = ("loss", "learning_rate", "eval_loss", "reward", "grad_norm")
"""Curves offered first when a run logged them."""


def detail(info: runs_mod.RunInfo | None) -> str:
    if info is None:
        return "No run directories yet. Launch one from **New run**."
    lines = [f"**{info.name}**: {info.status}", f"method {info.method}, adapter {info.adapter}, model {info.model}"]
    progress = info.progress
    if progress.get("max_steps"):
        line = f"step {progress['step']} of {progress['max_steps']} ({progress['step'] / progress['max_steps']:.0%})"
        if info.status == "running" and progress.get("eta_s") is not None:
            line += f", about {duration(progress['eta_s'])} left"
        if progress.get("seconds_per_step"):
            line += f", {progress['seconds_per_step']:.2f} s per step"
        lines.append(line)
    elif info.step is not None:
        lines.append(f"step {info.step}")
    if progress.get("memory_gib") is not None:
        lines.append(f"peak memory {progress['memory_gib']:.2f} GiB ({progress.get('memory_of', 'device')})")
    metrics = ", ".join(f"{k} {v:.4g}" for k, v in info.last.items() if isinstance(v, float))
    if metrics:
        lines.append(f"last: {metrics}")
    if info.error:
        lines.append(f"error: {info.error}")
    if info.checkpoint is not None:
        lines.append(f"resumable from `{info.checkpoint.name}`")
    tasks = info.evaluation.get("tasks") or {}
    for task, values in tasks.items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, int | float))
        lines.append(f"eval {task}: {shown}")
    golden = info.evaluation.get("golden")
    if golden:
        lines.append("golden set: " + ", ".join(f"{k} {v}" for k, v in golden.items() if not isinstance(v, dict)))
    return "  \n".join(lines)


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min"
    return f"{seconds / 3600:.1f} h"


def before_after(info: runs_mod.RunInfo | None) -> str:
    """The run's before/after table (`llmft eval RUN --before-after` writes it), or how to make one."""
    if info is None:
        return ""
    table = info.path / "eval" / "before_after.md"
    if table.is_file():
        return "**before / after**\n\n" + table.read_text(encoding="utf-8")
    return (
        f"No before/after table yet: `llmft eval {info.path} --before-after --tasks ...` evaluates the base and "
        "every variant of the run on the same tasks."
    )


def curves(folder: Path, names: list[str], curve: str) -> tuple[list[str], str, pd.DataFrame]:
    """(every metric the runs logged, the curve to draw, its points): each run's metrics read once. The usual
    curves come first in the list; `curve` falls back to `loss` (or the first logged) when these runs lack it."""
    records = {name: runs_mod.read_metrics(folder / name) for name in names}
    found: dict[str, None] = {}
    for logged in records.values():
        for record in logged:
            found.update({k: None for k, v in record.items() if k not in ("step", "epoch") and _is_number(v)})
    metrics = [c for c in CURVES if c in found] + sorted(k for k in found if k not in CURVES)
    if curve not in metrics:
        curve = "loss" if "loss" in metrics else (metrics or [curve])[0]
    rows = [
        {"step": record["step"], "value": float(record[curve]), "run": name}
        for name, logged in records.items()
        for record in logged
        if _is_number(record.get(curve)) and record.get("step") is not None
    ]
    return metrics, curve, pd.DataFrame(rows, columns=["step", "value", "run"])


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def log(folder: Path, info: runs_mod.RunInfo | None) -> str:
    if info is None:
        return ""
    log = folder / f"{info.name}.log"
    if not log.is_file():
        return ""
    text = log.read_text(encoding="utf-8", errors="replace")
    return "\n".join(text.splitlines()[-40:])
