"""Find the `config.json` that `model.name` refers to, without downloading anything.

A local directory is read directly; a hub id is looked up in the local Hugging Face cache; `tiny` is built from
`model.tiny`. Nothing else is needed for an estimate, so a 70B model is estimated on a laptop.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from llm_finetuning.config.schema import ModelConfig
from llm_finetuning.errors import UserError
from llm_finetuning.estimate.shapes import ModelShape, shape_from_config

logger = logging.getLogger(__name__)

# The project's own byte-level tokenizer: 256 byte tokens and 4 special tokens (models/tiny.py).
BUILTIN_VOCAB = 256 + 4


def read_config_json(path: str | Path) -> dict[str, Any]:
    """Read a `config.json` file, or the one inside a directory (or its `final/` for a run directory)."""
    path = Path(path).expanduser()
    candidates = [path] if path.is_file() else [path / "config.json", path / "final" / "config.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise UserError(f"{candidate}: not a readable JSON file ({exc}).") from None
            if not isinstance(data, dict):
                raise UserError(f"{candidate}: expected a JSON object of model settings.")
            return data
    raise UserError(f"No config.json at {path}. Pass the model's config.json with --model-config.")


def _from_hub_cache(repo_id: str, revision: str | None) -> dict[str, Any] | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return read_config_json(found) if isinstance(found, str) else None


def _tiny_config(model: ModelConfig) -> dict[str, Any]:
    tiny = model.tiny
    vocab = BUILTIN_VOCAB
    if model.tokenizer not in (None, "builtin"):
        vocab = _tokenizer_vocab(model.tokenizer)
    return {
        "model_type": tiny.architecture,
        "vocab_size": vocab,
        "hidden_size": tiny.hidden_size,
        "intermediate_size": tiny.intermediate_size or 4 * tiny.hidden_size,
        "num_hidden_layers": tiny.num_layers,
        "num_attention_heads": tiny.num_heads,
        "num_key_value_heads": tiny.num_kv_heads or tiny.num_heads,
        "max_position_embeddings": tiny.max_position_embeddings,
        "tie_word_embeddings": True,
    }


def _tokenizer_vocab(directory: str) -> int:
    """Vocabulary size of a tokenizer directory (`tokenizer.json`: model vocabulary plus added tokens)."""
    path = Path(directory).expanduser() / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"model.tokenizer: no tokenizer.json in `{directory}`; the estimate needs its vocabulary size.")
    data = json.loads(path.read_text(encoding="utf-8"))
    ids = set(data.get("model", {}).get("vocab", {}).values()) | {t["id"] for t in data.get("added_tokens", [])}
    return max(ids) + 1 if ids else 0


def load_shape(model: ModelConfig, model_config: str | Path | None = None) -> tuple[ModelShape, str]:
    """The model's shape and where it came from (`--model-config`, a directory, the hub cache, or `tiny`)."""
    if model_config is not None:
        return shape_from_config(read_config_json(model_config), str(model_config)), str(model_config)
    if model.name == "tiny":
        return shape_from_config(_tiny_config(model), "model.tiny"), "model.tiny"
    local = Path(model.name).expanduser()
    if local.exists():
        return shape_from_config(read_config_json(local), str(local)), str(local)
    data = _from_hub_cache(model.name, model.revision)
    if data is None:
        raise UserError(
            f"model.name: `{model.name}` is neither a local directory nor in the local Hugging Face cache, and the "
            "estimate does not download. Pass its config.json with --model-config path/to/config.json (e.g. "
            f"download only that file: `hf download {model.name} config.json`)."
        )
    return shape_from_config(data, f"{model.name} (hub cache)"), f"{model.name} (hub cache)"
