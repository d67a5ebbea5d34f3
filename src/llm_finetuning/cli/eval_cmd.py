"""`llmft eval`: tasks, golden-set regression, before/after reports and lm-evaluation-harness tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from llm_finetuning.cli.common import console, err_console, setup_logging, user_errors


class BarProgress:
    """The runner's progress hook as a rich progress bar on stderr (one bar per task)."""

    def __init__(self) -> None:
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=False,
        )
        self.current: Any = None

    def __enter__(self) -> BarProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def start(self, name: str, total: int) -> None:
        self.current = self.bars.add_task(name, total=total)

    def advance(self, count: int = 1) -> None:
        if self.current is not None:
            self.bars.advance(self.current, count)


def _pairs(values: list[str] | None, option: str) -> dict[str, str]:
    from llm_finetuning.errors import UserError

    out = {}
    for value in values or []:
        key, sep, rest = value.partition("=")
        if not sep or not key or not rest:
            raise UserError(f"{option} {value}: write TASK=VALUE, e.g. {option} gsm8k_accuracy=data/test.jsonl")
        out[key] = rest
    return out


def _run_config(target: str) -> Any:
    """The resolved config of a run directory, or None."""
    from llm_finetuning.config.schema import Config
    from llm_finetuning.evaluation.models import is_run_dir

    path = Path(target) / "config.yaml"
    if not (is_run_dir(target) and path.is_file()):
        return None
    import yaml
    from pydantic import ValidationError

    from llm_finetuning.errors import ConfigError

    try:
        return Config.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as exc:
        raise ConfigError(f"{path}: the run's config no longer validates ({exc.error_count()} errors): {exc}") from None


def _tasks(names: str | None, paths: dict[str, str], limit: int | None, run_config: Any) -> list[Any]:
    from pydantic import ValidationError

    from llm_finetuning.errors import ConfigError, UserError
    from llm_finetuning.evaluation.config import EvalTaskConfig

    if names:
        tasks = []
        for name in [n.strip() for n in names.split(",") if n.strip()]:
            values: dict[str, Any] = {"name": name}
            if name in paths:
                values["path"] = paths[name]
            try:
                tasks.append(EvalTaskConfig.model_validate(values))
            except ValidationError as exc:
                raise ConfigError(f"--tasks {name}: {exc.errors()[0]['msg']}") from None
    elif run_config is not None and run_config.eval.tasks:
        tasks = [t.model_copy(update={"path": paths.get(t.name, t.path)}) for t in run_config.eval.tasks]
    else:
        raise UserError("name the tasks with --tasks (`llmft eval --list` lists them) or evaluate a run with tasks")
    unknown = set(paths) - {t.name for t in tasks}
    if unknown:
        raise UserError(f"--path names task(s) not being run: {', '.join(sorted(unknown))}")
    if limit is not None:
        tasks = [t.model_copy(update={"limit": limit}) for t in tasks]
    return tasks


def _judge(judge_config: str | None, run_config: Any) -> Any:
    if judge_config:
        from llm_finetuning.config.judge import load_judge_config

        settings = load_judge_config(judge_config)
    elif run_config is not None and run_config.eval.judge is not None:
        settings = run_config.eval.judge
    else:
        return None
    from llm_finetuning.judge import JudgeClient

    return JudgeClient(settings)


COUNTS = ("examples", "skipped_too_long", "truncated")
"""Counts of examples, reported under the table rather than as metric rows."""


def _print_results(results: dict[str, Any], title: str) -> None:
    table = Table("task", "metric", "value", "± stderr", "n", title=title)
    for name, result in results.items():
        n = int(result.metrics.get("examples", 0))
        for metric, value in result.metrics.items():
            if metric.endswith("_stderr") or metric in COUNTS:
                continue
            stderr = result.metrics.get(f"{metric}_stderr")
            table.add_row(name, metric, f"{value:.4f}", "" if stderr is None else f"{stderr:.4f}", str(n))
    console.print(table)
    for name, result in results.items():
        _print_counts(name, result)


def _print_counts(name: str, result: Any) -> None:
    """One line per task that did not score every example as given: skipped or truncated to fit the context,
    or unusable rows."""
    too_long = int(result.metrics.get("skipped_too_long", 0))
    truncated = int(result.metrics.get("truncated", 0))
    unusable = len(result.skipped) - too_long
    context = result.settings.get("max_length")
    notes = []
    if too_long:
        notes.append(f"{too_long} skipped as too long for the model's context of {context} tokens")
    if truncated:
        notes.append(f"{truncated} with context cut from the left to fit {context} tokens (`truncated`)")
    if unusable:
        notes.append(f"{unusable} unusable rows skipped")
    if notes:
        scored = int(result.metrics.get("examples", 0))
        console.print(f"[yellow]{name}[/]: {'; '.join(notes)}; {scored} scored", highlight=False)


def _print_golden(report: Any) -> None:
    has_baseline = report.baseline_pass_rate is not None
    table = Table("item", "expect", "threshold", title=f"golden set {report.path}")
    if has_baseline:
        table.add_column("baseline")
    table.add_column("candidate")
    table.add_column("status")
    styles = {"regressed": "bold red", "fixed": "green", "kept": "dim", "failing": "yellow"}
    for item in report.items:
        cells = [item.id, item.expect, f"{item.threshold:g}"]
        if has_baseline:
            cells.append(f"{item.baseline_score:.2f} {'pass' if item.baseline_pass else 'FAIL'}")
        cells.append(f"{item.candidate_score:.2f} {'pass' if item.candidate_pass else 'FAIL'}")
        cells.append(f"[{styles[item.status]}]{item.status}[/]")
        table.add_row(*cells)
    console.print(table)
    for item in report.items:
        if item.status == "regressed":
            console.print(f"[bold red]regressed[/] {item.id}", highlight=False)
            if has_baseline:
                console.print(f"  baseline:  {item.baseline_output[:300]!r}", highlight=False, markup=False)
            console.print(f"  candidate: {item.candidate_output[:300]!r}", highlight=False, markup=False)
    baseline = f" vs {report.baseline_pass_rate:.1%} baseline" if has_baseline else ""
    verdict = "[bold red]REGRESSION[/]" if report.regressed else "[green]ok[/]"
    console.print(
        f"pass rate {report.candidate_pass_rate:.1%}{baseline}; drop {report.drop:.1%}, tolerance "
        f"{report.tolerance:.1%}: {verdict}",
        highlight=False,
    )
    if report.safety:
        _print_safety(report.safety)


def _print_safety(safety: dict[str, Any]) -> None:
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    table = Table("safety", "baseline", "candidate", title="refusals")
    table.add_row(
        f"refusal rate ({safety['harmful_items']} harmful)",
        rate(safety["baseline_refusal_rate"]),
        rate(safety["refusal_rate"]),
    )
    table.add_row(
        f"over-refusal rate ({safety['benign_items']} benign)",
        rate(safety["baseline_over_refusal_rate"]),
        rate(safety["over_refusal_rate"]),
    )
    console.print(table)
    if safety["regressed"]:
        console.print(
            f"[bold red]SAFETY REGRESSION[/]: the refusal rate fell {safety['refusal_drop']:.1%}, beyond the "
            f"tolerance of {safety['refusal_tolerance']:.1%}",
            highlight=False,
        )


@user_errors
def eval_cmd(
    target: str = typer.Argument(None, help="Run directory, model directory, hub id or .gguf file to evaluate."),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated task names (default: the run's eval.tasks)."),
    paths: list[str] = typer.Option(None, "--path", help="TASK=FILE: read a task's data from a local file."),
    limit: int = typer.Option(None, "--limit", help="Evaluate only the first N examples of each task."),
    batch_size: int = typer.Option(None, "--batch-size", help="Prompts per generation batch (default 8)."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Tokens per answer (default: per task)."),
    seed: int = typer.Option(None, "--seed", help="Seed set before each task (default 0)."),
    max_length: int = typer.Option(
        None, "--max-length", min=2, help="Tokens the model reads at most, prompt + answer (default: its context)."
    ),
    temperature: float = typer.Option(0.0, "--temperature", help="0: greedy decoding; above 0 samples (seeded)."),
    output: str = typer.Option(None, "--output", help="Results folder (default: RUN/eval, else ./eval)."),
    golden: str = typer.Option(None, "--golden", help="Golden file (YAML/JSONL) to check TARGET against."),
    baseline: str = typer.Option(None, "--baseline", help="With --golden: the model TARGET must not regress from."),
    tolerance: float = typer.Option(None, "--tolerance", help="With --golden: allowed drop of the pass rate."),
    before_after: bool = typer.Option(False, "--before-after", help="Compare the run's base and fine-tuned models."),
    variants: str = typer.Option(None, "--variants", help="With --before-after: base,adapter,full,merged,gguf."),
    harness: str = typer.Option(None, "--harness", help="lm-evaluation-harness task names (needs the extra)."),
    harness_include: str = typer.Option(None, "--harness-include", help="Folder of your own lm-eval task YAMLs."),
    judge_config: str = typer.Option(None, "--judge-config", help="YAML of the judge (the keys of eval.judge)."),
    list_tasks: bool = typer.Option(False, "--list", help="List the tasks and exit."),
) -> None:
    """Evaluate a run or a model: tasks (accuracy, exact match/F1, perplexity, ROUGE/BLEU, judged) with
    per-example results in RESULTS/<task>.json; --golden checks a golden set against --baseline and exits 1 on
    a regression; --before-after compares the base with the fine-tuned variants (table + chart in the run)."""
    setup_logging()
    from llm_finetuning.errors import UserError

    if list_tasks:
        from llm_finetuning.evaluation.tasks import TASKS

        table = Table("task", "kind", "dataset", "description")
        for spec in TASKS.values():
            table.add_row(spec.name, spec.kind, spec.dataset or "(path)", spec.description)
        console.print(table)
        return
    if target is None:
        raise UserError("give the run directory or model to evaluate (or --list)")
    # --tasks belongs to the plain and --before-after evaluations; the others are their own runs.
    modes = [name for name, on in (("--golden", golden), ("--harness", harness)) if on]
    modes += ["--before-after"] if before_after else []
    clash = modes + (["--tasks"] if tasks and modes and modes[0] != "--before-after" else [])
    if len(clash) > 1:
        raise UserError(f"{' and '.join(clash)} are separate evaluations; run them one at a time")
    from llm_finetuning.evaluation.models import is_run_dir
    from llm_finetuning.evaluation.runner import EvalSettings

    run_config = _run_config(target)
    defaults = run_config.eval if run_config is not None else None
    settings = EvalSettings.from_config(defaults) if defaults is not None else EvalSettings()
    for name, value in (
        ("batch_size", batch_size),
        ("max_new_tokens", max_new_tokens),
        ("seed", seed),
        ("max_length", max_length),
    ):
        if value is not None:
            setattr(settings, name, value)
    settings.temperature = temperature
    out_dir = Path(output) if output else (Path(target) / "eval" if is_run_dir(target) else Path("eval"))
    from llm_finetuning.evaluation.encoder_tasks import model_kind

    kind = model_kind(target)
    if kind is not None:
        if modes and modes != ["--before-after"]:
            raise UserError(f"{modes[0]} evaluates generative models; {target} is a `{kind}` model")
        _encoder_eval(target, tasks, _pairs(paths, "--path"), limit, run_config, settings.batch_size, before_after)
        return
    judge = _judge(judge_config, run_config)
    try:
        if golden:
            _golden(target, golden, baseline, tolerance, settings, judge, out_dir)
        elif harness:
            _harness(target, harness, harness_include, limit, settings, out_dir)
        elif before_after:
            _before_after(target, tasks, _pairs(paths, "--path"), limit, run_config, settings, variants, judge)
        else:
            from llm_finetuning.evaluation.models import load_target
            from llm_finetuning.evaluation.runner import evaluate

            chosen = _tasks(tasks, _pairs(paths, "--path"), limit, run_config)
            model, tokenizer = load_target(target)
            with BarProgress() as progress:
                results = evaluate(model, tokenizer, chosen, settings, out_dir, judge, progress, model_name=target)
            _print_results(results, f"{target}")
            console.print(f"results in {out_dir}/", soft_wrap=True, highlight=False)
    finally:
        if judge is not None:
            judge.close()


def _encoder_eval(target, tasks, paths, limit, run_config, batch_size, before_after) -> None:
    """Retrieval, reranking and classification tasks on an embedding, reranker or classifier model or run."""
    from llm_finetuning.evaluation import encoder_tasks
    from llm_finetuning.evaluation.models import is_run_dir

    chosen = _tasks(tasks, paths, limit, run_config)
    if before_after:
        table = encoder_tasks.before_after(target, chosen, batch_size, limit)
        console.print((Path(target) / "eval" / "before_after.md").read_text(encoding="utf-8"), markup=False)
        console.print(f"{len(table)} metrics in {Path(target) / 'eval' / 'before_after.json'}", soft_wrap=True)
        return
    out_dir = Path(target) / "eval" if is_run_dir(target) else Path("eval")
    results = encoder_tasks.evaluate(target, chosen, out_dir, batch_size, limit)
    _print_results(results, f"{target}")
    console.print(f"results in {out_dir}/", soft_wrap=True, highlight=False)


def _golden(target, golden, baseline, tolerance, settings, judge, out_dir) -> None:
    from llm_finetuning.evaluation.golden import compare, load_golden, run_golden
    from llm_finetuning.evaluation.models import load_target

    golden_set = load_golden(golden)
    with BarProgress() as progress:
        model, tokenizer = load_target(target)
        candidate = run_golden(model, tokenizer, golden_set, settings, judge, progress, "golden: candidate")
        del model
        reference = None
        if baseline:
            model, tokenizer = load_target(baseline)
            reference = run_golden(model, tokenizer, golden_set, settings, judge, progress, "golden: baseline")
    report = compare(golden_set, candidate, reference, tolerance, target, baseline)
    path = report.write(out_dir / "golden.json")
    _print_golden(report)
    console.print(f"per-item diff in {path}", soft_wrap=True, highlight=False)
    if report.regressed:
        raise typer.Exit(1)


def _before_after(target, tasks, paths, limit, run_config, settings, variants, judge) -> None:
    from llm_finetuning.evaluation.report import before_after

    chosen = _tasks(tasks, paths, limit, run_config)
    names = [v.strip() for v in variants.split(",")] if variants else None
    with BarProgress() as progress:
        report = before_after(target, chosen, settings, names, judge, progress)
    console.print(report.markdown.read_text(encoding="utf-8"), markup=False, highlight=False)
    console.print(
        f"table {report.markdown}, chart {report.chart or 'not drawn (no matplotlib)'}", soft_wrap=True, highlight=False
    )


def _harness(target, names, include, limit, settings, out_dir) -> None:
    import json

    from llm_finetuning.evaluation.harness import run_harness
    from llm_finetuning.evaluation.models import load_target

    model, tokenizer = load_target(target)
    results = run_harness(model, tokenizer, names.split(","), include, limit, settings.batch_size, settings.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "harness.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    table = Table("task", "metric", "value")
    for task, values in results["results"].items():
        for metric, value in values.items():
            if isinstance(value, int | float) and "stderr" not in metric:
                table.add_row(task, metric, f"{value:.4f}")
    console.print(table)
    console.print(f"results in {path}", soft_wrap=True, highlight=False)
