"""Embedding models (bi-encoders): config -> (query, positive, negatives) or scored pairs -> sentence-transformers'
trainer with the chosen loss -> a `final/` that `SentenceTransformer(path)` loads.

The model is any encoder or decoder: a directory already saved by sentence-transformers keeps its modules; any
other transformers model gets a pooling layer (mean for encoders, the last token for decoders unless
`method.pooling` says otherwise) and, with `method.normalize`, unit-length outputs. With LoRA the update is merged
into `final/`, so the folder needs neither PEFT nor the base model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset
from transformers import TrainerCallback

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.evaluation.retrieval import RetrievalSet, retrieval_metrics
from llm_finetuning.methods.encoder_common import (
    EncoderData,
    Outcome,
    adapt,
    base_model_dir,
    check_adapter,
    finish_sentence_model,
    is_decoder,
    load_rows,
    run_trainer,
    trainer_arguments,
)
from llm_finetuning.runs.rundir import RunDir

logger = logging.getLogger(__name__)


def train_run(
    config: Config, run: RunDir, stop: Any, checkpoint: Path | None, callbacks: list[TrainerCallback]
) -> Outcome:
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    method = config.method
    check_adapter(config)
    data = load_rows(config, method.record_kind)
    check_rows(config, data)
    data.record_in_manifest(run)
    model = build_model(config, base_model_dir(config, run))
    train, evaluation = to_dataset(config, data.train), to_dataset(config, data.eval) if data.eval else None
    retrieval = RetrievalSet.from_rows(data.eval) if data.eval and method.record_kind == "retrieval" else None
    before = retrieval_metrics(model, retrieval, config.training.per_device_batch_size) if retrieval else None
    model[0].model = adapt(model[0].model, config, "FEATURE_EXTRACTION", unused=("pooler",))
    sampler = "no_duplicates" if method.no_duplicates and method.record_kind == "retrieval" else "batch_sampler"
    args = trainer_arguments(
        config,
        run,
        evaluation is not None,
        SentenceTransformerTrainingArguments,
        batch_sampler=sampler,
        prompts=column_prompts(config, train) or None,
    )
    trainer = SentenceTransformerTrainer(
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
    batch = config.training.per_device_batch_size
    measure = (lambda m: retrieval_metrics(m, retrieval, batch)) if retrieval is not None else None
    return finish_sentence_model(config, run, model, outcome, "retrieval", before, measure)


def check_rows(config: Config, data: EncoderData) -> None:
    """What the loss needs beyond the format: a negative per row for `triplet`, 0/1 labels for `contrastive`."""
    loss = config.method.loss
    for split in (data.train, data.eval):
        for where, record in split:
            if loss == "triplet" and not record["negatives"]:
                raise DataError(
                    f"{where}: field `negative`: loss `triplet` needs a negative in every row and this row has none. "
                    "Add one, mine them (`llmft data mine-negatives`), or use `loss: mnrl`."
                )
            if loss == "contrastive" and record["score"] not in (0.0, 1.0):
                raise DataError(
                    f"{where}: field `score` is {record['score']}; loss `contrastive` needs 1 (similar) or 0 "
                    "(dissimilar). Use `loss: cosent` for graded scores."
                )


def build_model(config: Config, model_dir: str) -> Any:
    """A SentenceTransformer: the saved one as it is (its pooling replaced if `method.pooling` is set), or the
    transformers model with pooling and normalisation added."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    method = config.method
    kwargs = {"trust_remote_code": config.model.trust_remote_code, "revision": config.model.revision}
    decoder = is_decoder(model_dir, config)
    pooling = method.pooling if method.pooling != "auto" else ("lasttoken" if decoder else "mean")
    if decoder and pooling == "cls":
        raise ConfigError(
            f"method.pooling: `cls` reads the first token, and `{model_dir}` is a decoder: its first token sees "
            "nothing after it. Use `lasttoken` (or `mean`)."
        )
    if (Path(model_dir) / "modules.json").is_file():
        model = SentenceTransformer(model_dir, **kwargs)
        if method.pooling != "auto":
            model[1] = Pooling(model[0].get_embedding_dimension(), pooling)
        model.max_seq_length = config.data.max_length
    else:
        transformer = Transformer(model_dir, max_seq_length=config.data.max_length, model_kwargs=kwargs)
        modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling)]
        model = SentenceTransformer(modules=[*modules, Normalize()] if method.normalize else modules)
    tokenizer = model.tokenizer
    if tokenizer.pad_token is None:  # decoders often ship without one; the batch still needs padding
        tokenizer.pad_token = tokenizer.eos_token
    dimension = model.get_embedding_dimension()
    too_large = [d for d in method.matryoshka_dims if d > dimension]
    if too_large:
        raise ConfigError(f"method.matryoshka_dims: {too_large} exceed the model's embedding size ({dimension}).")
    prompts = {"query": method.query_prompt, "document": method.document_prompt}
    model.prompts.update({name: text for name, text in prompts.items() if text})
    return model


def to_dataset(config: Config, rows: list[tuple[str, dict[str, Any]]]) -> Dataset:
    """The columns sentence-transformers expects: (anchor, positive, negative_1..k) or (sentence1, sentence2,
    label). Rows have as many negatives as the row with the fewest (the losses need one shape)."""
    if config.method.record_kind == "scored_pair":
        return Dataset.from_dict(
            {
                "sentence1": [r["text1"] for _, r in rows],
                "sentence2": [r["text2"] for _, r in rows],
                "label": [r["score"] for _, r in rows],
            }
        )
    count = min(len(r["negatives"]) for _, r in rows)
    if config.method.loss == "triplet":
        count = 1  # a triplet is one negative
    extra = sum(len(r["negatives"]) - count for _, r in rows)
    if extra:
        logger.warning(
            "%d hard negatives are not used: rows have between %d and %d, and every row takes %d (the fewest; "
            "`triplet` takes one). Give rows the same number of negatives to use them all.",
            extra,
            count,
            max(len(r["negatives"]) for _, r in rows),
            count,
        )
    columns: dict[str, list[str]] = {
        "anchor": [r["query"] for _, r in rows],
        "positive": [r["positive"] for _, r in rows],
    }
    for index in range(count):
        columns[f"negative_{index + 1}"] = [r["negatives"][index] for _, r in rows]
    return Dataset.from_dict(columns)


def column_prompts(config: Config, dataset: Dataset) -> dict[str, str]:
    """Training prompts per column: the query prompt before anchors, the document prompt before the rest."""
    method = config.method
    if config.method.record_kind != "retrieval":
        return {}
    prompts = {}
    for column in dataset.column_names:
        text = method.query_prompt if column == "anchor" else method.document_prompt
        if text:
            prompts[column] = text
    return prompts


def build_loss(config: Config, model: Any) -> Any:
    from sentence_transformers.sentence_transformer import losses

    method = config.method
    if method.loss == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model, scale=method.scale)
    elif method.loss == "cached_mnrl":
        loss = losses.CachedMultipleNegativesRankingLoss(
            model, scale=method.scale, mini_batch_size=method.mini_batch_size or 16
        )
    elif method.loss == "triplet":
        loss = losses.TripletLoss(model, triplet_margin=method.margin or 5.0)
    elif method.loss == "contrastive":
        loss = losses.ContrastiveLoss(model, margin=method.margin or 0.5)
    else:
        loss = losses.CoSENTLoss(model)
    if method.matryoshka_dims:
        dims = sorted({model.get_embedding_dimension(), *method.matryoshka_dims}, reverse=True)
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=dims)
    return loss
