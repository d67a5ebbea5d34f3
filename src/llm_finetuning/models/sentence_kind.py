"""Which kind of sentence-transformers model a run or model directory holds: a bi-encoder (`embedding`), a
cross-encoder (`reranker`), or neither. Serving and evaluation both ask, from the files alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from llm_finetuning.errors import UserError

EMBEDDING, RERANKER = "embedding", "reranker"
_MODEL_TYPES = {"SentenceTransformer": EMBEDDING, "CrossEncoder": RERANKER}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _transformer_task(path: Path) -> str | None:
    """The `transformer_task` the model's Transformer module was saved with (sentence-transformers >= 5)."""
    try:
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for module in modules if isinstance(modules, list) else []:
        if isinstance(module, dict) and str(module.get("type", "")).endswith(".Transformer"):
            return _read_json(path / str(module.get("path", "")) / "sentence_bert_config.json").get("transformer_task")
    return None


def encoder_kind(path: str | Path) -> str | None:
    """`embedding` or `reranker` for a run or model directory holding a sentence-transformers model; None for
    anything else (a causal LM, served by the generation engine)."""
    path = final_dir(Path(path))
    config = path / "llmft_config.yaml"
    if config.is_file():  # a run says what it trained, which beats guessing from the files
        try:
            method = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("method") or {}).get("name")
        except (yaml.YAMLError, AttributeError, OSError):
            method = None
        if method in (EMBEDDING, RERANKER):
            return method
        if isinstance(method, str):
            return None
    if not (path / "modules.json").is_file():
        return None
    model_type = _read_json(path / "config_sentence_transformers.json").get("model_type")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    if model_type is not None:
        raise UserError(
            f"`{path}` holds a sentence-transformers {model_type}; llmft serve serves SentenceTransformer "
            "(/v1/embeddings) and CrossEncoder (/v1/rerank) models"
        )
    # Saved without a model_type (as sentence-transformers itself does, default to a bi-encoder) unless its
    # Transformer module classifies sequences, which is what a cross-encoder's does.
    return RERANKER if _transformer_task(path) == "sequence-classification" else EMBEDDING


def final_dir(path: Path) -> Path:
    """A run directory's `merged/` (if complete) or `final/`; any other path as given."""
    if (path / "final").is_dir():
        return path / "merged" if (path / "merged" / "config.json").is_file() else path / "final"
    return path
