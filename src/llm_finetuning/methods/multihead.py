"""Multi-head training: config -> rows per head -> batches of one head each -> transformers' `Trainer` on a
`MultiHeadModel` -> a `final/` with the backbone, the heads and their description.

Batches: each head's rows are tokenized, shuffled with `training.seed` and cut into batches of
`training.per_device_batch_size`; the dataset the trainer sees is these whole batches (one item each, so its own
batch size is 1), and its seeded sampler shuffles them every epoch. A head with twice the rows therefore gets twice
the steps: heads are drawn in proportion to their data, and no batch mixes heads (their losses and shapes differ).
"""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import DataError
from llm_finetuning.evaluation.classification import classification_metrics, confusion, plot_confusion
from llm_finetuning.methods.encoder_common import (
    EncoderData,
    Outcome,
    adapt,
    base_model_dir,
    check_adapter,
    is_decoder,
    load_rows,
    merged,
    run_trainer,
    trainer_arguments,
)
from llm_finetuning.models.multihead import HeadSpec, MultiHeadModel
from llm_finetuning.runs.rundir import RunDir, write_config_copy, write_manifest

logger = logging.getLogger(__name__)
Rows = list[tuple[str, dict[str, Any]]]
IGNORE = -100


def train_run(
    config: Config, run: RunDir, stop: Any, checkpoint: Path | None, callbacks: list[TrainerCallback]
) -> Outcome:
    check_adapter(config)
    specs = [HeadSpec(h.name, h.type, list(h.labels), h.multi_label, h.weight) for h in config.method.heads]
    data = {spec.name: _rows(config, spec) for spec in specs}
    for spec in specs:
        check_labels(spec, data[spec.name].train + data[spec.name].eval)
    _record(run, data)
    model_dir = base_model_dir(config, run)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=config.model.trust_remote_code)
    if tokenizer.pad_token is None:  # batches are padded; the mask, not the token, marks the padding
        tokenizer.pad_token = tokenizer.eos_token
    decoder = is_decoder(model_dir, config)
    loader = AutoModelForCausalLM if any(s.type == "lm" for s in specs) else AutoModel
    backbone = loader.from_pretrained(
        model_dir, trust_remote_code=config.model.trust_remote_code, revision=config.model.revision
    )
    torch.manual_seed(config.training.seed)  # the heads' initialisation repeats
    model = MultiHeadModel(backbone, specs, config.method.pooling, decoder)
    encoded = {s.name: encode(config, tokenizer, s, data[s.name].train) for s in specs}
    held_out = {s.name: encode(config, tokenizer, s, data[s.name].eval) for s in specs if data[s.name].eval}
    batch = config.training.per_device_batch_size
    before = evaluate_heads(model, held_out, tokenizer, batch) if held_out else None
    wrapped = adapt(model.backbone, config, "FEATURE_EXTRACTION", unused=("pooler",))  # LoRA in place; heads train
    seed, by_name = config.training.seed, model.specs
    train = HeadBatches(encoded, batch, tokenizer, seed, by_name)
    evaluation = HeadBatches(held_out, batch, tokenizer, seed, by_name) if held_out else None
    args = trainer_arguments(
        config,
        run,
        evaluation is not None,
        TrainingArguments,
        per_device_train_batch_size=1,
        per_device_eval_batch_size=1,
    )
    trainer = MultiHeadTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=first,
        callbacks=callbacks,
    )
    outcome = run_trainer(trainer, checkpoint, stop)
    if outcome.status != "completed":
        return outcome
    merged(wrapped)  # folds a LoRA update into the backbone in place
    if held_out:
        after = evaluate_heads(model, held_out, tokenizer, batch)
        for spec in specs:
            if spec.type == "classification" and not spec.multi_label and spec.name in after:
                plot_confusion(after[spec.name]["confusion"], spec.labels, run.plots / f"confusion_{spec.name}.png")
        report = {"before": before, "after": after}
        (run.root / "eval").mkdir(parents=True, exist_ok=True)
        (run.root / "eval" / "multi_head.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        outcome.metrics.update(
            {f"eval/{h}/{k}": v for h, values in after.items() for k, v in values.items() if isinstance(v, float)}
        )
        write_manifest(run, multi_head={"before": _headline(before), "after": _headline(after)})
    model.save_pretrained(run.final)
    tokenizer.save_pretrained(run.final)
    write_config_copy(config, run)
    write_manifest(run, final_metrics=outcome.metrics)
    logger.info("Saved the multi-head model to %s (MultiHeadModel.from_pretrained(path))", run.final)
    return outcome


def _rows(config: Config, spec: HeadSpec) -> EncoderData:
    kind = "text" if spec.type == "lm" else "labeled_text"
    train = [s for s in config.data.train if s.head == spec.name]
    evaluation = [s for s in config.data.eval if s.head == spec.name]
    return load_rows(config, kind, train, evaluation)


def _record(run: RunDir, data: dict[str, EncoderData]) -> None:
    """Per split: the totals over the heads, and each head's own counts."""
    stats: dict[str, dict[str, Any]] = {}
    for head, split_data in data.items():
        for split, counts in split_data.stats.items():
            entry = stats.setdefault(split, {"rows": 0, "examples": 0, "skipped_bad_rows": 0, "heads": {}})
            for key in ("rows", "examples", "skipped_bad_rows"):
                entry[key] += getattr(counts, key)
            entry["heads"][head] = {**vars(counts), "bad_rows": counts.bad_rows[:5]}
    prints = {label: value for d in data.values() for label, value in d.fingerprints.items()}
    write_manifest(run, data={"fingerprints": prints, "stats": stats})
    dropped = [f"{h}/{s}: {m}" for h, d in data.items() for s, c in d.stats.items() for m in c.bad_rows]
    if dropped:
        run.dropped_rows.write_text("\n".join(dropped) + "\n", encoding="utf-8")


def check_labels(spec: HeadSpec, rows: Rows) -> None:
    """Classes in the head's declared set (lists only with `multi_label`), numbers for regression."""
    for where, record in rows:
        if spec.type == "lm":
            continue
        label = record["label"]
        if spec.type == "regression":
            try:
                record["label"] = float(label)
            except (TypeError, ValueError):
                raise DataError(
                    f"{where}: field `label` is {label!r}; head `{spec.name}` (regression) needs a number"
                ) from None
            continue
        if isinstance(label, float):
            raise DataError(f"{where}: field `label` is the number {label}; head `{spec.name}` needs class names")
        if isinstance(label, list) and not spec.multi_label:
            raise DataError(f"{where}: field `label` is a list; set `multi_label: true` on head `{spec.name}`")
        outside = [item for item in (label if isinstance(label, list) else [label]) if item not in spec.labels]
        if outside:
            raise DataError(
                f"{where}: field `label`: {', '.join(map(repr, outside))} is not in the labels of head `{spec.name}` "
                f"({', '.join(spec.labels)})"
            )


def encode(config: Config, tokenizer: Any, spec: HeadSpec, rows: Rows) -> list[dict[str, Any]]:
    """Token ids and the label of each row; an `lm` row ends with EOS and predicts every token."""
    out = []
    limit = config.data.max_length
    index = {label: i for i, label in enumerate(spec.labels)}
    for _, record in rows:
        if spec.type == "lm":
            ids = tokenizer(record["text"], add_special_tokens=False)["input_ids"][: limit - 1] + [
                tokenizer.eos_token_id
            ]
            out.append({"input_ids": ids, "labels": list(ids)})
            continue
        pair = record.get("text_pair")
        ids = tokenizer(record["text"], pair, truncation=True, max_length=limit)["input_ids"]
        label: Any = record["label"]
        if spec.type == "classification":
            if spec.multi_label:
                label = [float(name in label) for name in spec.labels]
            else:
                label = index[label]
        out.append({"input_ids": ids, "labels": label})
    return out


def collate(rows: list[dict[str, Any]], tokenizer: Any, spec: HeadSpec, head: str) -> dict[str, Any]:
    """A padded batch of one head: right padding, padded LM labels ignored."""
    width = max(len(r["input_ids"]) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
    if spec.type == "lm":
        labels = torch.tensor([r["labels"] + [IGNORE] * (width - len(r["labels"])) for r in rows])
    else:
        labels = torch.tensor([r["labels"] for r in rows])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "head": head}


class HeadBatches(TorchDataset):
    """Whole padded batches, each of one head's rows, in a seeded order (see the module docstring)."""

    def __init__(
        self, encoded: dict[str, list[dict[str, Any]]], size: int, tokenizer: Any, seed: int, specs: dict[str, HeadSpec]
    ) -> None:
        self.batches: list[tuple[str, list[dict[str, Any]]]] = []
        generator = random.Random(seed)
        for head, rows in encoded.items():
            order = list(range(len(rows)))
            generator.shuffle(order)
            for start in range(0, len(order), size):
                self.batches.append((head, [rows[i] for i in order[start : start + size]]))
        self.tokenizer, self.specs = tokenizer, specs

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        head, rows = self.batches[index]
        return collate(rows, self.tokenizer, self.specs[head], head)


def first(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The trainer's batch of one item: the pre-built batch itself."""
    return items[0]


class MultiHeadTrainer(Trainer):
    """The trainer, with checkpoints of the whole module (backbone, adapter and heads) that tied weights survive."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        from safetensors.torch import save_model

        output = Path(output_dir or self.args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(output / "multihead_state.safetensors"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_model

        load_model(model or self.model, str(Path(resume_from_checkpoint) / "multihead_state.safetensors"))


@torch.no_grad()
def evaluate_heads(
    model: MultiHeadModel, held_out: dict[str, list[dict[str, Any]]], tokenizer: Any, batch: int
) -> dict[str, dict[str, Any]]:
    """Each head on its own eval rows: accuracy and macro F1 (+ per class, confusion), RMSE and Pearson r, or
    perplexity."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for head, rows in held_out.items():
        spec = model.specs[head]
        logits, losses, tokens = [], 0.0, 0
        for start in range(0, len(rows), batch):
            inputs = collate(rows[start : start + batch], tokenizer, spec, head)
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            result = model(**inputs)
            if spec.type == "lm":
                count = int((inputs["labels"][:, 1:] != IGNORE).sum())
                losses += float(result["loss"]) / spec.weight * count
                tokens += count
            else:
                logits.append(result["logits"].float().cpu().numpy())
        if spec.type == "lm":
            out[head] = {"perplexity": float(math.exp(losses / max(tokens, 1))), "tokens": float(tokens)}
            continue
        scores = np.concatenate(logits)
        gold = np.array([r["labels"] for r in rows])
        if spec.type == "regression":
            error = scores - gold
            pearson = float(np.corrcoef(scores, gold)[0, 1]) if scores.std() > 0 and gold.std() > 0 else 0.0
            out[head] = {"rmse": float(np.sqrt((error**2).mean())), "pearson_r": pearson}
            continue
        predicted = (scores > 0).astype(int) if spec.multi_label else scores.argmax(-1)
        gold = gold.astype(int)
        metrics = classification_metrics(gold, predicted, spec.labels)
        metrics["confusion"] = confusion(gold, predicted, spec.labels)
        out[head] = metrics
    model.train(was_training)
    return out


def _headline(metrics: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, float]] | None:
    if metrics is None:
        return None
    return {head: {k: v for k, v in values.items() if isinstance(v, float)} for head, values in metrics.items()}
