"""Continual pretraining on streamed shards: documents read one at a time, tokenized and cut into blocks as the
trainer asks for them, so memory stays flat however large the corpus is.

A training source's `path` may be one file or a folder of shards (every data file under it, in name order).
The blocks are the blocks the in-memory path makes (`text.to_blocks`) of the same documents, in the same order:
the token stream of each pass runs across documents and shards, and only the last partial block of a pass is
dropped. A pass that ends before `training.max_steps` starts the stream again (the next epoch).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from llm_finetuning.config.schema import DataConfig, DataSource
from llm_finetuning.data.reading import SUFFIXES, data_files, iter_rows
from llm_finetuning.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def shard_files(source: DataSource) -> list[Path]:
    """The files of a local source: the file itself, or every data file under the folder, sorted by name."""
    path = Path(source.path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"data source {source.label}: {path} is neither a file nor a folder")
    files = data_files(path)
    if not files:
        raise DataError(f"data source {source.label}: no data files ({', '.join(SUFFIXES)}, optionally .gz) in {path}")
    return files


def shards_fingerprint(source: DataSource) -> str:
    """Names, sizes and modification times of the shards (hashing a corpus's contents would read all of it)."""
    digest = hashlib.sha256()
    for path in shard_files(source):
        stat = path.stat()
        digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "shards:" + digest.hexdigest()[:16]


def documents(source: DataSource) -> Iterator[tuple[str, str]]:
    """(where, text) of each document of a `text` source, one at a time. A row without a string `text` stops
    the stream with its file and line: skipping rows silently has no place in a stream nobody counts."""
    if source.path is None:
        yield from _hub_documents(source)
        return
    for path in shard_files(source):
        for item in iter_rows(path):
            if isinstance(item, DataError):
                raise item
            yield item.where, document_text(item.data, source.columns.get("text", "text"), item.where)


def document_text(record: dict[str, Any], column: str, where: str) -> str:
    """The document of a row; a row without a string there stops the stream with its location."""
    text = record.get(column)
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a string `{column}` field, got {type(text).__name__}")
    return text


def _hub_documents(source: DataSource) -> Iterator[tuple[str, str]]:
    from datasets import load_dataset

    try:
        stream = load_dataset(
            source.hub, source.subset, split=source.hub_split, revision=source.revision, streaming=True
        )
    except Exception as exc:  # datasets raises many types (missing, offline, bad config)
        raise DataError(f"Could not stream hub dataset `{source.label}`: {exc}") from None
    column = source.columns.get("text", "text")
    for index, row in enumerate(stream, start=1):
        where = f"{source.label}:row {index}"
        yield where, document_text(row, column, where)


def block_stream(
    sources: list[DataSource], tokenizer: PreTrainedTokenizerBase, block: int, add_eos: bool
) -> Iterator[dict[str, list[int]]]:
    """One pass over the documents of `sources` as blocks of exactly `block` tokens, labels equal to inputs."""
    eos = [tokenizer.eos_token_id] if add_eos else []
    buffer: list[int] = []
    for source in sources:
        for ids in _token_documents(source, tokenizer, add_eos, eos):
            buffer.extend(ids)
            while len(buffer) >= block:
                ids, buffer = buffer[:block], buffer[block:]
                yield {"input_ids": ids, "labels": list(ids)}


def _token_documents(
    source: DataSource, tokenizer: PreTrainedTokenizerBase, add_eos: bool, eos: list[int]
) -> Iterator[list[int]]:
    """Each document's token ids (+ EOS): read from a folder `llmft data tokenize` wrote, or tokenized here."""
    from llm_finetuning.data.tokenize_shards import tokenized_folder, tokenizer_fingerprint

    marker = tokenized_folder(Path(source.path)) if source.path is not None else None
    if marker is None:
        for _, text in documents(source):
            yield tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        return
    if marker["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer) or marker["add_eos"] != add_eos:
        raise ConfigError(
            f"data source {source.label}: tokenized with `{marker['tokenizer']}` (add_eos {marker['add_eos']}), "
            f"which is not this run's tokenizer and method.add_eos ({add_eos}); tokenize again with this config"
        )
    for name in marker["shards"]:
        for item in iter_rows(Path(source.path) / name):
            if isinstance(item, DataError):
                raise item
            yield item.data["input_ids"]


def streamed_dataset(config: DataConfig, tokenizer: PreTrainedTokenizerBase, add_eos: bool, seed: int) -> Any:
    """A `datasets.IterableDataset` of the training blocks (shuffled in a buffer when `data.shuffle_buffer`)."""
    from datasets import Features, IterableDataset, Sequence, Value

    for source in config.train:
        if source.dataset is not None:
            raise ConfigError(f"data source {source.label}: named datasets are not streamed; give `path` or `hub`")
        if source.format != "text":
            raise ConfigError(f"data source {source.label}: streaming reads `format: text` documents")
    features = Features({"input_ids": Sequence(Value("int32")), "labels": Sequence(Value("int32"))})
    dataset = IterableDataset.from_generator(
        block_stream,
        features=features,
        gen_kwargs={"sources": config.train, "tokenizer": tokenizer, "block": config.max_length, "add_eos": add_eos},
    )
    if config.shuffle_buffer:
        dataset = dataset.shuffle(seed=seed, buffer_size=config.shuffle_buffer)
    return dataset
