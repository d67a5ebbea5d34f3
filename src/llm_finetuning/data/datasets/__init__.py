"""Named datasets of the collection: one small module each, registered here by name."""

from __future__ import annotations

import importlib
import pkgutil

from llm_finetuning.data.datasets.base import NamedDataset


def registry() -> dict[str, NamedDataset]:
    """Every module of this package that defines `DATASET`, by dataset name."""
    found: dict[str, NamedDataset] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_") or module.name == "base":
            continue
        dataset = getattr(importlib.import_module(f"{__name__}.{module.name}"), "DATASET", None)
        if isinstance(dataset, NamedDataset):
            found[dataset.name] = dataset
    return found


__all__ = ["NamedDataset", "registry"]
