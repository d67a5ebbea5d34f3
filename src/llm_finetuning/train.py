"""The training path every method shares: config -> data -> model + adapter -> trainer -> run directory."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, set_seed

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import prepare_data
from llm_finetuning.methods import TRAINER_BUILDERS
from llm_finetuning.models.adapters import apply_adapter, count_parameters
from llm_finetuning.models.loading import load_model, load_tokenizer, prepare_tokenizer
from llm_finetuning.runs.metrics import MetricsLogger, read_metrics
from llm_finetuning.runs.plots import plot_metrics
from llm_finetuning.runs.rundir import (
    RunDir,
    create_run_dir,
    now,
    start_manifest,
    write_config,
    write_manifest,
)
from llm_finetuning.runs.signals import GracefulStop

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run: RunDir
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)


def train(
    config: Config,
    overwrite: bool = False,
    resume: bool = False,
    callbacks: list[TrainerCallback] | None = None,
) -> TrainResult:
    """Run one training job described by `config`; the run directory records everything about it.

    `callbacks` are extra transformers `TrainerCallback`s (progress hooks, custom logging, tests).
    """
    run = create_run_dir(config.output_dir, overwrite=overwrite, resume=resume)
    checkpoint = run.last_checkpoint() if resume else None
    if resume:
        _warn_if_config_changed(run, config)
    write_config(run, config)
    start_manifest(run, config)
    stop = GracefulStop().install()
    try:
        result = _train(config, run, stop, checkpoint, callbacks or [])
    except KeyboardInterrupt:
        write_manifest(run, status="interrupted", finished_at=now())
        raise
    except BaseException as exc:
        write_manifest(run, status="failed", finished_at=now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stop.uninstall()
        plot_metrics(read_metrics(run.metrics), run.plots)
    write_manifest(run, status=result.status, finished_at=now())
    return result


def _train(
    config: Config, run: RunDir, stop: GracefulStop, checkpoint: Any, extra_callbacks: list[TrainerCallback]
) -> TrainResult:
    set_seed(config.training.seed)
    tokenizer = load_tokenizer(config.model)
    changes = prepare_tokenizer(tokenizer, config.data.chat_template)
    data = prepare_data(config.data, tokenizer, config.method.train_on_prompt, config.training.seed)
    write_manifest(
        run,
        data={"fingerprints": data.fingerprints, "stats": data.stats_dict()},
        tokenizer={"added_tokens": changes.added_tokens, "notes": changes.notes},
    )
    model = load_model(config.model, tokenizer)
    base_path = _save_base_if_needed(config, run, model, tokenizer)
    model = apply_adapter(model, config.adapter)
    if isinstance(model, PeftModel):
        # Point the adapter at a base model that exists, so `final/` loads with plain PEFT.
        model.peft_config["default"].base_model_name_or_path = base_path
    write_manifest(run, parameters=count_parameters(model))
    if stop.requested:
        return TrainResult(run, "interrupted")

    callbacks = [MetricsLogger(run.metrics), stop, *extra_callbacks]
    with _tensorboard_dir(run.logs / "tensorboard"):  # read when the trainer builds its callbacks
        trainer = TRAINER_BUILDERS[config.method.name](config, run, model, tokenizer, data, callbacks)
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics: dict[str, Any] = dict(output.metrics)
    if stop.requested:
        logger.warning("Training stopped by a signal; the last checkpoint is in %s", run.checkpoints)
        return TrainResult(run, "interrupted", metrics)
    if data.eval is not None:
        metrics.update(trainer.evaluate())
    save_final(config, run, trainer.model, tokenizer, grew_vocab=bool(changes.added_tokens))
    write_manifest(run, final_metrics=metrics)
    return TrainResult(run, "completed", metrics)


@contextmanager
def _tensorboard_dir(path: Path) -> Iterator[None]:
    """transformers' TensorBoard callback reads its log folder from the environment; scope it to this run."""
    previous = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous


def _save_base_if_needed(
    config: Config, run: RunDir, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> str:
    """A tiny model exists only in this process; save it so adapters in `final/` have a base to load."""
    if config.model.name != "tiny":
        return config.model.name
    model.save_pretrained(run.base)
    tokenizer.save_pretrained(run.base)
    return str(run.base.resolve())


def save_final(
    config: Config, run: RunDir, model: Any, tokenizer: PreTrainedTokenizerBase, grew_vocab: bool = False
) -> None:
    """Write the adapter or full model, the tokenizer and the config that made them into `final/`."""
    run.final.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        # Added tokens change the embedding matrices; save them with the adapter so it loads consistently.
        model.save_pretrained(run.final, save_embedding_layers=True if grew_vocab else "auto")
    else:
        model.save_pretrained(run.final, safe_serialization=True)
    tokenizer.save_pretrained(run.final)
    with (run.final / "llmft_config.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(config.model_dump(mode="json"), handle, sort_keys=False)
    logger.info("Saved the final %s to %s", "adapter" if isinstance(model, PeftModel) else "model", run.final)


def _warn_if_config_changed(run: RunDir, config: Config) -> None:
    if not run.config.is_file():
        return
    before = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    after = config.model_dump(mode="json")
    changed = [key for key in after if before.get(key) != after.get(key)]
    if changed:
        logger.warning("Resuming with a config that differs from the run's in: %s", ", ".join(changed))
