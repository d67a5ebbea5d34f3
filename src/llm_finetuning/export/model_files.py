"""Read the weights, config and tokenizer of local model directories, and check that they can be merged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
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


def load_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a model saved as one safetensors file or as shards listed in the index json."""
    if not directory.is_dir():
        raise UserError(f"Model directory not found: {directory}")
    single = directory / SINGLE_FILE
    if single.is_file():
        return load_file(single)
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = directory / shard
            if not shard_path.is_file():
                raise UserError(f"{index} lists shard {shard}, which is missing from {directory}")
            tensors.update(load_file(shard_path))
        return tensors
    # Pickled .bin weights can run code when loaded; only safetensors is accepted.
    raise UserError(
        f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}. Only safetensors weights can be merged; re-save the "
        "model with `save_pretrained(..., safe_serialization=True)`."
    )


def check_same_architecture(
    reference: Path,
    reference_config: dict[str, Any],
    reference_tensors: dict[str, torch.Tensor],
    other: Path,
    other_config: dict[str, Any],
    other_tensors: dict[str, torch.Tensor],
) -> None:
    """Raise `UserError` naming the first difference in model type, tensor names or tensor shapes."""
    kinds = reference_config.get("model_type"), other_config.get("model_type")
    if kinds[0] != kinds[1]:
        raise UserError(
            f"Cannot merge different architectures: {reference} is `model_type: {kinds[0]}` but {other} is "
            f"`model_type: {kinds[1]}`."
        )
    for name in sorted(reference_tensors):
        if name not in other_tensors:
            raise UserError(f"Cannot merge: tensor `{name}` of {reference} is missing from {other}.")
        shapes = tuple(reference_tensors[name].shape), tuple(other_tensors[name].shape)
        if shapes[0] != shapes[1]:
            raise UserError(
                f"Cannot merge different architectures: tensor `{name}` has shape {shapes[0]} in {reference} "
                f"but {shapes[1]} in {other}."
            )
    extra = sorted(set(other_tensors) - set(reference_tensors))
    if extra:
        raise UserError(f"Cannot merge: tensor `{extra[0]}` of {other} is missing from {reference}.")


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
