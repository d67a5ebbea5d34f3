"""`data.clean`: run the cleaning steps on the training rows of a run, before the eval split and tokenization.

Cleaning before the split means duplicates cannot straddle train and a held-out eval split; decontamination
compares the training rows with the run's eval data and with `data.clean_against`.
"""

from __future__ import annotations

import logging
from typing import Any

from llm_finetuning.config.schema import DataConfig
from llm_finetuning.data.clean import CleanReport, clean_records, default_text_of
from llm_finetuning.data.formats import FORMAT_KIND

logger = logging.getLogger(__name__)

Rows = list[tuple[str, Any]]


def eval_texts(config: DataConfig, eval_rows: Rows, field: str) -> dict[str, str]:
    """Texts to decontaminate against: the run's eval rows and every `data.clean_against` source."""
    from llm_finetuning.data.pipeline import SplitStats, load_records

    texts = {where: default_text_of({field: value}) for where, value in eval_rows}
    for source in config.clean_against:
        kind = FORMAT_KIND[source.format] if source.dataset is None else None
        if kind is None:
            from llm_finetuning.data.datasets import registry

            kind = next(iter(registry()[source.dataset].converters))
        for where, record in load_records(source, "skip", SplitStats(), kind):
            texts[where] = default_text_of(record)
    return texts


def clean_rows(rows: Rows, config: DataConfig, eval_rows: Rows, field: str) -> tuple[Rows, CleanReport | None]:
    """Kept (where, value) rows and the cleaning report; `field` names the value in a record (`messages`)."""
    if config.clean is None:
        return rows, None
    records = [{field: value, "_where": where} for where, value in rows]
    result = clean_records(records, config.clean, eval_texts=eval_texts(config, eval_rows, field) or None)
    logger.info("data.clean: %s", result.report.summary())
    return [(r["_where"], r[field]) for r in result.records], result.report
