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
from llm_finetuning.evaluation.callback import TaskEvalCallback
from llm_finetuning.methods import METHODS
from llm_finetuning.models import fast_path
from llm_finetuning.models.adapters import apply_adapter, count_parameters, save_initial_adapter
from llm_finetuning.models.kernels import apply_liger
from llm_finetuning.models.loading import is_quantized, load_model, load_tokenizer, prepare_tokenizer
from llm_finetuning.models.packing import check_packing
from llm_finetuning.models.placement import place_model
from llm_finetuning.models.row_attention import prepare_rows
from llm_finetuning.models.unsloth_backend import check_unsloth
from llm_finetuning.runs import distributed
from llm_finetuning.runs.metrics import MetricsLogger, ProgressFile, read_metrics
from llm_finetuning.runs.plots import plot_metrics
from llm_finetuning.runs.progress import use_logged_progress
from llm_finetuning.runs.resume_totals import ElapsedTime, read_prior, restore_token_count, whole_run
from llm_finetuning.runs.rundir import (
    RunDir,
    create_run_dir,
    now,
    start_manifest,
    write_config,
    write_config_copy,
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
    distributed.init(config.distributed.timeout_minutes)
    main = distributed.is_main()  # in a multi-process run only the main process writes the run directory
    with distributed.main_first():
        if main:
            run = create_run_dir(config.output_dir, overwrite=overwrite, resume=resume)
            if resume:
                _warn_if_config_changed(run, config)
            write_config(run, config)
            start_manifest(run, config)
        else:
            run = RunDir(Path(config.output_dir))
    checkpoint = run.last_checkpoint() if resume else None
    stop = GracefulStop().install()
    try:
        result = _train(config, run, stop, checkpoint, callbacks or [])
    except KeyboardInterrupt:
        if main:
            write_manifest(run, status="interrupted", finished_at=now())
        raise
    except BaseException as exc:
        if main:
            write_manifest(run, status="failed", finished_at=now(), error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stop.uninstall()
        if main:
            plot_metrics(read_metrics(run.metrics), run.plots)
    if main:
        write_manifest(run, status=result.status, finished_at=now())
    return result


def _train(
    config: Config, run: RunDir, stop: GracefulStop, checkpoint: Any, extra_callbacks: list[TrainerCallback]
) -> TrainResult:
    method = METHODS[config.method.name]
    set_seed(config.training.seed)
    if method.runs_itself:
        callbacks = [MetricsLogger(run.metrics), ProgressFile(run.progress), stop, *extra_callbacks]
        with _tensorboard_dir(run.logs / "tensorboard"):
            outcome = method.train_run(config, run, stop, checkpoint, callbacks)
        return TrainResult(run, outcome.status, outcome.metrics)
    # The main process prepares first: it writes the data caches and the run directory the others then read.
    with distributed.main_first():
        model, tokenizer, data, changes, initial_adapter = _prepare(config, run, method)
    if stop.requested:
        return TrainResult(run, "interrupted")

    task_eval = TaskEvalCallback(config, run, tokenizer)  # eval.tasks during training, tasks + golden set after
    prior = read_prior(checkpoint) if checkpoint and (Path(checkpoint) / "trainer_state.json").is_file() else None
    elapsed = ElapsedTime((prior.seconds or 0.0) if prior else 0.0)
    callbacks = [MetricsLogger(run.metrics), ProgressFile(run.progress), stop, task_eval, elapsed, *extra_callbacks]
    model.config.use_cache = False  # a KV cache is useless in training and hides packed-sequence boundaries
    with _tensorboard_dir(run.logs / "tensorboard"):  # read when the trainer builds its callbacks
        trainer = method.build_trainer(config, run, model, tokenizer, data, callbacks)
        use_logged_progress(trainer)
        if prior is not None:
            restore_token_count(trainer, prior)
        output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    model.config.use_cache = True
    metrics: dict[str, Any] = dict(output.metrics)
    global_step = getattr(getattr(trainer, "state", None), "global_step", None)
    if prior is not None and isinstance(global_step, int):  # PPO's own loop keeps its totals itself
        metrics = whole_run(metrics, prior, global_step)
    if stop.requested:
        logger.warning("Training stopped by a signal; the last checkpoint is in %s", run.checkpoints)
        return TrainResult(run, "interrupted", metrics)
    if data.eval is not None:
        metrics.update(trainer.evaluate())
    if distributed.world_size() > 1 and config.distributed.strategy != "ddp":
        # Sharded weights: every process takes part in gathering them; the trainer writes one full model.
        trainer.save_model(str(run.final))
        if distributed.is_main():
            (run.final / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is saved as YAML
            tokenizer.save_pretrained(run.final)
            write_config_copy(config, run)
    elif distributed.is_main():
        save_final(config, run, trainer.model, tokenizer, bool(changes.added_tokens), initial_adapter)
    if distributed.is_main():
        if hasattr(trainer, "save_extras"):  # e.g. PPO's value head
            trainer.save_extras(run.final)
        metrics.update(task_eval.after_training(trainer.model, tokenizer))
        write_manifest(run, final_metrics=metrics)
    distributed.barrier()  # nobody leaves before `final/` is complete
    return TrainResult(run, "completed", metrics)


def _prepare(config: Config, run: RunDir, method: Any) -> tuple[Any, PreTrainedTokenizerBase, Any, Any, Path | None]:
    """Tokenizer, data, and the model with its adapter, ready for the trainer.

    The model is on its training device before anything runs it, and every check that runs it (packed rows keep
    examples apart) comes before Liger's kernels patch it.
    """
    path = fast_path.for_config(config)  # refuses what cannot run here (Liger without a GPU, fp16 on CPU, ...)
    check_unsloth(config)
    if distributed.is_main():
        fast_path.log_plan(path)
    tokenizer = load_tokenizer(config.model)
    changes = prepare_tokenizer(tokenizer, config.data.chat_template, require_template=method.needs_chat_template)
    data = method.prepare(config, tokenizer)
    main = distributed.is_main()
    if data.dropped_rows() and main:
        run.dropped_rows.write_text("\n".join(data.dropped_rows()) + "\n", encoding="utf-8")
    if data.clean_report is not None and main:
        data.clean_report.write(run.root / "clean_report.json")
        summary = {k: v for k, v in data.clean_report.to_dict().items() if k != "events"}
        write_manifest(run, clean=summary)
    if main:
        write_manifest(
            run,
            data={"fingerprints": data.fingerprints, "stats": data.stats_dict()},
            tokenizer={"added_tokens": changes.added_tokens, "notes": changes.notes},
            fast_path={what: choice for what, choice in path.lines()},
        )
    model, base_path = _load_base(config, run, tokenizer, method.head)
    place_model(model, config, path, quantized=is_quantized(model))
    model = apply_adapter(
        model,
        config.adapter,
        task_type="SEQ_CLS" if method.head == "sequence_classification" else "CAUSAL_LM",
        tokenizer_path=base_path,
        quantized=is_quantized(model),
        gradient_checkpointing=config.training.gradient_checkpointing,
        seed=config.training.seed,
    )
    if isinstance(model, PeftModel):
        # Point the adapter at a base model that exists, so `final/` loads with plain PEFT.
        model.peft_config["default"].base_model_name_or_path = base_path
    if config.method.name == "sft" and (config.data.packing or path.padding_free.value == "on"):
        prepare_rows(model, path)  # the plan's attention for rows of several examples, checked on the device
    if config.data.packing:
        check_packing(model, config.model.backend)
    apply_liger(model, config)
    initial_adapter = save_initial_adapter(model, config.adapter, run.root / "adapter_init") if main else None
    if main:
        write_manifest(run, parameters=count_parameters(model))
    return model, tokenizer, data, changes, initial_adapter


def _load_base(
    config: Config, run: RunDir, tokenizer: PreTrainedTokenizerBase, head: str
) -> tuple[PreTrainedModel, str]:
    """The model to adapt, and where its unmodified base lives (what `final/` adapters point at).

    A tiny model exists only in this process: it is saved to `base/` first, and reloaded from there when it must
    be quantized, exactly as a hub model would be.
    """
    if config.model.name != "tiny":
        return load_model(config.model, tokenizer, head, max_seq_length=config.data.max_length), config.model.name
    model = load_model(config.model.model_copy(update={"quantization": "none"}), tokenizer)
    if distributed.is_main():
        model.save_pretrained(run.base)
        tokenizer.save_pretrained(run.base)
    model.config._name_or_path = str(
        run.base.resolve()
    )  # where trainers that reload the start (GRPO's reference) find it
    if config.model.quantization != "none" or head != "causal_lm":
        model = load_model(config.model.model_copy(update={"name": str(run.base)}), tokenizer, head)
    return model, str(run.base.resolve())


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


def save_final(
    config: Config,
    run: RunDir,
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    grew_vocab: bool = False,
    initial_adapter: Path | None = None,
) -> None:
    """Write the adapter or full model, the tokenizer and the config that made them into `final/`."""
    run.final.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        # Added tokens change the embedding matrices; save them with the adapter so it loads consistently.
        # PiSSA/OLoRA adapters are converted to a plain LoRA relative to the original (unmodified) base.
        model.save_pretrained(
            run.final,
            save_embedding_layers=True if grew_vocab else "auto",
            path_initial_model_for_weight_conversion=str(initial_adapter) if initial_adapter else None,
        )
    else:
        model.save_pretrained(run.final, safe_serialization=True)
    tokenizer.save_pretrained(run.final)
    write_config_copy(config, run)
    logger.info("Saved the final %s to %s", "adapter" if isinstance(model, PeftModel) else "model", run.final)


def _warn_if_config_changed(run: RunDir, config: Config) -> None:
    if not run.config.is_file():
        return
    before = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    after = config.model_dump(mode="json")
    changed = [key for key in after if before.get(key) != after.get(key)]
    if changed:
        logger.warning("Resuming with a config that differs from the run's in: %s", ", ".join(changed))
