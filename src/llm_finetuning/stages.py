"""Chained stages in one file (sft -> reward -> ppo, generate -> sft -> dpo): each training stage starts from an
earlier stage's run, and may train on the rows a generation stage wrote.

```yaml
output_dir: runs/cai
stages:
  - {name: data, generate: cai_generate.yaml}            # `llmft data generate` as a stage
  - {name: sft, config: sft.yaml, data_from: data}        # trains on data's SFT rows
  - {name: dpo, config: dpo.yaml, from: sft, data_from: data}   # on data's preference pairs, from sft's model
```
`config` and `generate` are a path (relative to this file) or the config itself, written inline. `from` defaults
to the previous training stage. A PPO stage names the stage that trained its reward model with
`reward_from: <stage>`. `data_from: <generate stage>` replaces `data.train` with that stage's rows: its
preference pairs for `dpo`, `orpo` and `reward`, its conversations (`format: messages`) otherwise.

Every stage gets its own directory `<output_dir>/<name>` (a generation stage writes its files there, under the
file names its config gives); a stage that does not complete stops the chain, and every directory stays as it
is. `stages.json` in `output_dir` records what ran.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llm_finetuning.config.errors import format_validation_error
from llm_finetuning.config.loading import Locations, load_raw, load_raw_mapping
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.runs.rundir import now

logger = logging.getLogger(__name__)

_KEYS = {"name", "config", "generate", "from", "reward_from", "data_from"}
PREFERENCE_METHODS = ("dpo", "orpo", "reward")
MESSAGES_METHODS = ("sft",)


@dataclass
class StageResult:
    name: str
    run_dir: str
    status: str
    started_from: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    """A generation stage's files: `rows` (and `preference`)."""


def _resolve(path: str | Path) -> Path:
    """A stages file, or the shipped recipe of that name."""
    from llm_finetuning.config.loading import resolve_config_path

    return Path(path) if Path(path).exists() else resolve_config_path(path)


def is_stages_file(path: str | Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(_resolve(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, ConfigError):
        return False
    return isinstance(data, dict) and "stages" in data


def _stage_specs(path: Path) -> tuple[Path, list[dict[str, Any]], Locations]:
    from llm_finetuning.config.loading import _read_yaml

    data, locations = _read_yaml(path)
    unknown = set(data) - {"stages", "output_dir"}
    if unknown:
        raise ConfigError(
            f"{path}: a stages file has only `stages` and `output_dir`; remove {', '.join(sorted(unknown))}"
        )
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}: `stages` must be a non-empty list of {{name, config, from}}")
    names: list[str] = []
    trained: list[str] = []
    generated: list[str] = []
    for index, stage in enumerate(stages):
        where = locations.get(("stages", index), str(path))
        if not isinstance(stage, dict) or set(stage) - _KEYS or ("config" in stage) == ("generate" in stage):
            raise ConfigError(
                f"{where}: stages[{index}] must be a mapping with `name` and either `config` (a training run) or "
                "`generate` (a data-generation run); optional `from`, `reward_from`, `data_from`"
            )
        stage.setdefault("name", f"stage{index + 1}")
        if stage["name"] in names:
            raise ConfigError(f"{where}: stage name `{stage['name']}` is used twice")
        if "generate" in stage:
            extra = sorted(set(stage) & {"from", "reward_from", "data_from"})
            if extra:
                raise ConfigError(f"{where}: a `generate` stage trains nothing; remove {', '.join(extra)}")
            generated.append(stage["name"])
            names.append(stage["name"])
            continue
        source = stage.get("from", trained[-1] if trained else None)
        if source is not None and source not in trained:
            raise ConfigError(
                f"{where}: stages[{index}].from: `{source}` is not an earlier training stage "
                f"({', '.join(trained) or 'none'})"
            )
        stage["from"] = source
        if stage.get("reward_from") is not None and stage["reward_from"] not in trained:
            raise ConfigError(f"{where}: stages[{index}].reward_from: `{stage['reward_from']}` is not an earlier stage")
        if stage.get("data_from") is not None and stage["data_from"] not in generated:
            raise ConfigError(
                f"{where}: stages[{index}].data_from: `{stage['data_from']}` is not an earlier `generate` stage "
                f"({', '.join(generated) or 'none'})"
            )
        names.append(stage["name"])
        trained.append(stage["name"])
    return Path(data.get("output_dir") or Path("runs") / path.stem), stages, locations


def stage_names(path: str | Path) -> list[str]:
    """The names of a stages file's stages, with what each does (`data (generate)`), for listings."""
    _, specs, _ = _stage_specs(_resolve(path))
    return [f"{spec['name']} (generate)" if "generate" in spec else spec["name"] for spec in specs]


def _read_part(
    spec: dict[str, Any], key: str, index: int, base_dir: Path, locations: Locations
) -> tuple[dict[str, Any], Locations, Path]:
    """A stage's config: from its file, or written inline (with the stages file's locations)."""
    value = spec[key]
    if isinstance(value, str):
        path = base_dir / value
        raw, where = load_raw(path)
        return raw, where, path.resolve().parent
    if isinstance(value, dict):
        prefix = ("stages", index, key)
        inline = {k[len(prefix) :]: v for k, v in locations.items() if k[: len(prefix)] == prefix}
        raw, where = load_raw_mapping(value, base_dir, inline)
        return raw, where, base_dir
    raise ConfigError(f"stages[{index}].{key}: a path to a YAML file, or the config itself as a mapping")


def starting_model(run_dir: Path) -> Path:
    """A full model directory for the next stage: `final/` itself, or the adapter merged into its base."""
    from llm_finetuning.export.lora_merge import merge_run

    result = merge_run(run_dir)
    logger.info("%s", result.message)
    return result.path


def _generate_config(spec: dict[str, Any], index: int, base_dir: Path, output_dir: Path, locations: Locations,
                     overwrite: bool) -> Any:  # fmt: skip
    """The generation config of a stage, its files moved into the stage's directory."""
    from llm_finetuning.synth.run import generate_config_from

    raw, where, base = _read_part(spec, "generate", index, base_dir, locations)
    config = generate_config_from(raw, where, base)
    stage_dir = output_dir / spec["name"]
    updates: dict[str, Any] = {"output": str(stage_dir / Path(config.output).name)}
    if overwrite:
        updates["overwrite"] = True
    task = config.task
    if getattr(task, "preference_output", None):
        task = task.model_copy(update={"preference_output": str(stage_dir / Path(task.preference_output).name)})
        updates["task"] = task
    return config.model_copy(update=updates)


def _generated_files(config: Any) -> dict[str, str]:
    from llm_finetuning.synth.run import preference_path

    files = {"rows": config.output}
    pairs = preference_path(config)
    if pairs is not None:
        files["preference"] = str(pairs)
    return files


def _training_data(spec: dict[str, Any], raw: dict[str, Any], files: dict[str, str]) -> None:
    """Point `data.train` at the rows of the generation stage `data_from` names."""
    method = (raw.get("method") or {}).get("name", "sft") if isinstance(raw.get("method"), dict) else "sft"
    if method in PREFERENCE_METHODS:
        kind, fmt = "preference", "preference"
    elif method in MESSAGES_METHODS:
        kind, fmt = "rows", "messages"
    else:
        raise ConfigError(
            f"stage `{spec['name']}`: data_from gives conversations (sft) or preference pairs "
            f"({', '.join(PREFERENCE_METHODS)}); method `{method}` trains on neither"
        )
    if kind not in files:
        raise ConfigError(
            f"stage `{spec['name']}`: `{spec['data_from']}` writes no preference pairs for method `{method}`; set "
            "its task's `preference_output` (distill) or use a constitutional task"
        )
    data = raw.setdefault("data", {})
    if not isinstance(data, dict):
        raise ConfigError(f"stage `{spec['name']}`: `data` must be a mapping")
    data["train"] = {"path": files[kind], "format": fmt}


def _stage_config(
    spec: dict[str, Any], index: int, base_dir: Path, output_dir: Path, start: Path | None, locations: Locations,
    files: dict[str, dict[str, str]],
) -> Config:  # fmt: skip
    raw, where, _ = _read_part(spec, "config", index, base_dir, locations)
    raw["output_dir"] = str(output_dir / spec["name"])
    if spec.get("reward_from"):
        raw.setdefault("method", {})["reward_model"] = str(output_dir / spec["reward_from"])
    if spec.get("data_from"):
        _training_data(spec, raw, files[spec["data_from"]])
    if start is not None:
        model = {k: v for k, v in raw.get("model", {}).items() if k != "tiny"}
        raw["model"] = {**model, "name": str(start), "tokenizer": str(start)}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where)) from None


def run_stages(path: str | Path, overwrite: bool = False) -> list[StageResult]:
    """Run every stage in order; stop at the first that does not complete (its directory is kept)."""
    from llm_finetuning.synth.run import generate_data
    from llm_finetuning.train import train

    path = _resolve(path).resolve()
    output_dir, specs, locations = _stage_specs(path)
    # Validate every stage before running anything (a stage built on an earlier one gets a placeholder model).
    files: dict[str, dict[str, str]] = {}
    generation: dict[str, Any] = {}
    for index, spec in enumerate(specs):
        if "generate" in spec:
            generation[spec["name"]] = _generate_config(spec, index, path.parent, output_dir, locations, overwrite)
            files[spec["name"]] = _generated_files(generation[spec["name"]])
        else:
            placeholder = None if spec["from"] is None else Path("<earlier stage>")
            _stage_config(spec, index, path.parent, output_dir, placeholder, locations, files)
    output_dir.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    runs: dict[str, Path] = {}
    for index, spec in enumerate(specs):
        if "generate" in spec:
            stage_dir = output_dir / spec["name"]
            result = StageResult(spec["name"], str(stage_dir), "failed")
            results.append(result)
            logger.info("stage %s: data generation (%s) -> %s", spec["name"], generation[spec["name"]].task.name,
                        stage_dir)  # fmt: skip
            try:
                generated = generate_data(generation[spec["name"]])
                result.status, result.outputs = "completed", generated.outputs
                result.metrics = {k: generated.report[k] for k in ("rows", "written", "dropped", "tokens", "cost")}
            finally:
                _write_summary(output_dir, path, results)
            continue
        start = starting_model(runs[spec["from"]]) if spec["from"] else None
        config = _stage_config(spec, index, path.parent, output_dir, start, locations, files)
        logger.info("stage %s: %s -> %s", spec["name"], config.method.name, config.output_dir)
        result = StageResult(spec["name"], config.output_dir, "failed", str(start) if start else None)
        results.append(result)
        try:
            outcome = train(config, overwrite=overwrite)
            result.status, result.metrics = outcome.status, outcome.metrics
        finally:
            _write_summary(output_dir, path, results)
        runs[spec["name"]] = Path(config.output_dir)
        if result.status != "completed":
            raise UserError(
                f"stage `{spec['name']}` ended {result.status}; the chain stopped. Run directories are kept in "
                f"{output_dir}."
            )
    return results


def _write_summary(output_dir: Path, source: Path, results: list[StageResult]) -> None:
    summary = {"stages_file": str(source), "updated_at": now(), "stages": [vars(r) for r in results]}
    (output_dir / "stages.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
