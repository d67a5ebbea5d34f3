"""Reference log-probabilities for DPO/KTO computed once and kept on disk, keyed by model and data.

TRL can precompute them, but its cache key goes through the dataset's `datasets` fingerprint, which changes
from run to run for datasets built in memory, so nothing is reused. Here the key is the content of the
tokenized dataset plus TRL's hash of the reference weights: the same data and the same reference model give
the same file, whatever the run directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from datasets import Dataset, concatenate_datasets, load_from_disk
from trl import DPOTrainer, KTOTrainer

from llm_finetuning.data.cache import cache_root

logger = logging.getLogger(__name__)


def _key(dataset: Dataset, *parts: Any) -> str:
    digest = hashlib.sha256(json.dumps([str(p) for p in parts]).encode())
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:24]


class CachedReferenceMixin:
    """Wraps TRL's `_precompute_ref_logps` with a content-addressed cache of the reference columns."""

    reference_columns: tuple[str, ...] = ()

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        model_hash = self._precompute_model_hash  # type: ignore[attr-defined]
        key = _key(dataset, type(self).__name__, model_hash, getattr(self, "calculate_KL", None))
        path = cache_root() / "reference_logps" / key
        if (path / "dataset_info.json").is_file():
            cached = load_from_disk(str(path))
            if len(cached) == len(dataset):
                logger.info("Reference log-probabilities for the %s data read from %s", name, path)
                return concatenate_datasets([dataset, cached], axis=1)
        result = super()._precompute_ref_logps(dataset, name, batch_size)  # type: ignore[misc]
        columns = [c for c in self.reference_columns if c in result.column_names]
        result.select_columns(columns).save_to_disk(str(path))
        logger.info("Reference log-probabilities for the %s data cached in %s", name, path)
        return result


class CachedDPOTrainer(CachedReferenceMixin, DPOTrainer):
    reference_columns = ("ref_chosen_logps", "ref_rejected_logps")


class CachedKTOTrainer(CachedReferenceMixin, KTOTrainer):
    reference_columns = ("ref_logps", "ref_KL_logps")
