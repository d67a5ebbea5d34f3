"""The schema of a cleaning run: one sub-section per step, every field described by its docstring."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from llm_finetuning.config.base import Section

PiiType = Literal["email", "phone", "credit_card", "ip_address", "iban", "ssn"]
ALL_PII_TYPES: tuple[PiiType, ...] = ("email", "phone", "credit_card", "ip_address", "iban", "ssn")


class ExactDedupConfig(Section):
    """Removal of records whose normalised text equals an earlier record's."""

    exact: bool = True
    """Drop a record whose text, after NFKC, casefolding, whitespace collapsing and stripping punctuation at both
    ends, equals an earlier record's; the first occurrence is kept."""


class NearDedupConfig(Section):
    """Removal of near-duplicates found with MinHash signatures and locality-sensitive hashing (LSH)."""

    enabled: bool = True
    """Run near-duplicate removal. The first record of each cluster is kept."""
    threshold: float = Field(0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of the shingle sets at or above which a record is a near-duplicate of an
    earlier kept record. LSH bands and rows are derived from it and `num_perm`."""
    shingle: Literal["word", "char"] = "word"
    """Shingle unit: word n-grams (words are runs of letters and digits of the casefolded text) or character
    n-grams (of the casefolded text with whitespace collapsed)."""
    ngram: int = Field(5, ge=1)
    """Shingle size n, in words or characters. A text shorter than n is one shingle."""
    num_perm: int = Field(128, ge=8, le=1024)
    """Number of MinHash permutations (signature length). More is more precise and slower."""
    seed: int = 42
    """Seed of the permutations, so that a run is reproducible."""
    backend: Literal["rensa", "numpy"] = "rensa"
    """What computes the signatures and the LSH candidates: `rensa` (Rust, several times faster) or `numpy`
    (pure numpy, for platforms without a rensa wheel). Candidates are verified the same way by both; the
    signatures differ, so a pair near the threshold can be decided differently."""


class QualityConfig(Section):
    """Heuristic quality filters; each bound is off while it is null. Bounds are inclusive: a text at a bound
    passes."""

    min_chars: int | None = Field(None, ge=0)
    """Drop a text with fewer characters than this."""
    max_chars: int | None = Field(None, ge=0)
    """Drop a text with more characters than this."""
    min_words: int | None = Field(None, ge=0)
    """Drop a text with fewer words (whitespace-separated tokens) than this."""
    max_words: int | None = Field(None, ge=0)
    """Drop a text with more words (whitespace-separated tokens) than this."""
    max_url_ratio: float | None = Field(None, ge=0.0, le=1.0)
    """Drop a text in which URLs (`http://`, `https://` or `www.` up to the next whitespace) make up more than
    this fraction of the characters."""
    max_digit_ratio: float | None = Field(None, ge=0.0, le=1.0)
    """Drop a text in which decimal digits make up more than this fraction of the characters."""
    max_duplicate_line_ratio: float | None = Field(None, ge=0.0, le=1.0)
    """Drop a text in which more than this fraction of the non-empty lines repeat an earlier line (compared
    after stripping surrounding whitespace)."""
    max_top_ngram_ratio: float | None = Field(None, ge=0.0, le=1.0)
    """Drop a text in which the occurrences of its most frequent word n-gram (n = `top_ngram_size`, counted
    only if it occurs at least twice) cover more than this fraction of the words."""
    top_ngram_size: int = Field(3, ge=1)
    """n of the repeated n-gram measured by `max_top_ngram_ratio`."""

    @model_validator(mode="after")
    def _ordered(self) -> QualityConfig:
        for low, high in (("min_chars", "max_chars"), ("min_words", "max_words")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"`{low}` ({lo}) is greater than `{high}` ({hi}); no text could pass.")
        return self

    @property
    def active(self) -> bool:
        return any(value is not None for name, value in self if name != "top_ngram_size")


class PiiConfig(Section):
    """Redaction of personal data with typed placeholders such as `<EMAIL>`, in every string field."""

    enabled: bool = True
    """Redact personal data. Changed records are listed in the report with counts by type."""
    types: list[PiiType] = Field(default_factory=lambda: list(ALL_PII_TYPES))
    """Kinds to redact: email, phone (international `+CC ...` and US formats), credit_card (Luhn-valid 13-19
    digits), ip_address (IPv4 with valid octets, IPv6), iban (mod-97 valid) and ssn (US, valid ranges only)."""


class DecontaminateConfig(Section):
    """Removal of training records that overlap evaluation texts (the caller passes the eval texts)."""

    enabled: bool = True
    """Drop training records that share word n-grams with an eval text; does nothing when no eval texts are
    given."""
    ngram: int = Field(13, ge=1)
    """n of the word n-grams compared (words are lowercased runs of letters and digits; punctuation is
    dropped). Eval texts shorter than n words cannot match and are counted in the report."""
    min_matches: int = Field(1, ge=1)
    """Drop a training record that shares at least this many distinct n-grams with one eval text."""


class CleanConfig(Section):
    """A cleaning run: quality filters, exact and near-duplicate removal, decontamination, then PII redaction."""

    dedup: ExactDedupConfig = Field(default_factory=ExactDedupConfig)
    """Exact-duplicate removal on normalised text."""
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    """Near-duplicate removal with MinHash LSH."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Quality filters (all off by default)."""
    pii: PiiConfig = Field(default_factory=PiiConfig)
    """PII redaction."""
    decontaminate: DecontaminateConfig = Field(default_factory=DecontaminateConfig)
    """Decontamination against eval texts by word n-gram overlap."""
    where_key: str = "_where"
    """Record key holding where the record came from (e.g. `data.jsonl:12`); it is copied into the report and
    never redacted or read as text."""


class ShardedRunConfig(Section):
    """How `llmft data clean` runs over a folder of shards: a datatrove pipeline whose per-shard stages run as
    parallel tasks, with one small task deciding the duplicates over the whole corpus. The output equals a
    cleaning of all shards concatenated in name order, in one process."""

    executor: Literal["local", "slurm", "ray"] = "local"
    """Where the tasks run: local processes, Slurm array jobs (`slurm` options) or Ray tasks (`ray` options)."""
    tasks: int | None = Field(None, ge=1)
    """Tasks of each per-shard stage (each takes every tasks-th shard); default: one per shard."""
    workers: int = Field(1, ge=1)
    """Local executor: tasks run at once, each in its own process."""
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    """Format of the cleaned shards; each keeps its input's name and folder."""
    work_dir: str | None = None
    """Where the stages keep signatures, decisions and logs (default: OUTPUT/.llmft-clean). Every task must see
    it: a shared filesystem for Slurm and Ray. A rerun with the same inputs and options resumes there."""
    slurm: dict[str, Any] = Field(default_factory=dict)
    """Options of datatrove's SlurmPipelineExecutor, e.g. `{partition: cpu, time: "02:00:00", cpus_per_task: 2}`
    (`partition` and `time` are required)."""
    ray: dict[str, Any] = Field(default_factory=dict)
    """Options of datatrove's RayPipelineExecutor, e.g. `{cpus_per_task: 1, mem_per_cpu_gb: 2}`, plus `address`
    (`auto`, or `ray://host:10001`) of the cluster to join when Ray is not started yet (default: a local one)."""
