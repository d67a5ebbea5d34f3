"""What the embedding, reranker, classify and multi-head methods share: their rows, their starting model, the adapter,
the trainer arguments and the run that drives their trainer.

These methods do not tokenize conversations with a chat template: sentence-transformers and transformers'
sequence classifiers tokenize plain texts themselves. So they run their own short path (`train_run`) inside the
run directory that `train()` sets up, with the same manifest, metrics log, checkpoints and signals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PreTrainedModel, Trainer, TrainerCallback
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

from llm_finetuning.config.schema import Config, DataSource
from llm_finetuning.data.pipeline import SplitStats, load_records, split_eval
from llm_finetuning.data.reading import source_fingerprint
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.models.adapters import count_parameters, freeze_except, peft_config
from llm_finetuning.models.loading import load_tokenizer, prepare_tokenizer
from llm_finetuning.runs.rundir import RunDir, write_config_copy, write_manifest

logger = logging.getLogger(__name__)

ADAPTERS = ("full", "freeze", "lora", "dora")
Rows = list[tuple[str, dict[str, Any]]]


@dataclass
class Outcome:
    """How an encoder run ended and what it measured."""

    status: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncoderData:
    """The rows of each split as (where, record) pairs, with what happened to them."""

    train: Rows
    eval: Rows
    stats: dict[str, SplitStats]
    fingerprints: dict[str, str]

    def record_in_manifest(self, run: RunDir) -> None:
        write_manifest(
            run,
            data={
                "fingerprints": self.fingerprints,
                "stats": {name: {**vars(s), "bad_rows": s.bad_rows[:5]} for name, s in self.stats.items()},
            },
        )
        dropped = [f"{name}: {message}" for name, split in self.stats.items() for message in split.bad_rows]
        if dropped:
            run.dropped_rows.write_text("\n".join(dropped) + "\n", encoding="utf-8")


def check_adapter(config: Config) -> None:
    """These models train fully, by freezing, or with LoRA/DoRA; nothing else is wired for them."""
    if config.adapter.method not in ADAPTERS:
        raise ConfigError(
            f"adapter.method: `{config.adapter.method}` is not available with `method: {config.method.name}`; use "
            f"one of {', '.join(ADAPTERS)}."
        )
    if config.model.quantization != "none":
        raise ConfigError(
            f"model.quantization: `{config.model.quantization}` is not available with `method: {config.method.name}` "
            "(these models are small enough to train in bf16/fp32); remove it."
        )
    if config.data.packing:
        raise ConfigError(f"data.packing: `method: {config.method.name}` trains on separate texts; remove it.")
    from llm_finetuning.evaluation.encoder_tasks import KINDS
    from llm_finetuning.evaluation.tasks import TASKS

    wrong = [t.name for t in config.eval.tasks if KINDS.get(TASKS[t.name].kind) != config.method.name]
    if wrong or config.eval.golden is not None:
        names = ", ".join(wrong) or "eval.golden"
        fitting = [name for name, spec in TASKS.items() if KINDS.get(spec.kind) == config.method.name]
        raise ConfigError(
            f"eval.tasks: {names} cannot evaluate a `{config.method.name}` model"
            + (f"; use {', '.join(fitting)}." if fitting else ".")
        )


def evaluate_after_training(config: Config, run: RunDir) -> dict[str, float]:
    """`eval.tasks` on `final/`, results in RUN/eval/<task>.json, flat `eval/<task>/<metric>` metrics."""
    if not config.eval.tasks:
        return {}
    from llm_finetuning.evaluation.encoder_tasks import evaluate

    batch = config.training.per_device_eval_batch_size or config.training.per_device_batch_size
    results = evaluate(run.root, config.eval.tasks, run.root / "eval", batch, config.eval.limit)
    return {f"eval/{name}/{k}": v for name, r in results.items() for k, v in r.metrics.items() if k != "examples"}


def load_rows(
    config: Config, kind: str, sources: list[DataSource] | None = None, eval_sources: list[DataSource] | None = None
) -> EncoderData:
    """Read every training and eval source (`data.train`/`data.eval` unless given) as `kind` records, stopping (or
    counting, with `data.on_error: skip`) at bad rows, with file, line and field."""
    stats = {"train": SplitStats()}
    prints: dict[str, str] = {}
    train: Rows = []
    for source in sources if sources is not None else config.data.train:
        train.extend(load_records(source, config.data.on_error, stats["train"], kind))
        prints[source.label] = source_fingerprint(source)
    evaluation: Rows = []
    eval_sources = config.data.eval if eval_sources is None else eval_sources
    if eval_sources:
        stats["eval"] = SplitStats()
        for source in eval_sources:
            evaluation.extend(load_records(source, config.data.on_error, stats["eval"], kind))
            prints[source.label] = source_fingerprint(source)
    elif config.data.eval_split:
        stats["eval"] = SplitStats()
        train, evaluation = split_eval(train, config.data.eval_split, config.training.seed, stats)
    if not train:
        raise DataError("No usable training rows: every row was skipped as malformed. See the log for examples.")
    for name, split in stats.items():
        split.examples = len(train if name == "train" else evaluation)
    return EncoderData(train, evaluation, stats, prints)


def base_model_dir(config: Config, run: RunDir) -> str:
    """Where the starting model lives: its hub id or directory, or for `tiny` the random model saved to `base/`."""
    if config.model.name != "tiny":
        return config.model.name
    from llm_finetuning.models import tiny

    tokenizer = load_tokenizer(config.model)
    if tokenizer.pad_token is None:  # batches of texts are padded (GPT-2's tokenizer has no pad token)
        prepare_tokenizer(tokenizer, None, require_template=False)
    model = tiny.build_model(config.model.tiny, tokenizer)
    model.save_pretrained(run.base)
    tokenizer.save_pretrained(run.base)
    return str(run.base.resolve())


def is_decoder(model_dir: str, config: Config) -> bool:
    """Whether the model reads left to right only (a causal LM), as opposed to a bidirectional encoder."""
    try:
        model_config = AutoConfig.from_pretrained(
            model_dir, revision=config.model.revision, trust_remote_code=config.model.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name: cannot read the config of `{model_dir}`: {exc}") from None
    kind = model_config.model_type
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return False
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or bool(getattr(model_config, "is_decoder", False))


def adapt(model: PreTrainedModel, config: Config, task_type: str, unused: tuple[str, ...] = ()) -> PreTrainedModel:
    """The network with its adapter: a PEFT model for LoRA/DoRA, the model itself (partly frozen) otherwise.

    `unused` names modules the method never runs (BERT's pooler under a bi-encoder's own pooling): they stay frozen
    and get no adapter, so nothing is trained, or kept in the optimizer, that cannot receive a gradient.
    """
    from peft import get_peft_model

    adapter = config.adapter
    present = sorted({name.split(".")[-1] for name, _ in model.named_modules()} & set(unused))
    for name, module in model.named_modules():
        if name.split(".")[-1] in present:
            module.requires_grad_(False)
    if adapter.method == "full":
        wrapped = model  # everything but `unused` trains
    elif adapter.method == "freeze":
        wrapped = freeze_except(model, adapter)
    else:
        settings = peft_config(adapter, task_type=task_type)
        if present:
            settings.exclude_modules = present
        wrapped = get_peft_model(model, settings)
    counts = count_parameters(wrapped)
    logger.info(
        "adapter %s: %s of %s parameters train", adapter.method, f"{counts['trainable']:,}", f"{counts['total']:,}"
    )
    return wrapped


def merged(model: Any) -> Any:
    """The plain network with any LoRA update folded into its weights (what `final/` holds)."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def trainer_arguments(config: Config, run: RunDir, has_eval: bool, arguments_class: type, **extra: Any) -> Any:
    """The trainer's arguments from `training:`/`eval:`/`tracking:`, the method's own, then `training.extra`."""
    arguments = training_arguments(config, run, has_eval=has_eval)
    arguments.update(extra)
    arguments["remove_unused_columns"] = extra.get("remove_unused_columns", False)
    return arguments_class(**apply_extra(arguments, config.training.extra, arguments_class))


def run_trainer(trainer: Trainer, checkpoint: Path | None, stop: Any) -> Outcome:
    """Train (from `checkpoint` if resuming), then the eval loss if there is eval data."""
    from llm_finetuning.runs.progress import use_logged_progress
    from llm_finetuning.runs.resume_totals import ElapsedTime, read_prior, whole_run

    use_logged_progress(trainer)
    prior = read_prior(checkpoint) if checkpoint and (Path(checkpoint) / "trainer_state.json").is_file() else None
    trainer.add_callback(ElapsedTime((prior.seconds or 0.0) if prior else 0.0))
    output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics: dict[str, Any] = dict(output.metrics)
    if prior is not None:  # whole-run train_loss and train_runtime, as for the causal-LM methods
        metrics = whole_run(metrics, prior, trainer.state.global_step)
    if stop.requested:
        logger.warning("Training stopped by a signal; the last checkpoint is in %s", trainer.args.output_dir)
        return Outcome("interrupted", metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    return Outcome("completed", metrics)


def finish_sentence_model(
    config: Config,
    run: RunDir,
    model: Any,
    outcome: Outcome,
    section: str,
    before: dict[str, float] | None,
    measure: Callable[[Any], dict[str, float]] | None,
) -> Outcome:
    """After a sentence-transformers model trained: LoRA merged, `measure` after (beside `before`) in the manifest
    under `section`, `final/` saved, `eval.tasks` run on it."""
    model[0].model = merged(model[0].model)
    if measure is not None:
        after = measure(model)
        outcome.metrics.update({f"eval/{section}/{k}": v for k, v in after.items()})
        write_manifest(run, **{section: {"before": before, "after": after}})
    run.final.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(run.final))
    write_config_copy(config, run)
    outcome.metrics.update(evaluate_after_training(config, run))
    write_manifest(run, final_metrics=outcome.metrics)
    logger.info("Saved the %s model to %s", config.method.name, run.final)
    return outcome


TrainRun = Callable[[Config, RunDir, Any, Path | None, list[TrainerCallback]], Outcome]
