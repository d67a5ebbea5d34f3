"""Rerankers (cross-encoders): config -> (query, positive, negatives) rows or labelled pairs -> sentence-transformers'
CrossEncoder trainer, binary or listwise -> a `final/` that `CrossEncoder(path)` loads.

The query and a document are read together by a sequence classifier with one output, the relevance logit. With
LoRA the update is merged into `final/`, which then needs neither PEFT nor the base model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import DataError
from llm_finetuning.evaluation.retrieval import RetrievalSet, rerank_metrics
from llm_finetuning.methods.encoder_common import (
    Outcome,
    adapt,
    base_model_dir,
    check_adapter,
    finish_sentence_model,
    load_rows,
    run_trainer,
    trainer_arguments,
)
from llm_finetuning.runs.rundir import RunDir

logger = logging.getLogger(__name__)

LISTWISE = ("lambda", "listnet", "listmle")


def record_kind(config: Config) -> str:
    """`scored_pair` when every source is a file of labelled pairs, else `retrieval` rows."""
    pairs = all(s.dataset is None and s.format == "scored_pair" for s in config.data.train)
    return "scored_pair" if pairs else "retrieval"


def train_run(
    config: Config, run: RunDir, stop: Any, checkpoint: Path | None, callbacks: list[TrainerCallback]
) -> Outcome:
    from sentence_transformers import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments

    check_adapter(config)
    kind = record_kind(config)
    data = load_rows(config, kind)
    rows = [*data.train, *data.eval]
    check_rows(config, kind, rows)
    data.record_in_manifest(run)
    model = CrossEncoder(
        base_model_dir(config, run),
        num_labels=1,
        max_length=config.data.max_length,
        trust_remote_code=config.model.trust_remote_code,
        revision=config.model.revision,
    )
    if model.tokenizer.pad_token is None:  # decoders often ship without one
        model.tokenizer.pad_token = model.tokenizer.eos_token
        model.model.config.pad_token_id = model.tokenizer.pad_token_id
    evaluation_rows = [row for row in data.eval if row[1].get("negatives")] if kind == "retrieval" else []
    ranking = RetrievalSet.from_rows(evaluation_rows) if evaluation_rows else None
    batch = config.training.per_device_batch_size
    before = rerank_metrics(model, ranking, batch) if ranking else None
    model[0].model = adapt(model[0].model, config, "SEQ_CLS")
    train = to_dataset(config, kind, data.train)
    evaluation = to_dataset(config, kind, data.eval) if data.eval else None
    args = trainer_arguments(config, run, evaluation is not None, CrossEncoderTrainingArguments)
    trainer = CrossEncoderTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        loss=build_loss(config, model),
        callbacks=callbacks,
    )
    outcome = run_trainer(trainer, checkpoint, stop)
    if outcome.status != "completed":
        return outcome
    measure = (lambda m: rerank_metrics(m, ranking, batch)) if ranking is not None else None
    return finish_sentence_model(config, run, model, outcome, "rerank", before, measure)


def check_rows(config: Config, kind: str, rows: list[tuple[str, dict[str, Any]]]) -> None:
    loss = config.method.loss
    if kind == "scored_pair":
        if loss != "bce":
            raise DataError(
                f"method.loss `{loss}` ranks a query's documents together and needs `retrieval` rows (query, "
                "positive, negatives); labelled pairs train `loss: bce`."
            )
        for where, record in rows:
            if not 0.0 <= record["score"] <= 1.0:
                raise DataError(f"{where}: field `score` is {record['score']}; a reranker label is 0 or 1 (or between)")
        return
    needs_negatives = loss != "mnrl"  # bce and listwise losses learn nothing from a positive alone
    for where, record in rows:
        if needs_negatives and not record["negatives"]:
            raise DataError(
                f"{where}: field `negatives`: loss `{loss}` needs hard negatives and this row has none. Mine them "
                "(`llmft data mine-negatives`), or use `loss: mnrl` (in-batch negatives)."
            )


def to_dataset(config: Config, kind: str, rows: list[tuple[str, dict[str, Any]]]) -> Dataset:
    """(query, document, label) pairs for `bce`, (query, docs, labels) lists for the listwise losses, and
    (query, positive, negative_1..k) for `mnrl`."""
    method = config.method
    if kind == "scored_pair":
        records = [r for _, r in rows]
        return Dataset.from_dict(
            {
                "query": [r["text1"] for r in records],
                "document": [r["text2"] for r in records],
                "label": [r["score"] for r in records],
            }
        )
    negatives = [r["negatives"][: method.max_negatives] for _, r in rows]
    queries = [r["query"] for _, r in rows]
    positives = [r["positive"] for _, r in rows]
    if method.loss == "bce":
        columns: dict[str, list[Any]] = {"query": [], "document": [], "label": []}
        for query, positive, negs in zip(queries, positives, negatives, strict=True):
            for document, label in [(positive, 1.0), *((n, 0.0) for n in negs)]:
                columns["query"].append(query)
                columns["document"].append(document)
                columns["label"].append(label)
        return Dataset.from_dict(columns)
    if method.loss in LISTWISE:
        return Dataset.from_dict(
            {
                "query": queries,
                "docs": [[p, *n] for p, n in zip(positives, negatives, strict=True)],
                "labels": [[1.0] + [0.0] * len(n) for n in negatives],
            }
        )
    count = min(len(n) for n in negatives)
    columns = {"query": queries, "positive": positives}
    for index in range(count):
        columns[f"negative_{index + 1}"] = [n[index] for n in negatives]
    return Dataset.from_dict(columns)


def build_loss(config: Config, model: Any) -> Any:
    import torch
    from sentence_transformers.cross_encoder import losses

    method = config.method
    if method.loss == "bce":
        weight = torch.tensor(method.pos_weight) if method.pos_weight else None
        return losses.BinaryCrossEntropyLoss(model, pos_weight=weight)
    return {
        "lambda": losses.LambdaLoss,
        "listnet": losses.ListNetLoss,
        "listmle": losses.ListMLELoss,
        "mnrl": losses.MultipleNegativesRankingLoss,
    }[method.loss](model)
