"""Checks on a sample of every data source: bad rows, lengths against `data.max_length`, EOS closing every
completion, KTO label balance, and evaluation rows that also appear in training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from llm_finetuning.check.report import CheckReport, SourceSample
from llm_finetuning.config.schema import Config, DataSource
from llm_finetuning.data.pipeline import SplitStats, load_records, record_lengths
from llm_finetuning.data.tokenize import IGNORE_INDEX, Encoded, RowError, encode
from llm_finetuning.errors import DataError, UserError

# The record kind each method trains on.
METHOD_KIND = {
    "sft": "messages",
    "pretrain": "text",
    "reward": "preference",
    "dpo": "preference",
    "orpo": "preference",
    "kto": "unpaired",
    "ppo": "prompt_only",
    "grpo": "prompt_only",
}


def method_kind(config: Config, source: DataSource) -> str:
    """The record kind `source` is read as for the config's method (multi-head: per head)."""
    name = config.method.name
    if name == "embedding":
        return config.method.record_kind
    if name == "reranker":
        from llm_finetuning.methods.reranker import record_kind

        return record_kind(config)
    if name == "classify":
        return "labeled_text"
    if name == "multi_head":
        head = next(h for h in config.method.heads if h.name == source.head)
        return "text" if head.type == "lm" else "labeled_text"
    return METHOD_KIND[name]


PREVIEW = 3  # encoded examples kept for the masked preview
KTO_BALANCE = (0.75, 1.6)  # desirable : undesirable after weights; the KTO paper recommends 1 to 4/3


def sample_sources(
    config: Config, tokenizer: PreTrainedTokenizerBase, report: CheckReport, rows: int
) -> dict[str, list[dict[str, Any]]]:
    """Read up to `rows` rows of every source, record what they show, and return the records by split."""
    records: dict[str, list[dict[str, Any]]] = {"train": [], "eval": []}
    located: dict[str, list[tuple[str, dict[str, Any]]]] = {"train": [], "eval": []}
    splits = [("train", source) for source in config.data.train] + [("eval", s) for s in config.data.eval]
    for split, source in splits:
        sample = SourceSample(source.label, split)
        report.sources.append(sample)
        try:
            loaded = _read(source, method_kind(config, source), rows, sample)
        except UserError as exc:
            report.add("error", f"data.{split} {source.label}", str(exc))
            continue
        loaded = _measure(config, tokenizer, loaded, sample, report)
        if sample.bad_rows:
            level = "error" if config.data.on_error == "fail" else "warning"
            what = "training would stop at the first" if level == "error" else "they will be skipped and counted"
            report.add(
                level,
                f"data.{split} {source.label}",
                f"{len(sample.bad_rows)} of {sample.rows} sampled rows are malformed ({what}), e.g. "
                f"{sample.bad_rows[0]}",
            )
        records[split].extend(record for _, record in loaded)
        located[split].extend(loaded)
        if source.head is not None:
            located.setdefault(f"head:{source.head}", []).extend(loaded)
    _check_encoder_rows(config, located, report)
    _check_kto_balance(config, records["train"], report)
    _check_overlap(records, report)
    deduplicated = config.data.clean is not None and config.data.clean.dedup.exact
    if not config.data.eval and config.data.eval_split and not deduplicated:
        _check_duplicates_before_split(records["train"], report)
    return records


def _read(source: DataSource, kind: str, rows: int, sample: SourceSample) -> list[tuple[str, dict[str, Any]]]:
    if source.path is not None and Path(source.path).is_dir():  # a folder of shards (`data.streaming`)
        from itertools import islice

        from llm_finetuning.data.streaming import documents
        from llm_finetuning.data.tokenize_shards import tokenized_folder

        if tokenized_folder(Path(source.path)) is not None:
            return []  # token ids already: nothing to sample as text (the tokenizer is checked at the run's start)

        loaded: list[tuple[str, dict[str, Any]]] = []
        try:
            loaded = [(where, {"text": text}) for where, text in islice(documents(source), rows)]
        except DataError as exc:
            sample.bad_rows.append(str(exc))
        sample.rows = len(loaded) + len(sample.bad_rows)
        return loaded
    stats = SplitStats()
    limited = source.model_copy(update={"max_samples": min(rows, source.max_samples or rows)})
    loaded = load_records(limited, "skip", stats, kind)
    sample.rows = stats.rows
    sample.bad_rows = list(stats.bad_rows)
    return loaded


def _measure(
    config: Config,
    tokenizer: PreTrainedTokenizerBase,
    loaded: list[tuple[str, dict[str, Any]]],
    sample: SourceSample,
    report,
) -> list[tuple[str, dict[str, Any]]]:
    """Tokenize the sampled rows as training would; a row the chat template renders incompletely (or that
    cannot be encoded) is a bad row, not a usable one. Returns the usable rows."""
    where = f"data.{sample.split} {sample.label}"
    kept = []
    missing_eos = 0
    train_on_prompt = getattr(config.method, "train_on_prompt", False)
    for location, record in loaded:
        try:
            if "messages" in record:
                encoded = encode(tokenizer, record["messages"], train_on_prompt, record.get("tools"))
                sample.lengths.append(len(encoded.input_ids))
                if len(sample.examples) < PREVIEW:
                    sample.examples.append(encoded)
                missing_eos += not _completions_end_with_eos(encoded, tokenizer.eos_token_id)
            else:
                sample.lengths.append(_record_length(tokenizer, record))
        except RowError as exc:
            sample.bad_rows.append(f"{location}: {exc}")
            continue
        kept.append((location, record))
    if missing_eos:
        report.add(
            "error",
            where,
            f"{missing_eos} sampled examples have a completion that does not end with the EOS token "
            f"{tokenizer.eos_token!r}: the model would not learn to stop. Use a chat template that closes "
            "assistant turns with EOS (or a built-in one: `data.chat_template: chatml`).",
        )
    if sample.lengths and config.method.name != "pretrain":  # pretraining cuts every document into blocks
        limit = report.max_length
        over = sum(length > limit for length in sample.lengths)
        if over:
            share = over / len(sample.lengths)
            report.add(
                "warning" if share > 0.05 else "info",
                where,
                f"{over} of {len(sample.lengths)} sampled examples ({share:.0%}) are longer than "
                f"the limit of {limit} tokens (longest {max(sample.lengths)}) and will be cut or dropped. Raise "
                "`data.max_length` (GRPO: `method.max_prompt_length`) to keep them.",
            )
    return kept


def _completions_end_with_eos(encoded: Encoded, eos: int) -> bool:
    """Every run of loss-carrying tokens ends with EOS (the token that teaches the model to stop)."""
    labels = encoded.labels
    ends = [
        i
        for i, label in enumerate(labels)
        if label != IGNORE_INDEX and (i + 1 == len(labels) or labels[i + 1] == IGNORE_INDEX)
    ]
    return bool(ends) and all(labels[i] == eos for i in ends)


def _check_encoder_rows(config: Config, located: dict[str, list], report: CheckReport) -> None:
    """What the embedding, reranker and classify methods refuse beyond the format (a triplet without a negative,
    a label outside `method.labels`...), found on the sample exactly as training would find it."""
    from llm_finetuning.errors import DataError
    from llm_finetuning.methods import classify, embedding, reranker
    from llm_finetuning.methods.encoder_common import EncoderData

    name = config.method.name
    if name == "multi_head":
        from llm_finetuning.methods.multihead import HeadSpec, check_labels

        for head in config.method.heads:
            spec = HeadSpec(head.name, head.type, list(head.labels), head.multi_label, head.weight)
            try:
                check_labels(spec, [(w, dict(r)) for w, r in located.get(f"head:{head.name}", [])])
            except DataError as exc:
                report.add("error", f"method.heads {head.name}", str(exc))
        return
    if name not in ("embedding", "reranker", "classify") or not located["train"]:
        return
    try:
        if name == "embedding":
            embedding.check_rows(config, EncoderData(located["train"], located["eval"], {}, {}))
        elif name == "reranker":
            reranker.check_rows(config, reranker.record_kind(config), located["train"] + located["eval"])
        else:
            labels = classify.resolve_labels(config, located["train"], located["eval"])
            report.add("info", "method.labels", f"{len(labels)} classes: {', '.join(labels)}")
    except DataError as exc:
        report.add("error", f"method {name}", str(exc))


def _record_length(tokenizer: PreTrainedTokenizerBase, record: dict[str, Any]) -> int:
    if "query" in record:  # retrieval: the longest text the encoder reads
        texts = [record["query"], record["positive"], *record["negatives"]]
        return max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    if "text1" in record:
        return max(len(tokenizer(record[k], add_special_tokens=False)["input_ids"]) for k in ("text1", "text2"))
    if "text_pair" in record:
        pair = record["text_pair"]
        return len(tokenizer(record["text"], pair, add_special_tokens=False)["input_ids"])
    if "text" in record:
        return len(tokenizer(record["text"], add_special_tokens=False)["input_ids"])
    prompt, longest = record_lengths(tokenizer, record)
    return prompt if longest is None else longest


def _check_kto_balance(config: Config, records: list[dict[str, Any]], report: CheckReport) -> None:
    if config.method.name != "kto" or not records:
        return
    desirable = sum(bool(r["label"]) for r in records)
    undesirable = len(records) - desirable
    if not desirable or not undesirable:
        which = "undesirable" if desirable else "desirable"
        report.add("error", "data.train", f"the sampled KTO rows have no {which} example; KTO needs both labels.")
        return
    method = config.method
    ratio = (method.desirable_weight * desirable) / (method.undesirable_weight * undesirable)
    low, high = KTO_BALANCE
    if not low <= ratio <= high:
        suggested = undesirable / desirable * method.undesirable_weight
        report.add(
            "warning",
            "method.desirable_weight",
            f"{desirable} desirable vs {undesirable} undesirable sampled rows: weighted ratio {ratio:.2f}, outside "
            f"{low}-{high} (the KTO paper recommends 1 to 4/3). Set `method.desirable_weight: {suggested:.2f}` "
            "(or adjust `method.undesirable_weight`).",
        )


def _fingerprint(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _check_overlap(records: dict[str, list[dict[str, Any]]], report: CheckReport) -> None:
    if not records["eval"]:
        return
    train = {_fingerprint(r) for r in records["train"]}
    shared = sum(_fingerprint(r) in train for r in records["eval"])
    if shared:
        report.add(
            "warning",
            "data.eval",
            f"{shared} of {len(records['eval'])} sampled evaluation rows also appear in the training data: the "
            "evaluation would flatter the model. Remove them (`data.clean` with decontamination against the "
            "evaluation set does it).",
        )


def _check_duplicates_before_split(records: list[dict[str, Any]], report: CheckReport) -> None:
    """`data.eval_split` carves the evaluation rows out of the training data: a row repeated in it can land on
    both sides."""
    seen: set[str] = set()
    repeated = 0
    for record in records:
        key = _fingerprint(record)
        repeated += key in seen
        seen.add(key)
    if repeated:
        report.add(
            "warning",
            "data.eval_split",
            f"{repeated} of {len(records)} sampled training rows repeat an earlier row: the split can put copies "
            "on both sides, flattering the evaluation. Set `data.clean: {}` (exact deduplication runs before it).",
        )
