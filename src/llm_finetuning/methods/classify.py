"""Text classification: config -> labelled texts -> transformers' sequence classifier and `Trainer` -> a `final/`
that `AutoModelForSequenceClassification.from_pretrained(path)` (or a `text-classification` pipeline) loads.

Labels are checked against `method.labels` before any model is built; class weights and multi-label training
use our loss function (cross-entropy with weights, or a weighted sigmoid per class) through the trainer's
`compute_loss_func`. After training the eval rows are classified and scored: accuracy, macro F1, a per-class
table, and the confusion matrix as a plot in `plots/`, beside the untrained head's figures for comparison.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import DataError
from llm_finetuning.evaluation.classification import classification_metrics, confusion, plot_confusion
from llm_finetuning.methods.encoder_common import (
    Outcome,
    adapt,
    base_model_dir,
    check_adapter,
    evaluate_after_training,
    load_rows,
    merged,
    run_trainer,
    trainer_arguments,
)
from llm_finetuning.runs.rundir import RunDir, write_config_copy, write_manifest

logger = logging.getLogger(__name__)
Rows = list[tuple[str, dict[str, Any]]]


def train_run(
    config: Config, run: RunDir, stop: Any, checkpoint: Path | None, callbacks: list[TrainerCallback]
) -> Outcome:
    method = config.method
    check_adapter(config)
    data = load_rows(config, "labeled_text")
    labels = resolve_labels(config, data.train, data.eval)
    data.record_in_manifest(run)
    model_dir = base_model_dir(config, run)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token is None:  # decoders often ship without one; batches are padded
        tokenizer.pad_token = tokenizer.eos_token
    model = load_classifier(config, model_dir, labels, tokenizer)
    train = encode(config, tokenizer, data.train, labels)
    evaluation = encode(config, tokenizer, data.eval, labels) if data.eval else None
    batch = config.training.per_device_eval_batch_size or config.training.per_device_batch_size
    before = score(config, model, tokenizer, evaluation, labels, batch) if evaluation is not None else None
    model = adapt(model, config, "SEQ_CLS")
    args = trainer_arguments(config, run, evaluation is not None, TrainingArguments)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        compute_loss_func=LossFunction(config, labels, data.train),
        callbacks=callbacks,
    )
    outcome = run_trainer(trainer, checkpoint, stop)
    if outcome.status != "completed":
        return outcome
    model = merged(trainer.model)
    if evaluation is not None:
        after = score(config, model, tokenizer, evaluation, labels, batch)
        report = {"labels": labels, "multi_label": method.multi_label, "before": before, "after": after}
        (run.root / "eval").mkdir(parents=True, exist_ok=True)
        (run.root / "eval" / "classification.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        if not method.multi_label:
            plot_confusion(after["confusion"], labels, run.plots / "confusion_matrix.png")
        outcome.metrics.update({f"eval/classification/{k}": after[k] for k in ("accuracy", "macro_f1")})
        write_manifest(run, classification={"before": _headline(before), "after": _headline(after)})
    run.final.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(run.final, safe_serialization=True)
    tokenizer.save_pretrained(run.final)
    write_config_copy(config, run)
    outcome.metrics.update(evaluate_after_training(config, run))
    write_manifest(run, final_metrics=outcome.metrics)
    logger.info("Saved the classifier to %s (AutoModelForSequenceClassification)", run.final)
    return outcome


def resolve_labels(config: Config, train: Rows, evaluation: Rows) -> list[str]:
    """The declared labels (every row checked against them), or the sorted labels of the training rows."""
    method = config.method
    declared = list(method.labels)
    for where, record in [*train, *evaluation]:
        label = record["label"]
        if isinstance(label, float):
            raise DataError(f"{where}: field `label` is the number {label}; a classifier needs class names")
        if isinstance(label, list) and not method.multi_label:
            raise DataError(
                f"{where}: field `label` is a list ({', '.join(label)}); set `method.multi_label: true` to train "
                "several labels per row"
            )
        if declared:
            outside = [item for item in _as_list(label) if item not in declared]
            if outside:
                raise DataError(
                    f"{where}: field `label`: {', '.join(map(repr, outside))} is not in `method.labels` "
                    f"({', '.join(declared)}). Fix the row or add the label."
                )
    if declared:
        return declared
    found = sorted({item for _, record in train for item in _as_list(record["label"])})
    unseen = sorted({item for _, r in evaluation for item in _as_list(r["label"])} - set(found))
    if unseen:
        raise DataError(f"eval rows have labels the training rows lack ({', '.join(unseen)}); declare `method.labels`")
    if len(found) < 2 and not method.multi_label:
        raise DataError(f"the training rows have {len(found)} distinct label(s); a classifier needs at least 2")
    logger.info("method.labels not set: using the %d labels of the training rows: %s", len(found), ", ".join(found))
    return found


def _as_list(label: str | list[str]) -> list[str]:
    return label if isinstance(label, list) else [label]


def load_classifier(
    config: Config, model_dir: str, labels: list[str], tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="multi_label_classification" if config.method.multi_label else "single_label_classification",
        trust_remote_code=config.model.trust_remote_code,
        revision=config.model.revision,
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # decoders find the last real token by it
    return model


def encode(config: Config, tokenizer: PreTrainedTokenizerBase, rows: Rows, labels: list[str]) -> Dataset:
    index = {label: i for i, label in enumerate(labels)}
    texts = [r["text"] for _, r in rows]
    pairs = [r["text_pair"] for _, r in rows]
    kwargs = {"truncation": True, "max_length": config.data.max_length}
    encoded = tokenizer(texts, pairs, **kwargs) if any(pairs) else tokenizer(texts, **kwargs)
    if config.method.multi_label:
        targets: list[Any] = []
        for _, record in rows:
            vector = [0.0] * len(labels)
            for item in _as_list(record["label"]):
                vector[index[item]] = 1.0
            targets.append(vector)
    else:
        targets = [index[r["label"]] for _, r in rows]
    return Dataset.from_dict({**dict(encoded), "labels": targets})


class LossFunction:
    """Cross-entropy (softmax) or one sigmoid per class (multi-label), with the configured class weights."""

    def __init__(self, config: Config, labels: list[str], train: Rows) -> None:
        self.multi_label = config.method.multi_label
        self.weights = class_weights(config, labels, train)

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"]
        weights = self.weights.to(logits.device) if self.weights is not None else None
        if self.multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), weight=weights)
        return torch.nn.functional.cross_entropy(logits, labels, weight=weights)


def class_weights(config: Config, labels: list[str], train: Rows) -> torch.Tensor | None:
    """`balanced`: n_rows / (n_classes x count) per class (scikit-learn's rule; a class never seen weighs 1)."""
    setting = config.method.class_weights
    if setting == "none":
        return None
    if isinstance(setting, dict):
        return torch.tensor([float(setting.get(label, 1.0)) for label in labels])
    counts = Counter(item for _, record in train for item in _as_list(record["label"]))
    total = sum(counts.values())
    weights = [total / (len(labels) * counts[label]) if counts[label] else 1.0 for label in labels]
    logger.info("class weights: %s", ", ".join(f"{label} {w:.3f}" for label, w in zip(labels, weights, strict=True)))
    return torch.tensor(weights)


@torch.no_grad()
def predict(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, dataset: Dataset, batch_size: int
) -> np.ndarray:
    """The logits of every row, in order."""
    collate = DataCollatorWithPadding(tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    columns = [c for c in dataset.column_names if c != "labels"]
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        batch = collate([{c: row[c] for c in columns} for row in rows])
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        out.append(logits.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out)


def score(
    config: Config,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    dataset: Dataset,
    labels: list[str],
    batch_size: int,
) -> dict[str, Any]:
    logits = predict(model, tokenizer, dataset, batch_size)
    gold = np.array(dataset["labels"])
    if config.method.multi_label:
        predicted = (1 / (1 + np.exp(-logits)) > (config.method.threshold or 0.5)).astype(int)
        gold = gold.astype(int)
    else:
        predicted = logits.argmax(-1)
    metrics = classification_metrics(gold, predicted, labels)
    metrics["confusion"] = confusion(gold, predicted, labels)
    return metrics


def _headline(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    return None if metrics is None else {k: v for k, v in metrics.items() if isinstance(v, float)}
