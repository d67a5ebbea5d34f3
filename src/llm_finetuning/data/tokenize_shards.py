"""`llmft data tokenize CONFIG OUT`: the pretraining data path as a datatrove pipeline. Every task tokenizes its
shards of the run's training folder with the run's tokenizer and writes, per shard, one Parquet row of token ids
(EOS appended when `method.add_eos`) per document; `OUT/llmft_tokens.json` records the tokenizer and the shards.

A `data.streaming` run whose source `path` is such a folder reads the token ids instead of tokenizing: the same
documents in the same order, so the same blocks, as streaming the raw shards (the stream is cut into blocks at
read time, across shards, so no tail is dropped per shard)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from llm_finetuning.config.schema import Config
from llm_finetuning.data.clean.config import ShardedRunConfig
from llm_finetuning.data.clean.sharded import executor_for, list_shards
from llm_finetuning.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

MARKER = "llmft_tokens.json"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """Equal for tokenizers that map text to the same ids: the serialized fast tokenizer, or the vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tokenized_folder(path: Path) -> dict[str, Any] | None:
    """The marker of a folder `llmft data tokenize` wrote, or None."""
    marker = path / MARKER
    return json.loads(marker.read_text(encoding="utf-8")) if path.is_dir() and marker.is_file() else None


def tokenize_shards(config: Config, output_dir: Path, run: ShardedRunConfig | None = None) -> dict[str, Any]:
    """Tokenize the folder of `config.data.train` (one source, a folder of `text` shards) into `output_dir`."""
    from datatrove.pipeline.writers import ParquetWriter

    from llm_finetuning.data.clean.datatrove_steps import Tokenize, record_of
    from llm_finetuning.models.loading import load_tokenizer

    run = run or ShardedRunConfig()
    if len(config.data.train) != 1 or config.data.train[0].path is None or not Path(config.data.train[0].path).is_dir():
        raise ConfigError("data.train: `llmft data tokenize` reads one source whose `path` is a folder of shards")
    source = config.data.train[0]
    if source.format != "text":
        raise ConfigError(f"data source {source.label}: tokenizing for pretraining reads `format: text` documents")
    if output_dir.exists() and any(output_dir.iterdir()):
        raise ConfigError(f"{output_dir}: the output folder is not empty; choose a new one or empty it")
    tokenizer = load_tokenizer(config.model)
    folder = Path(source.path)
    shards = list_shards(folder)
    plan = {
        "input": str(folder.resolve()),
        "shards": shards,
        "column": source.columns.get("text", "text"),
        "model": config.model.model_dump(mode="json"),
        "add_eos": config.method.add_eos,
    }
    tasks = min(run.tasks or len(shards), len(shards))
    writer = ParquetWriter(str(output_dir), output_filename="${output}", adapter=record_of, max_file_size=-1)
    logs = output_dir / ".llmft-tokenize" / "logs"
    if run.executor == "slurm":
        raise ConfigError("`llmft data tokenize` runs locally or on Ray (executor.executor: slurm is for `data clean`)")
    executor_for(run, [Tokenize(plan), writer], tasks, logs, "tokenize", None).run()
    written = sorted(p.relative_to(output_dir).as_posix() for p in output_dir.rglob("*.parquet"))
    if len(written) != len(shards):
        raise DataError(f"the tokenize pipeline did not finish: see the task logs in {logs}")
    marker = {
        "tokenizer": config.model.tokenizer or config.model.name,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "add_eos": config.method.add_eos,
        "eos_token_id": tokenizer.eos_token_id,
        "source": str(folder.resolve()),
        "shards": written,
    }
    (output_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    logger.info("tokenized %d shards into %s", len(shards), output_dir)
    return marker
