"""Data cleaning: exact and near-duplicate removal, quality filters, PII redaction and decontamination.

`clean_records(records, CleanConfig(...), text_of=..., eval_texts=...)` returns the kept records and a report
that names every removed or changed record, its step and the reason.
"""

from llm_finetuning.data.clean.config import (
    CleanConfig,
    DecontaminateConfig,
    ExactDedupConfig,
    NearDedupConfig,
    PiiConfig,
    QualityConfig,
)
from llm_finetuning.data.clean.pii import redact
from llm_finetuning.data.clean.pipeline import CleanResult, clean_records
from llm_finetuning.data.clean.report import CleanReport, Event, StepStats
from llm_finetuning.data.clean.text import default_text_of

__all__ = [
    "CleanConfig",
    "CleanReport",
    "CleanResult",
    "DecontaminateConfig",
    "Event",
    "ExactDedupConfig",
    "NearDedupConfig",
    "PiiConfig",
    "QualityConfig",
    "StepStats",
    "clean_records",
    "default_text_of",
    "redact",
]
