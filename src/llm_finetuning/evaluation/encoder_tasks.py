"""Evaluation of the models that read text: retrieval (bi-encoders), reranking (cross-encoders) and classification.

A task's rows are `retrieval` records (query, positive, negatives) or `labeled_text` records, from a named dataset
(PubMedQA: each question against the abstracts of every row of the set; question + abstract -> yes/no/maybe) or a
file in that format. Metrics come from sentence-transformers' evaluators and scikit-learn (`retrieval.py`,
`classification.py`); results are written as `<task>.json` like every other task.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_finetuning.data.formats import RowError, to_record
from llm_finetuning.errors import DataError, UserError
from llm_finetuning.evaluation.classification import classification_metrics, confusion, per_class_table
from llm_finetuning.evaluation.retrieval import RetrievalSet, rerank_metrics, retrieval_metrics
from llm_finetuning.evaluation.runner import TaskResult
from llm_finetuning.models.sentence_kind import encoder_kind, final_dir

logger = logging.getLogger(__name__)

KINDS = {"retrieval": "embedding", "rerank": "reranker", "classification": "classify"}
"""Task kind -> the method whose models it evaluates."""
RERANK_CANDIDATES = 10
"""Documents a reranker orders per query when the rows bring no negatives: the positive and the abstracts that
share the most words with the query."""


def model_kind(target: str | Path) -> str | None:
    """`embedding`, `reranker` or `classify` for a model (or run) of those methods; None for anything else."""
    path = _model_dir(target)
    config = path / "llmft_config.yaml"
    if (
        config.is_file()
        and (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("method", {}).get("name") == "classify"
    ):
        return "classify"
    return encoder_kind(path)


def _model_dir(target: str | Path) -> Path:
    return final_dir(Path(target))


def load_model(target: str | Path, kind: str) -> Any:
    """The model to evaluate: a SentenceTransformer, a CrossEncoder, or (classify) the classifier and tokenizer."""
    path = str(_model_dir(target))
    if kind == "embedding":
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(path)
    if kind == "reranker":
        from sentence_transformers import CrossEncoder

        return CrossEncoder(path)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return AutoModelForSequenceClassification.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def load_rows(task: Any, kind: str, limit: int | None) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(where, record) pairs of the task, at most `limit`, and the rows skipped as unusable."""
    from llm_finetuning.data.datasets import registry
    from llm_finetuning.evaluation.tasks import TASKS, _file_rows, _named_rows

    spec = TASKS[task.name]
    record_kind = "labeled_text" if kind == "classification" else "retrieval"
    dataset = spec.dataset or task.dataset
    if dataset is not None:
        convert = registry()[dataset].converters.get(record_kind)
        if convert is None:
            raise DataError(f"task `{task.name}`: dataset `{dataset}` gives no {record_kind} rows")
        rows = _named_rows(dataset, task.path, task.split or spec.split, task.subset)
    else:
        fmt = task.format or record_kind

        def convert(data: dict[str, Any]) -> dict[str, Any]:
            return to_record(data, fmt, task.columns)

        rows = _file_rows(task.path)
    out: list[tuple[str, dict[str, Any]]] = []
    skipped: list[str] = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        if isinstance(row, DataError):
            skipped.append(str(row))
            continue
        try:
            out.append((row.where, convert(row.data)))
        except (RowError, DataError) as exc:
            skipped.append(f"{row.where}: {exc}")
    if not out:
        raise DataError(f"task `{task.name}`: no usable rows in {task.path or dataset}")
    return out, skipped


def lexical_negatives(rows: list[tuple[str, dict[str, Any]]], count: int) -> list[tuple[str, dict[str, Any]]]:
    """Rows without negatives get the other rows' positives that share the most words with the query, so a
    reranker has a hard, fixed candidate list to order."""
    if all(record["negatives"] for _, record in rows):
        return rows
    words = [set(_words(record["positive"])) for _, record in rows]
    out = []
    for index, (where, record) in enumerate(rows):
        if record["negatives"]:
            out.append((where, record))
            continue
        query = set(_words(record["query"]))
        ranked = sorted((j for j in range(len(rows)) if j != index), key=lambda j: (-len(query & words[j]), j))
        negatives = [
            rows[j][1]["positive"] for j in ranked[: count - 1] if rows[j][1]["positive"] != record["positive"]
        ]
        out.append((where, {**record, "negatives": negatives}))
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def evaluate_task(model: Any, task: Any, kind: str, batch_size: int, limit: int | None, name: str = "") -> TaskResult:
    """Run one encoder task on a loaded model; nothing is written."""
    rows, skipped = load_rows(task, kind, task.limit or limit)
    if kind == "retrieval":
        data = RetrievalSet.from_rows(rows)
        for _, record in rows:
            data.add_corpus(record["negatives"])
        metrics = retrieval_metrics(model, data, batch_size)
        records: list[dict[str, Any]] = []
    elif kind == "rerank":
        metrics = rerank_metrics(model, RetrievalSet.from_rows(lexical_negatives(rows, RERANK_CANDIDATES)), batch_size)
        records = []
    else:
        metrics, records = _classification(model, rows, batch_size)
    metrics = {**metrics, "examples": float(len(rows))}
    settings = {"task": task.model_dump(exclude_defaults=True), "limit": task.limit or limit, "batch_size": batch_size}
    logger.info("%s: %s", task.name, ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float)))
    return TaskResult(task.name, metrics, records, skipped, settings, name)


def _classification(loaded: Any, rows: list[tuple[str, dict[str, Any]]], batch_size: int) -> tuple[dict, list]:
    import torch
    from transformers import DataCollatorWithPadding

    model, tokenizer = loaded
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({r["label"] for _, r in rows if isinstance(r["label"], str) and r["label"] not in index})
    if unknown:
        raise DataError(f"the rows have labels the model does not know ({', '.join(unknown)}); it knows {labels}")
    multi = model.config.problem_type == "multi_label_classification"
    collate = DataCollatorWithPadding(tokenizer)
    model.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            chunk = [r for _, r in rows[start : start + batch_size]]
            pairs = [r["text_pair"] for r in chunk]
            texts = [r["text"] for r in chunk]
            limit = {"truncation": True, "max_length": min(tokenizer.model_max_length, 512)}
            encoded = tokenizer(texts, pairs, **limit) if any(pairs) else tokenizer(texts, **limit)
            batch = collate([{k: encoded[k][i] for k in encoded} for i in range(len(chunk))])
            logits.append(model(**batch).logits.float().numpy())
    scores = np.concatenate(logits)
    if multi:
        gold = np.array([[int(label in r["label"]) for label in labels] for _, r in rows])
        predicted = (1 / (1 + np.exp(-scores)) > 0.5).astype(int)
    else:
        gold = np.array([index[r["label"]] for _, r in rows])
        predicted = scores.argmax(-1)
    metrics = classification_metrics(gold, predicted, labels)
    per_class = metrics.pop("per_class")
    flat = {**metrics, **{f"f1/{label}": values["f1"] for label, values in per_class.items()}}
    records = [
        {"id": where, "gold": r["label"], "prediction": _names(p, labels, multi)}
        for (where, r), p in zip(rows, predicted, strict=True)
    ]
    records.insert(0, {"per_class": per_class, "confusion": confusion(gold, predicted, labels)})
    logger.info("per class:\n%s", per_class_table({"per_class": per_class}))
    return flat, records


def _names(predicted: Any, labels: list[str], multi: bool) -> Any:
    if multi:
        return [label for label, on in zip(labels, predicted, strict=True) if on]
    return labels[int(predicted)]


def evaluate(target: str | Path, tasks: list[Any], out_dir: Path, batch_size: int = 32, limit: int | None = None):
    """Every task on `target` (a run or model of the embedding, reranker or classify methods); results written to
    `out_dir/<task>.json`."""
    from llm_finetuning.evaluation.tasks import TASKS

    kind = model_kind(target)
    if kind is None:
        raise UserError(f"{target}: not an embedding, reranker or classifier model")
    wrong = [t.name for t in tasks if KINDS.get(TASKS[t.name].kind) != kind]
    if wrong:
        raise UserError(f"task(s) {', '.join(wrong)} do not evaluate a `{kind}` model")
    model = load_model(target, kind)
    results = {}
    for task in tasks:
        result = evaluate_task(model, task, TASKS[task.name].kind, batch_size, limit, str(target))
        result.write(out_dir / f"{task.name}.json")
        results[task.name] = result
    return results


def before_after(run_dir: str | Path, tasks: list[Any], batch_size: int = 32, limit: int | None = None) -> dict:
    """The run's starting model and its `final/` on the same tasks: `{task/metric: {"before", "after"}}`, also
    written to RUN/eval/before_after.json and .md."""
    import json

    run = Path(run_dir)
    kind = model_kind(run)
    if kind is None:
        raise UserError(f"{run}: not a run of the embedding, reranker or classify methods")
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    start = _starting_model(run, config, kind)
    table: dict[str, dict[str, float]] = {}
    for label, target in (("before", start), ("after", run / "final")):
        results = evaluate(target, tasks, run / "eval" / label, batch_size, limit)
        for name, result in results.items():
            for metric, value in result.metrics.items():
                if metric != "examples":
                    table.setdefault(f"{name}/{metric}", {})[label] = value
    (run / "eval").mkdir(parents=True, exist_ok=True)
    (run / "eval" / "before_after.json").write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    lines = ["| task / metric | before | after | change |", "|---|---:|---:|---:|"]
    for key, values in table.items():
        lines.append(
            f"| {key} | {values['before']:.4f} | {values['after']:.4f} | {values['after'] - values['before']:+.4f} |"
        )
    (run / "eval" / "before_after.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return table


def _starting_model(run: Path, config: dict[str, Any], kind: str) -> Path:
    """The untrained starting point in the run's own layout, saved once to RUN/eval/start (a head that is new is
    initialised as the trainer initialised it: with the run's seed)."""
    start = run / "eval" / "start"
    if (start / "llmft_config.yaml").is_file():
        return start
    from transformers import set_seed

    from llm_finetuning.config.schema import Config

    parsed = Config.model_validate(config)
    name = str(run / "base") if parsed.model.name == "tiny" else parsed.model.name
    set_seed(parsed.training.seed)
    start.mkdir(parents=True, exist_ok=True)
    if kind == "embedding":
        from llm_finetuning.methods.embedding import build_model

        build_model(parsed, name).save_pretrained(str(start))
    elif kind == "reranker":
        from sentence_transformers import CrossEncoder

        CrossEncoder(name, num_labels=1, max_length=parsed.data.max_length).save_pretrained(str(start))
    else:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        final = AutoModelForSequenceClassification.from_pretrained(run / "final")
        model = AutoModelForSequenceClassification.from_pretrained(name, config=final.config)
        model.save_pretrained(start)
        AutoTokenizer.from_pretrained(run / "final").save_pretrained(start)
    (start / "llmft_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return start
