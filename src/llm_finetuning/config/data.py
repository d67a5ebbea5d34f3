"""The `data:` section of the config schema: training and evaluation sources, sequence length, cleaning and
streaming. Re-exported by `config.schema`, where the whole schema is assembled."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llm_finetuning.config.base import Section, conflict
from llm_finetuning.data.clean.config import CleanConfig


class DataSource(Section):
    """One data source (a local file, or a hub dataset), its format and how its columns map to the format."""

    dataset: str | None = None
    """A named dataset of the collection (`gsm8k`, `arc`, `medqa`...: `llmft data datasets` lists them). It knows
    its hub id, split and row mapping; with `path` it reads a local file of the same layout instead."""
    allow_test_split: bool = False
    """Allow training on a named dataset's test split (refused by default, to keep evaluations honest)."""
    path: str | None = None
    """Local file: `.jsonl`, `.json` (a list of objects), `.csv`, `.parquet`, each optionally gzipped (`.gz`).
    Relative paths are relative to the YAML file that sets them."""
    hub: str | None = None
    """Hub dataset id (`openai/gsm8k`) or a local directory in hub layout, read with `datasets.load_dataset`."""
    subset: str | None = None
    """Hub dataset configuration (e.g. `main` for GSM8K); for a named dataset, overrides its own (e.g.
    `ARC-Easy` for `arc`)."""
    split: str | None = None
    """Split of the hub dataset to read (`train`, `test`, `train[:10%]`); `train` when unset."""
    revision: str | None = None
    """Hub dataset revision (branch, tag or commit)."""
    format: Literal[
        "messages",
        "sharegpt",
        "alpaca",
        "prompt_completion",
        "preference",
        "unpaired",
        "prompt_only",
        "text",
        "retrieval",
        "scored_pair",
        "labeled_text",
    ] = "messages"
    """Row format: `messages` (OpenAI chat format), `sharegpt` (conversations of {from, value}), `alpaca`
    (instruction, input, output), `prompt_completion`, `preference` (prompt, chosen, rejected; HH-RLHF transcripts
    too), `unpaired` (prompt, completion, label), `prompt_only` (prompt + extra columns), `text` (raw documents);
    for embedding, reranker and classification models: `retrieval` (query, positive, optional negatives: pairs,
    triplets or n-tuples), `scored_pair` (text1, text2, score) and `labeled_text` (text, optional text_pair, label:
    a class, a list of classes, or a number)."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Map from the format's field name to the column in the data, e.g. `{instruction: question,
    output: answer}` or `{messages: conversations}`."""
    max_samples: int | None = Field(None, gt=0)
    """Use only the first N rows."""
    system_prompt: str | None = None
    """System message put before every conversation that has none."""
    head: str | None = None
    """`method: multi_head`: the head (`method.heads[].name`) this source's rows train or evaluate."""

    @model_validator(mode="after")
    def _one_origin(self) -> DataSource:
        if self.dataset is not None:
            if self.hub is not None:
                raise conflict("dataset", "hub", " (a named dataset knows its hub id)")
            # A resolved config (config.yaml) spells out the default format: only another one is a conflict.
            if self.format != "messages" or self.columns:
                raise ValueError("a named `dataset` maps its own rows; remove `format` and `columns`")
            return self
        if (self.path is None) == (self.hub is None):
            raise ValueError(
                "a data source needs exactly one of `path` (a local file), `hub` (a hub dataset) or `dataset`"
            )
        if self.path is not None and (self.subset is not None or self.split is not None):
            raise ValueError("`subset` and `split` apply to `hub` datasets, not to a local `path`")
        return self

    @property
    def label(self) -> str:
        """How messages and the manifest name this source."""
        if self.path is not None:
            return f"{self.dataset}:{self.path}" if self.dataset else self.path
        if self.dataset is not None:
            return f"{self.dataset}[{self.hub_split}]"
        return f"{self.hub}{f'/{self.subset}' if self.subset else ''}[{self.hub_split}]"

    @property
    def hub_split(self) -> str:
        return self.split or "train"


class DataConfig(Section):
    """Training and evaluation data, the prompt template and sequence length."""

    train: list[DataSource]
    """Training data: one source or a list of sources (concatenated)."""
    eval: list[DataSource] = Field(default_factory=list)
    """Evaluation data, one source or a list; if unset, `eval_split` can hold out part of `train`."""
    eval_split: float | None = Field(None, gt=0, lt=1)
    """Fraction of the training rows held out for evaluation when `eval` is not given."""
    max_length: int = Field(1024, gt=0)
    """Longest tokenized example. Longer ones are cut at the end and counted; the count is reported. With
    `method: pretrain` this is the block length the text is cut into."""
    packing: bool = False
    """Pack several examples into each sequence of up to `max_length` tokens (no padding, faster). Examples
    never attend to each other: positions restart per example and the attention isolates them; the run
    checks this on the model before training and refuses if the attention implementation cannot."""
    padding_free: bool = True
    """Without packing, put the examples of each batch end to end in one row instead of padding them to the longest:
    the same examples and the same loss, without computing padding. Applied when the attention keeps examples apart
    (checked on the model, as for packing) and attends per example (`model.attn_implementation: auto`, or
    `flash_attention_2`); batches are padded otherwise, and with a batch of one, prompt-learning adapters, pretraining
    blocks or a 4/8-bit base on CPU."""
    chat_template: str | None = None
    """Prompt template: unset uses the tokenizer's chat template; a built-in name or a Jinja template string replaces
    it. Built-ins: `chatml`, `alpaca`, and the tool-calling layouts `hermes` (Qwen2.5 `<tool_call>` tags),
    `llama3.1` (JSON calls, `ipython` results) and `mistral` (`[TOOL_CALLS]`). A tokenizer without a template needs
    one of these. Every row's rendering is checked: a template that drops or merges a turn, a call or a declared
    tool makes that row a bad row (see `on_error`)."""
    clean: CleanConfig | None = None
    """Clean the training rows before training: exact and near-duplicate removal, quality filters, PII
    redaction, decontamination against the eval data. Unset: no cleaning. The run writes `clean_report.json`."""
    clean_against: list[DataSource] = Field(default_factory=list)
    """Evaluation sets (any format) the training rows are decontaminated against, besides `data.eval`."""
    on_error: Literal["fail", "skip"] = "fail"
    """What a malformed row does: `fail` stops before training with its file, line and field; `skip` drops
    it, counts it, and reports every dropped row in the run's manifest."""
    streaming: bool = False
    """`method: pretrain`: read the training documents one at a time while training (a source's `path` may be a
    folder of shards), so memory stays flat however large the corpus is. Needs `training.max_steps` (a stream's
    length is not known up front); `data.clean` and `eval_split` need the whole corpus and are refused (clean
    the shards first with `llmft data clean FOLDER OUT`); `data.eval` is read into memory as usual."""
    shuffle_buffer: int = Field(0, ge=0)
    """With `streaming`: shuffle the blocks within a buffer of this many (0: the documents' order)."""

    @field_validator("train", "eval", "clean_against", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        # A single source is the common case; accept it without the list brackets.
        return [value] if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _eval_or_split(self) -> DataConfig:
        if not self.train:
            raise ValueError("`data.train` needs at least one source")
        if self.eval and self.eval_split is not None:
            raise conflict("data.eval", "data.eval_split", " (both define the evaluation data)")
        if self.streaming and self.clean is not None:
            raise conflict("data.streaming", "data.clean", " (cleaning needs the whole corpus; clean the shards first)")
        if self.streaming and self.eval_split is not None:
            raise conflict("data.streaming", "data.eval_split", " (a split needs the whole corpus; give data.eval)")
        if self.shuffle_buffer and not self.streaming:
            raise ValueError("`data.shuffle_buffer` applies to `data.streaming: true` only")
        return self
