"""Before/after report: the base model and every fine-tuned variant of a run (adapter or full model, merged,
GGUF export) on the same tasks, as a Markdown table (`RUN/eval/before_after.md`), JSON and a PNG chart
(`RUN/plots/before_after.png`). Each variant's full results go to `RUN/eval/<variant>/<task>.json`."""

from __future__ import annotations

import gc
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.models import Variant, load_variant, run_variants
from llm_finetuning.evaluation.runner import EvalSettings, Progress, evaluate, result_names
from llm_finetuning.runs.plots import pyplot

logger = logging.getLogger(__name__)

HIDDEN = ("examples", "tokens", "window", "stride", "judge_fallbacks", "sentence_bleu")
"""Bookkeeping values kept in the JSON but left out of the table and the chart."""
CONTEXT_COUNTS = ("skipped_too_long", "truncated")
"""Examples that did not fit a model's context: shown only where some variant has any (the metrics of that
task then cover different examples per variant)."""
LOWER_IS_BETTER = ("perplexity", "nll_per_token")


@dataclass
class BeforeAfter:
    variants: list[str]
    table: dict[str, dict[str, float]]
    """`task/metric` -> variant -> value."""
    markdown: Path
    json: Path
    chart: Path | None


def shown_metrics(metrics: dict[str, float]) -> list[str]:
    return [m for m in metrics if not m.endswith("_stderr") and m not in HIDDEN]


def markdown_table(table: dict[str, dict[str, float]], variants: list[str]) -> str:
    """Rows `task/metric`, one column per variant, and the change of the last variant from the first."""
    header = ["task / metric", *variants, f"{variants[-1]} - {variants[0]}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    for key, values in table.items():
        cells = [f"{values[v]:.4f}" if v in values else "-" for v in variants]
        first, last = values.get(variants[0]), values.get(variants[-1])
        delta = f"{last - first:+.4f}" if first is not None and last is not None else "-"
        lines.append("| " + " | ".join([key, *cells, delta]) + " |")
    return "\n".join(lines) + "\n"


def plot_table(table: dict[str, dict[str, float]], variants: list[str], path: Path) -> Path | None:
    """One small bar chart per task metric (metrics have different scales), one bar per variant; None without
    matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    keys = list(table)
    columns = min(3, max(1, len(keys)))
    rows = math.ceil(len(keys) / columns) or 1
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, key in enumerate(keys):
        axis = axes[index // columns][index % columns]
        values = [table[key].get(v, float("nan")) for v in variants]
        axis.bar(range(len(variants)), values, color=[colours[i % len(colours)] for i in range(len(variants))])
        axis.set_xticks(range(len(variants)), variants, rotation=20)
        better = "lower" if key.rsplit("/", 1)[-1] in LOWER_IS_BETTER else "higher"
        axis.set_title(f"{key} ({better} is better)", fontsize=9)
        axis.grid(axis="y", alpha=0.3)
    for index in range(len(keys), rows * columns):
        axes[index // columns][index % columns].axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def before_after(
    run_dir: str | Path,
    tasks: list[EvalTaskConfig],
    settings: EvalSettings | None = None,
    variants: list[str] | None = None,
    judge: Any = None,
    progress: Progress | None = None,
) -> BeforeAfter:
    """Evaluate the run's variants (all that exist, or those named in `variants`) on `tasks` and write the
    table, the JSON and the chart."""
    root = Path(run_dir)
    available = run_variants(root)
    chosen: list[Variant] = available
    if variants:
        known = {v.name: v for v in available}
        missing = [name for name in variants if name not in known]
        if missing:
            from llm_finetuning.errors import UserError

            raise UserError(
                f"{root}: no {', '.join(missing)} variant; this run has {', '.join(known)} "
                "(merge with `llmft merge`, export with `llmft export --format gguf`)"
            )
        chosen = [known[name] for name in variants]
    names = result_names(tasks)
    table: dict[str, dict[str, float]] = {}
    for variant in chosen:
        logger.info("Before/after: evaluating the %s model (%s)", variant.name, variant.path)
        model, tokenizer = load_variant(root, variant)
        results = evaluate(
            model,
            tokenizer,
            tasks,
            settings,
            root / "eval" / variant.name,
            judge,
            progress,
            model_name=f"{variant.name}: {variant.path}",
        )
        for name in names:
            for metric in shown_metrics(results[name].metrics):
                table.setdefault(f"{name}/{metric}", {})[variant.name] = results[name].metrics[metric]
        del model
        gc.collect()
    table = {
        key: values
        for key, values in table.items()
        if key.rsplit("/", 1)[-1] not in CONTEXT_COUNTS or any(values.values())
    }
    order = [v.name for v in chosen]
    eval_dir = root / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    markdown = eval_dir / "before_after.md"
    markdown.write_text(markdown_table(table, order), encoding="utf-8")
    data = {"variants": {v.name: str(v.path) for v in chosen}, "metrics": table}
    json_path = eval_dir / "before_after.json"
    json_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    chart = plot_table(table, order, root / "plots" / "before_after.png")
    return BeforeAfter(order, table, markdown, json_path, chart)
