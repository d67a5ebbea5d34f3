"""The datatrove pipeline steps of a sharded clean (see `sharded`). Each holds only the plan (plain data), so
that datatrove can ship it to local processes, Slurm jobs or Ray tasks."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from llm_finetuning.data.clean.config import CleanConfig
from llm_finetuning.data.clean.minhash import MinHasher
from llm_finetuning.data.clean.pii import redact_value
from llm_finetuning.data.clean.sharded import (
    decide,
    eval_index,
    features_of,
    output_name,
    save_features,
    write_report,
)
from llm_finetuning.data.clean.text import default_text_of
from llm_finetuning.data.reading import iter_rows
from llm_finetuning.errors import DataError

_BATCH = 4096  # rows whose features are computed together


def shard_documents(root: str, shards: Sequence[str], rank: int, world_size: int) -> Iterator[Document]:
    """Rows of this task's shards (every `world_size`-th from `rank`) as Documents, a row at a time. A bad row
    stops the task with its file and line (datatrove's own readers skip such rows with a warning)."""
    for number in range(rank, len(shards), world_size):
        for row, item in enumerate(iter_rows(Path(root) / shards[number])):
            if isinstance(item, DataError):
                raise item
            meta = {"shard": number, "row": row, "where": item.where, "record": item.data}
            yield Document(text=default_text_of(item.data), id=f"{number}:{row}", metadata=meta)


def record_of(self, document: Document) -> dict[str, Any]:
    """Writer adapter: the row as it was read (redacted where PII was found), not datatrove's document."""
    return document.metadata["record"]


class _PlanStep(PipelineStep):
    type = "llmft clean"

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__()
        self.plan = plan


class Features(_PlanStep):
    """Stage 1: the per-row features of this task's shards, saved under WORK/features/."""

    name = "features"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        plan = self.plan
        config = CleanConfig.model_validate(plan["clean"])
        index = eval_index(plan, config)
        hasher = MinHasher(config.near_dedup)
        parts, batch = [], []
        for document in shard_documents(plan["input"], plan["shards"], rank, world_size):
            batch.append(document)
            if len(batch) >= _BATCH:
                parts.append(features_of(batch, config, hasher, index))
                self.stat_update("rows", value=len(batch))
                batch = []
        if batch:
            parts.append(features_of(batch, config, hasher, index))
            self.stat_update("rows", value=len(batch))
        save_features(Path(plan["work"]) / "features" / f"{rank:05d}", parts, config)
        yield from ()


class Decide(_PlanStep):
    """Stage 2 (one task): the removals over the whole corpus, WORK/decisions.json."""

    name = "decide"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        decide(self.plan)
        yield from ()


class Apply(_PlanStep):
    """Stage 3: this task's rows again, less the removed ones, PII redacted, for the writer that follows."""

    name = "drop and redact"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        plan = self.plan
        config = CleanConfig.model_validate(plan["clean"])
        removed = json.loads((Path(plan["work"]) / "decisions.json").read_text(encoding="utf-8"))["removed"]
        gone = {int(number): set(rows) for number, rows in removed.items()}
        events = []
        for document in shard_documents(plan["input"], plan["shards"], rank, world_size):
            number, row = document.metadata["shard"], document.metadata["row"]
            if row in gone.get(number, ()):
                self.stat_update("removed")
                continue
            if config.pii.enabled:
                redacted, counts = redact_value(document.metadata["record"], config.pii.types)
                if counts:
                    document.metadata["record"] = redacted
                    events.append([number, row, document.metadata["where"], dict(counts)])
            document.metadata["output"] = output_name(plan["shards"][number], plan["output_format"])
            self.stat_update("kept")
            yield document
        path = Path(plan["work"]) / "pii" / f"{rank:05d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(events, ensure_ascii=False), encoding="utf-8")


class Report(_PlanStep):
    """Stage 4 (one task): OUTPUT/clean_report.json."""

    name = "report"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        write_report(self.plan)
        yield from ()


class Tokenize(_PlanStep):
    """The pretraining data path: each document's token ids (+ EOS), one output row per document, per shard."""

    type = "llmft tokenize"
    name = "tokenize"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from llm_finetuning.config.schema import ModelConfig
        from llm_finetuning.data.streaming import document_text
        from llm_finetuning.models.loading import load_tokenizer

        plan = self.plan
        tokenizer = load_tokenizer(ModelConfig.model_validate(plan["model"]))
        eos = [tokenizer.eos_token_id] if plan["add_eos"] else []
        for document in shard_documents(plan["input"], plan["shards"], rank, world_size):
            text = document_text(document.metadata["record"], plan["column"], document.metadata["where"])
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
            document.metadata["record"] = {"input_ids": ids}
            document.metadata["output"] = output_name(plan["shards"][document.metadata["shard"]], "parquet")
            self.stat_update("tokens", value=len(ids))
            yield document
