"""Chained stages in one file (sft -> reward -> ppo, sft -> dpo): each stage starts from an earlier stage's run.

```yaml
output_dir: runs/rlhf
stages:
  - {name: sft, config: sft.yaml}
  - {name: dpo, config: dpo.yaml, from: sft}   # `from` defaults to the previous stage
```
A PPO stage names the stage that trained its reward model with `reward_from: <stage>`.

Every stage gets its own run directory `<output_dir>/<name>`; a stage that does not complete stops the chain,
and every run directory stays as it is. `stages.json` in `output_dir` records what ran.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llm_finetuning.config.errors import format_validation_error
from llm_finetuning.config.loading import load_raw
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.runs.rundir import now

logger = logging.getLogger(__name__)


@dataclass
class StageResult:
    name: str
    run_dir: str
    status: str
    started_from: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def is_stages_file(path: str | Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "stages" in data


def _stage_specs(path: Path) -> tuple[Path, list[dict[str, Any]]]:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(data) - {"stages", "output_dir"}
    if unknown:
        raise ConfigError(
            f"{path}: a stages file has only `stages` and `output_dir`; remove {', '.join(sorted(unknown))}"
        )
    stages = data["stages"]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"{path}: `stages` must be a non-empty list of {{name, config, from}}")
    names: list[str] = []
    for index, stage in enumerate(stages):
        if (
            not isinstance(stage, dict)
            or set(stage) - {"name", "config", "from", "reward_from"}
            or "config" not in stage
        ):
            raise ConfigError(
                f"{path}: stages[{index}] must be a mapping with `name`, `config`, optional `from` and `reward_from`"
            )
        stage.setdefault("name", f"stage{index + 1}")
        if stage["name"] in names:
            raise ConfigError(f"{path}: stage name `{stage['name']}` is used twice")
        source = stage.get("from", names[-1] if names else None)
        if source is not None and source not in names:
            raise ConfigError(f"{path}: stages[{index}].from: `{source}` is not an earlier stage ({', '.join(names)})")
        stage["from"] = source
        if stage.get("reward_from") is not None and stage["reward_from"] not in names:
            raise ConfigError(f"{path}: stages[{index}].reward_from: `{stage['reward_from']}` is not an earlier stage")
        names.append(stage["name"])
    return Path(data.get("output_dir") or Path("runs") / path.stem), stages


def starting_model(run_dir: Path) -> Path:
    """A full model directory for the next stage: `final/` itself, or the adapter merged into its base."""
    from llm_finetuning.export.lora_merge import merge_run

    result = merge_run(run_dir)
    logger.info("%s", result.message)
    return result.path


def _stage_config(spec: dict[str, Any], base_dir: Path, output_dir: Path, start: Path | None) -> Config:
    raw, locations = load_raw(base_dir / spec["config"])
    raw["output_dir"] = str(output_dir / spec["name"])
    if spec.get("reward_from"):
        raw.setdefault("method", {})["reward_model"] = str(output_dir / spec["reward_from"])
    if start is not None:
        model = {k: v for k, v in raw.get("model", {}).items() if k != "tiny"}
        raw["model"] = {**model, "name": str(start), "tokenizer": str(start)}
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, locations)) from None


def run_stages(path: str | Path, overwrite: bool = False) -> list[StageResult]:
    """Run every stage in order; stop at the first that does not complete (its directory is kept)."""
    from llm_finetuning.train import train

    path = Path(path).resolve()
    output_dir, specs = _stage_specs(path)
    # Validate every stage that does not depend on an earlier result before running anything.
    for spec in specs:
        _stage_config(spec, path.parent, output_dir, None if spec["from"] is None else Path("<earlier stage>"))
    output_dir.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []
    runs: dict[str, Path] = {}
    for spec in specs:
        start = starting_model(runs[spec["from"]]) if spec["from"] else None
        config = _stage_config(spec, path.parent, output_dir, start)
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
