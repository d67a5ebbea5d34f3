"""Read the config and tokenizer of local model directories, and check that their vocabularies can be merged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from llm_finetuning.errors import UserError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_config(directory: Path) -> dict[str, Any]:
    """The model's config.json as a dict."""
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"{directory}: no config.json; point the merge at a saved model directory")
    return json.loads(path.read_text(encoding="utf-8"))


def load_tokenizer(directory: Path) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model, or None where the directory has none."""
    has_files = any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    if not has_files:
        return None
    return AutoTokenizer.from_pretrained(str(directory))


def check_same_vocabulary(
    reference: Path, reference_tokenizer: PreTrainedTokenizerBase, other: Path, other_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Raise `UserError` unless both tokenizers map the same tokens to the same ids.

    Embedding rows are merged by index, so a token with another id in one model would be averaged with an
    unrelated token's row.
    """
    ours, theirs = reference_tokenizer.get_vocab(), other_tokenizer.get_vocab()
    if ours == theirs:
        return
    by_id = {i: t for t, i in theirs.items()}
    for token, index in sorted(ours.items(), key=lambda item: item[1]):
        if by_id.get(index) != token:
            raise UserError(
                f"Cannot merge models with different tokenizers: id {index} is {token!r} in {reference} but "
                f"{by_id.get(index)!r} in {other}. Merge only models fine-tuned from the same base."
            )
    raise UserError(
        f"Cannot merge models with different tokenizers: {reference} has {len(ours)} tokens, {other} has "
        f"{len(theirs)}. Merge only models fine-tuned from the same base."
    )
