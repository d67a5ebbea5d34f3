"""Raw text for continual pretraining: documents tokenized, joined with EOS and cut into equal blocks."""

from __future__ import annotations

import logging

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from llm_finetuning.config.schema import DataConfig, DataSource
from llm_finetuning.data.cleaning import clean_rows
from llm_finetuning.data.pipeline import PreparedData, SplitStats, load_records, split_eval
from llm_finetuning.data.reading import source_fingerprint
from llm_finetuning.errors import DataError

logger = logging.getLogger(__name__)


def read_documents(source: DataSource, on_error: str, stats: SplitStats) -> list[tuple[str, str]]:
    return [(where, record["text"]) for where, record in load_records(source, on_error, stats, "text")]


def to_blocks(
    documents: list[tuple[str, str]], tokenizer: PreTrainedTokenizerBase, block: int, add_eos: bool, stats: SplitStats
) -> Dataset:
    """Concatenate the tokenized documents and cut the stream into blocks of exactly `block` tokens."""
    stream: list[int] = []
    eos = [tokenizer.eos_token_id] if add_eos else []
    for _, text in documents:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + eos)
    usable = len(stream) // block * block
    blocks = [stream[i : i + block] for i in range(0, usable, block)]
    stats.examples = len(blocks)
    stats.tokens = stats.completion_tokens = usable
    stats.dropped_tail_tokens = len(stream) - usable
    return Dataset.from_dict({"input_ids": blocks, "labels": [list(b) for b in blocks]})


def prepare_text(config: DataConfig, tokenizer: PreTrainedTokenizerBase, add_eos: bool, seed: int) -> PreparedData:
    """Read raw documents, split off eval documents if asked, and cut both splits into blocks."""
    if config.streaming:
        return _streamed(config, tokenizer, add_eos, seed)
    stats = {"train": SplitStats()}
    prints: dict[str, str] = {}
    documents = []
    for source in config.train:
        documents.extend(read_documents(source, config.on_error, stats["train"]))
        prints[source.label] = source_fingerprint(source)
    eval_documents: list[tuple[str, str]] = []
    if config.eval:
        stats["eval"] = SplitStats()
        for source in config.eval:
            eval_documents.extend(read_documents(source, config.on_error, stats["eval"]))
            prints[source.label] = source_fingerprint(source)
    documents, clean_report = clean_rows(documents, config, eval_documents, "text")
    if not config.eval and config.eval_split:
        stats["eval"] = SplitStats()
        documents, eval_documents = split_eval(documents, config.eval_split, seed, stats)
    train = to_blocks(documents, tokenizer, config.max_length, add_eos, stats["train"])
    if len(train) == 0:
        raise DataError(
            f"The training text has {stats['train'].dropped_tail_tokens} tokens, fewer than one block of "
            f"`data.max_length` ({config.max_length}). Add text or lower data.max_length."
        )
    evaluation = None
    if "eval" in stats:
        evaluation = to_blocks(eval_documents, tokenizer, config.max_length, add_eos, stats["eval"])
    for name, split in stats.items():
        logger.info(
            "%s text: %d documents -> %d blocks of %d tokens (%d tokens at the end dropped)",
            name,
            split.rows - split.skipped_bad_rows,
            split.examples,
            config.max_length,
            split.dropped_tail_tokens,
        )
    return PreparedData(train, evaluation, stats, prints, clean_report)


def _streamed(config: DataConfig, tokenizer: PreTrainedTokenizerBase, add_eos: bool, seed: int) -> PreparedData:
    """Training blocks made while training (`data.streaming`); the eval documents, if any, read as usual."""
    from llm_finetuning.data.streaming import shards_fingerprint, streamed_dataset

    stats = {"train": SplitStats()}
    prints = {s.label: shards_fingerprint(s) if s.path else source_fingerprint(s) for s in config.train}
    train = streamed_dataset(config, tokenizer, add_eos, seed)
    evaluation = None
    if config.eval:
        stats["eval"] = SplitStats()
        documents = []
        for source in config.eval:
            documents.extend(read_documents(source, config.on_error, stats["eval"]))
            prints[source.label] = source_fingerprint(source)
        evaluation = to_blocks(documents, tokenizer, config.max_length, add_eos, stats["eval"])
    logger.info("train text: streamed from %d source(s) in blocks of %d tokens", len(config.train), config.max_length)
    return PreparedData(train, evaluation, stats, prints, None)
