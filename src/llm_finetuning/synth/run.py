"""One `llmft data generate` run: read the config, ask the teacher, clean the rows, write them and the report.

Nothing is asked before everything that can be checked is: the config, the input rows, the constitution, the
reward's reference columns and the output paths (an existing output stops the run unless `overwrite`). Output
files are written whole or not at all. The report (`<output>.report.json`) holds the task's counts with every
reason a candidate was dropped, the cleaning steps, the requests, cache hits, token counts and the cost.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llm_finetuning.config.errors import format_validation_error
from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.config.loading import load_raw
from llm_finetuning.data.clean import clean_records, default_text_of
from llm_finetuning.data.convert import write_rows
from llm_finetuning.data.reading import Row, read_rows
from llm_finetuning.errors import ConfigError, DataError, UserError
from llm_finetuning.judge.client import JudgeClient
from llm_finetuning.synth.common import TaskStats, Teacher, read_prompts
from llm_finetuning.synth.config import GenerateConfig

logger = logging.getLogger(__name__)

_PATH_FIELDS = ("seed_tasks", "prompts", "constitution", "preference_output")


def load_generate_config(path: str | Path, overrides: dict[str, Any] | None = None) -> GenerateConfig:
    """The config of a generation run, from its file or a shipped recipe's name; file paths in it are relative to
    the file, except a recipe's `output`, which is relative to the working directory (as a training recipe's
    `output_dir` is). Errors name file and line."""
    from llm_finetuning.config.loading import resolve_config_path

    resolved = resolve_config_path(path)
    raw, locations = load_raw(resolved)
    recipe = not Path(path).exists()
    return generate_config_from(raw, locations, resolved.resolve().parent, overrides, Path.cwd() if recipe else None)


def generate_config_from(
    raw: dict[str, Any], locations: dict, base: Path, overrides: dict[str, Any] | None = None,
    output_base: Path | None = None,
) -> GenerateConfig:  # fmt: skip
    """Validate a generation config already read (from its file, or inline in a stages file); its file paths
    are made relative to `base` (`output` to `output_base` when given)."""
    for key, value in (overrides or {}).items():
        raw[key] = value
    task = raw.get("task")
    if isinstance(task, dict):
        for key in _PATH_FIELDS:
            if isinstance(task.get(key), str) and not task[key].startswith("builtin:"):
                folder = output_base if key == "preference_output" and output_base else base
                task[key] = str(folder / task[key])
    if isinstance(raw.get("output"), str):
        raw["output"] = str((output_base or base) / raw["output"])
    clean = raw.get("clean")
    if isinstance(clean, dict) and isinstance(clean.get("against"), list):
        clean["against"] = [str(base / p) if isinstance(p, str) else p for p in clean["against"]]
    try:
        return GenerateConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, locations, GenerateConfig)) from None


@dataclass
class GenerateResult:
    outputs: dict[str, str]
    """`rows` (and `preference` where the task writes pairs): file -> path."""
    report: dict[str, Any] = field(default_factory=dict)
    report_path: str = ""


def preference_path(config: GenerateConfig) -> Path | None:
    """Where the task's preference rows go, if it writes any."""
    task = config.task
    if task.name == "constitutional":
        if task.preference_output:
            return Path(task.preference_output)
        out = Path(config.output)
        return out.with_name(f"{out.name.split('.')[0]}.preference.jsonl")
    if task.name == "distill" and task.preference_output:
        return Path(task.preference_output)
    return None


def _text_of(row: dict[str, Any]) -> str:
    # Provenance is about the row, not in it: it must not make two identical rows look different.
    return default_text_of({k: v for k, v in row.items() if k != "provenance"})


def _eval_texts(paths: list[str]) -> dict[str, str]:
    texts = {}
    for path in paths:
        for item in read_rows(path):
            if isinstance(item, DataError):
                raise item
            if isinstance(item, Row):
                texts[item.where] = default_text_of(item.data)
    return texts


def _judge_for_scoring(config: GenerateConfig) -> JudgeConfig:
    task = config.task
    if task.score is not None and task.score.judge is not None:
        return task.score.judge
    # The teacher grades its own samples, deterministically and briefly.
    values = config.teacher.model_dump()
    values.update(temperature=0.0, max_tokens=256, timeout_s=60.0)
    return JudgeConfig.model_validate(values)


def generate_data(config: GenerateConfig, cache_dir: str | Path | None = None) -> GenerateResult:
    """Run the task of `config` and write its files; returns their paths and the report."""
    started = time.perf_counter()
    task = config.task
    outputs = {"rows": Path(config.output)}
    pairs_path = preference_path(config)
    if pairs_path is not None:
        outputs["preference"] = pairs_path
    if not config.overwrite:
        for path in outputs.values():
            if path.exists():
                raise UserError(f"{path} exists; set `overwrite: true` (or pass --overwrite) to replace it")
    source = task.seed_tasks if task.name == "self_instruct" else task.prompts
    rows = read_prompts(source, config.max_rows, "task.seed_tasks" if task.name == "self_instruct" else "task.prompts")
    eval_texts = _eval_texts(config.clean.against) if config.clean.enabled else {}
    stats = TaskStats()
    clients: dict[str, JudgeClient] = {}
    try:
        clients["teacher"] = JudgeClient(config.teacher, cache_dir=cache_dir)
        teacher = Teacher(clients["teacher"], stats)
        produced, pairs = _run_task(config, teacher, rows, stats, clients, cache_dir)
        usage = {name: client.stats.snapshot() for name, client in clients.items()}
    finally:
        for client in clients.values():
            client.close()
    written: dict[str, Any] = {}
    clean_reports: dict[str, Any] = {}
    for name, records in (("rows", produced), ("preference", pairs)):
        if name not in outputs:
            continue
        if config.clean.enabled:
            result = clean_records(records, config.clean, text_of=_text_of, eval_texts=eval_texts or None)
            report_path = outputs[name].with_name(outputs[name].name + ".clean_report.json")
            result.report.write(report_path)
            clean_reports[name] = {"in": len(records), "out": len(result.records), "report": str(report_path)}
            records = result.records
        written[name] = records
    report = _report(config, stats, usage, clean_reports, written, outputs, time.perf_counter() - started)
    report_path = outputs["rows"].with_name(outputs["rows"].name + ".report.json")
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if not written["rows"]:
        cleaned = f", {len(produced)} removed by cleaning" if produced else ""
        raise DataError(
            f"no rows were kept ({json.dumps(dict(stats.dropped))} dropped, {stats.failed_requests} failed "
            f"requests{cleaned}); nothing written. The report is in {report_path}"
        )
    for name, records in written.items():
        _write_whole(records, outputs[name])
    logger.info("generated %d rows -> %s", len(written["rows"]), outputs["rows"])
    return GenerateResult({k: str(v) for k, v in outputs.items()}, report, str(report_path))


def _run_task(
    config: GenerateConfig, teacher: Teacher, rows: list, stats: TaskStats, clients: dict[str, JudgeClient],
    cache_dir: str | Path | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:  # fmt: skip
    task = config.task
    if task.name == "self_instruct":
        from llm_finetuning.synth.self_instruct import run_self_instruct

        return run_self_instruct(task, teacher, rows, config.seed, stats), []
    if task.name == "evol_instruct":
        from llm_finetuning.synth.evol import run_evol_instruct

        return run_evol_instruct(task, teacher, rows, config.seed, stats), []
    if task.name == "multi_turn":
        from llm_finetuning.synth.multi_turn import run_multi_turn

        return run_multi_turn(task, teacher, rows, config.seed, stats), []
    if task.name == "distill":
        from llm_finetuning.synth.distill import check_columns, make_scorer, run_distill

        scorer = None
        if task.score is not None:
            needs_judge = task.score.rubric is not None or _is_judged(task.score.reward)
            if needs_judge:
                clients["judge"] = JudgeClient(_judge_for_scoring(config), cache_dir=cache_dir)
            scorer = make_scorer(task.score, clients.get("judge"))
            check_columns(scorer, rows)
        return run_distill(task, teacher, rows, scorer, stats)
    from llm_finetuning.synth.constitutional import load_constitution, run_constitutional

    load_constitution(task.constitution)  # a bad constitution stops the run before any request
    model = teacher
    if task.model is not None:
        clients["model"] = JudgeClient(task.model, cache_dir=cache_dir)
        model = Teacher(clients["model"], stats)
    return run_constitutional(task, model, rows, config.seed, stats)


def _is_judged(reward: str | None) -> bool:
    from llm_finetuning.rewards.registry import get_reward

    return reward is not None and get_reward(reward).kind == "judge"


def _report(
    config: GenerateConfig, stats: TaskStats, usage: dict[str, dict[str, int]], clean: dict[str, Any],
    written: dict[str, list], outputs: dict[str, Path], seconds: float,
) -> dict[str, Any]:  # fmt: skip
    teacher = usage.get("teacher", {})
    prompt_tokens, completion_tokens = teacher.get("prompt_tokens", 0), teacher.get("completion_tokens", 0)
    cost = (
        prompt_tokens * config.pricing.input_per_million + completion_tokens * config.pricing.output_per_million
    ) / 1e6
    return {
        "task": config.task.name,
        "teacher": config.teacher.model,
        **stats.as_dict(),
        "written": {name: len(records) for name, records in written.items()},
        "outputs": {name: str(path) for name, path in outputs.items()},
        "clean": clean or "disabled",
        "requests": usage,
        "tokens": {"prompt": prompt_tokens, "completion": completion_tokens},
        "cost": round(cost, 6),
        "seconds": round(seconds, 3),
    }


def _write_whole(records: list[dict[str, Any]], path: Path) -> None:
    partial = path.with_name(path.name + ".partial" + "".join(path.suffixes[-2:]))
    write_rows(records, partial)
    partial.replace(path)  # a crash never leaves half a file under the final name
