"""From `data:` config to tokenized train/eval datasets, with every dropped or cut row counted."""

from __future__ import annotations

import difflib
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from llm_finetuning.config.schema import DataConfig, DataSource
from llm_finetuning.data.cleaning import clean_rows
from llm_finetuning.data.formats import FORMAT_KIND, Record, RowError, add_system_prompt, to_record
from llm_finetuning.data.reading import Row, read_rows, read_source, source_fingerprint
from llm_finetuning.data.tokenize import IGNORE_INDEX, Encoded, encode, render_checked
from llm_finetuning.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass
class SplitStats:
    """What happened to the rows of one split."""

    rows: int = 0
    examples: int = 0
    skipped_bad_rows: int = 0
    truncated: int = 0
    dropped_no_completion_after_truncation: int = 0
    tokens: int = 0
    completion_tokens: int = 0
    dropped_tail_tokens: int = 0
    bad_rows: list[str] = field(default_factory=list)


@dataclass
class PreparedData:
    train: Dataset
    eval: Dataset | None
    stats: dict[str, SplitStats]
    fingerprints: dict[str, str]
    clean_report: Any = None

    def stats_dict(self, examples: int = 5) -> dict[str, Any]:
        """Per-split statistics, with only the first few dropped-row messages (all are in `dropped_rows()`)."""
        out = {}
        for name, split in self.stats.items():
            out[name] = asdict(split)
            out[name]["bad_rows"] = split.bad_rows[:examples]
        return out

    def dropped_rows(self) -> list[str]:
        return [f"{name}: {message}" for name, split in self.stats.items() for message in split.bad_rows]


def handle_bad_row(
    exc: Exception, item: Row | DataError | str, source: DataSource, on_error: str, stats: SplitStats
) -> None:
    """Stop with the row's location and field, or count and record it: no row is dropped silently."""
    where = item.where if isinstance(item, Row) else item if isinstance(item, str) else ""
    message = f"{where}: {exc}" if where and not str(exc).startswith(where) else str(exc)
    if on_error == "fail":
        hint = f"(format `{source.format}`; set `data.on_error: skip` to drop and report such rows)"
        raise DataError(f"{message}\n{hint}") from None
    stats.skipped_bad_rows += 1
    stats.bad_rows.append(message)


def load_records(source: DataSource, on_error: str, stats: SplitStats, kind: str) -> list[tuple[str, Record]]:
    """Read one source into (row location, record) pairs of the given kind, stopping or counting at bad rows."""
    if source.dataset is not None:
        return load_named(source, on_error, stats, kind)
    if FORMAT_KIND[source.format] != kind:
        raise ConfigError(
            f"data source {source.label}: `format: {source.format}` gives {FORMAT_KIND[source.format]} records, "
            f"but this method trains on {kind} records ({', '.join(f for f, k in FORMAT_KIND.items() if k == kind)})."
        )
    out = []
    for item in read_source(source):
        stats.rows += 1
        try:
            if isinstance(item, DataError):
                raise item
            out.append((item.where, to_record(item.data, source.format, source.columns, source.system_prompt)))
        except (RowError, DataError) as exc:
            handle_bad_row(exc, item, source, on_error, stats)
    return out


def load_named(source: DataSource, on_error: str, stats: SplitStats, kind: str) -> list[tuple[str, Record]]:
    """Rows of a named dataset (its hub copy, or a local file of the same layout) through its own mapping."""
    from llm_finetuning.data.datasets import registry

    datasets = registry()
    named = datasets.get(source.dataset)
    if named is None:
        close = difflib.get_close_matches(source.dataset, list(datasets), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise ConfigError(
            f"data source: unknown dataset `{source.dataset}`.{hint} Known: {', '.join(sorted(datasets))}"
        )
    convert = named.converters.get(kind)
    if convert is None:
        raise ConfigError(
            f"data source: dataset `{named.name}` gives {', '.join(named.converters)} records, but this method trains "
            f"on {kind} records."
        )
    split = named.splits.get(source.split or "train", source.split or "train")
    if source.path is None and split in named.test_splits and not source.allow_test_split:
        raise ConfigError(
            f"data source: `{named.name}` split `{split}` is its test split; training on it would spoil evaluation. "
            "Choose another split, or set `allow_test_split: true` if you mean it."
        )
    rows = (
        read_rows(source.path, source.max_samples)
        if source.path is not None
        else read_source(
            source.model_copy(update={"hub": named.hub_id, "subset": source.subset or named.subset, "split": split})
        )
    )
    out = []
    for item in rows:
        stats.rows += 1
        try:
            if isinstance(item, DataError):
                raise item
            out.append((item.where, add_system_prompt(convert(item.data), source.system_prompt)))
        except (RowError, DataError) as exc:
            handle_bad_row(exc, item, source, on_error, stats)
    return out


def split_eval(rows: list, fraction: float, seed: int, stats: dict[str, SplitStats]) -> tuple[list, list]:
    """Hold out a seeded random `fraction` of the rows for evaluation; returns (train, eval)."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    cut = max(1, round(len(rows) * fraction))
    stats["train"].rows -= cut
    stats["eval"].rows = cut
    return rows[cut:], rows[:cut]


def _bad_row(where: str, exc: RowError, on_error: str, stats: SplitStats) -> None:
    """A row that failed rendering or tokenizing: stop with its location, or count and record it."""
    if on_error == "fail":
        raise DataError(f"{where}: {exc}") from None
    stats.skipped_bad_rows += 1
    stats.bad_rows.append(f"{where}: {exc}")


def tokenize_rows(
    rows: list[tuple[str, Record]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    train_on_prompt: bool,
    on_error: str,
    stats: SplitStats,
) -> Dataset:
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for where, record in rows:
        try:
            encoded: Encoded = encode(tokenizer, record["messages"], train_on_prompt, record.get("tools"))
        except RowError as exc:
            _bad_row(where, exc, on_error, stats)
            continue
        ids, lab = encoded.input_ids, encoded.labels
        if len(ids) > max_length:
            stats.truncated += 1
            ids, lab = ids[:max_length], lab[:max_length]
            if all(label == IGNORE_INDEX for label in lab):
                stats.dropped_no_completion_after_truncation += 1
                continue
        input_ids.append(ids)
        labels.append(lab)
        stats.tokens += len(ids)
        stats.completion_tokens += sum(label != IGNORE_INDEX for label in lab)
    stats.examples = len(input_ids)
    return Dataset.from_dict({"input_ids": input_ids, "labels": labels})


def _read_split(sources: list[DataSource], config: DataConfig, stats: SplitStats, prints: dict[str, str]):
    rows = []
    for source in sources:
        rows.extend(load_records(source, config.on_error, stats, "messages"))
        prints[source.label] = source_fingerprint(source)
    return rows


def prepare_data(
    config: DataConfig, tokenizer: PreTrainedTokenizerBase, train_on_prompt: bool, seed: int
) -> PreparedData:
    """Read, validate, split and tokenize the train and eval data named by `config`."""
    stats = {"train": SplitStats()}
    prints: dict[str, str] = {}
    train_rows = _read_split(config.train, config, stats["train"], prints)
    eval_rows: list[tuple[str, list]] = []
    if config.eval:
        stats["eval"] = SplitStats()
        eval_rows = _read_split(config.eval, config, stats["eval"], prints)
    train_rows, clean_report = clean_rows(train_rows, config, eval_rows, "messages")
    if not config.eval and config.eval_split:
        stats["eval"] = SplitStats()
        train_rows, eval_rows = split_eval(train_rows, config.eval_split, seed, stats)
    if not train_rows:
        raise DataError("No usable training rows: every row was skipped as malformed. See the log for examples.")

    train = tokenize_rows(train_rows, tokenizer, config.max_length, train_on_prompt, config.on_error, stats["train"])
    evaluation = None
    if "eval" in stats:
        evaluation = tokenize_rows(
            eval_rows, tokenizer, config.max_length, train_on_prompt, config.on_error, stats["eval"]
        )
    for name, split in stats.items():
        _report(name, split, config.max_length)
    if len(train) == 0:
        raise DataError(
            f"No training example is left after truncation to `data.max_length` ({config.max_length}): "
            "every completion was cut off. Raise `data.max_length`."
        )
    return PreparedData(train, evaluation, stats, prints, clean_report)


def _report(name: str, stats: SplitStats, max_length: int) -> None:
    if stats.tokens:
        logger.info(
            "%s data: %d rows -> %d examples, %d tokens (%d with loss)",
            name,
            stats.rows,
            stats.examples,
            stats.tokens,
            stats.completion_tokens,
        )
    else:  # records tokenized later by the trainer
        logger.info("%s data: %d rows -> %d examples", name, stats.rows, stats.examples)
    if stats.skipped_bad_rows:
        logger.warning(
            "%s data: skipped %d malformed rows, e.g. %s",
            name,
            stats.skipped_bad_rows,
            stats.bad_rows[0] if stats.bad_rows else "",
        )
    if stats.truncated and stats.truncated == stats.dropped_no_completion_after_truncation:
        logger.warning(
            "%s data: %d examples were longer than the limit of %d tokens and were dropped. Raise the limit "
            "(data.max_length, or method.max_prompt_length for GRPO) to keep them.",
            name,
            stats.truncated,
            max_length,
        )
    elif stats.truncated:
        logger.warning(
            "%s data: %d examples were longer than data.max_length=%d and were cut at the end; %d of them lost "
            "their whole completion and were dropped. Raise data.max_length to keep them whole.",
            name,
            stats.truncated,
            max_length,
            stats.dropped_no_completion_after_truncation,
        )


def _token_count(tokenizer: PreTrainedTokenizerBase, messages: list, generation_prompt: bool = False) -> int:
    text = render_checked(tokenizer, messages, generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def record_lengths(tokenizer: PreTrainedTokenizerBase, record: Record) -> tuple[int, int | None]:
    """Tokens of the prompt (with the generation prompt) and of the longest prompt + response (None: no
    response, a prompt-only record); every rendering is checked for lost or merged turns."""
    prompt = _token_count(tokenizer, record["prompt"], generation_prompt=True)
    responses = [record[k] for k in ("chosen", "rejected", "completion") if k in record]
    if not responses:
        return prompt, None
    return prompt, max(_token_count(tokenizer, record["prompt"] + r) for r in responses)


def fit_lengths(
    rows: list[tuple[str, Record]],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    stats: SplitStats,
    drop_long: bool,
    on_error: str = "fail",
) -> list[tuple[str, Record]]:
    """Count records longer than `max_length`; drop those whose prompt leaves no room for a response (their
    loss would be empty or NaN), or every long one when the trainer cannot truncate (`drop_long`). A record the
    chat template renders incompletely is a bad row (`on_error`). `max_length` None: only that check."""
    kept = []
    for where, record in rows:
        try:
            prompt, longest = record_lengths(tokenizer, record)
        except RowError as exc:
            _bad_row(where, exc, on_error, stats)
            continue
        if max_length is None:
            kept.append((where, record))
            continue
        if longest is None:  # prompt_only: the prompt (with the generation prompt) must fit on its own
            if prompt > max_length:
                stats.truncated += 1
                stats.dropped_no_completion_after_truncation += 1
            else:
                kept.append((where, record))
            continue
        if longest > max_length:
            stats.truncated += 1
            if drop_long or prompt >= max_length:
                stats.dropped_no_completion_after_truncation += 1
                continue
        kept.append((where, record))
    return kept


def prepare_records(
    config: DataConfig,
    kind: str,
    seed: int,
    tokenizer: PreTrainedTokenizerBase | None = None,
    drop_long: bool = False,
    fit: bool = True,
) -> PreparedData:
    """Read, validate, clean and split records of one kind, untokenized (preference methods tokenize them
    with the chat template inside TRL's trainers); with a tokenizer, every rendering is checked for lost turns
    and, with `fit`, over-long records are counted and those that cannot train are dropped (see `fit_lengths`)."""
    stats = {"train": SplitStats()}
    prints: dict[str, str] = {}

    def read(sources: list[DataSource], split: SplitStats) -> list[tuple[str, Record]]:
        rows = []
        for source in sources:
            rows.extend(load_records(source, config.on_error, split, kind))
            prints[source.label] = source_fingerprint(source)
        return rows

    train_rows = read(config.train, stats["train"])
    eval_rows: list[tuple[str, Record]] = []
    if config.eval:
        stats["eval"] = SplitStats()
        eval_rows = read(config.eval, stats["eval"])
    train_rows, clean_report = clean_rows(train_rows, config, eval_rows, "record")
    if not config.eval and config.eval_split:
        stats["eval"] = SplitStats()
        train_rows, eval_rows = split_eval(train_rows, config.eval_split, seed, stats)
    if not train_rows:
        raise DataError("No usable training rows: every row was skipped as malformed. See the log for examples.")
    if tokenizer is not None:
        limit = config.max_length if fit else None
        train_rows = fit_lengths(train_rows, tokenizer, limit, stats["train"], drop_long, config.on_error)
        if "eval" in stats:
            eval_rows = fit_lengths(eval_rows, tokenizer, limit, stats["eval"], drop_long, config.on_error)
    for name, rows in (("train", train_rows), ("eval", eval_rows)):
        if name in stats:
            stats[name].examples = len(rows)
            _report(name, stats[name], config.max_length)
    if not train_rows:
        if not fit:
            raise DataError("No usable training rows: every row was skipped as malformed. See the log for examples.")
        raise DataError(
            f"No training example fits `data.max_length` ({config.max_length}): every prompt fills it"
            f"{' or the pair is longer' if drop_long else ''}. Raise `data.max_length`."
        )
    evaluation = Dataset.from_list([r for _, r in eval_rows]) if "eval" in stats else None
    return PreparedData(Dataset.from_list([r for _, r in train_rows]), evaluation, stats, prints, clean_report)
