"""The models of a merge as lazy tensor sources: names and shapes from the file headers, data on request.

A model is a saved directory, or a LoRA adapter over its base (an llmft run, an adapter directory, or mergekit's
`BASE+ADAPTER`). A plain LoRA adapter is applied tensor by tensor as the merge reads the weights (`W + s B A`,
PEFT's merge), so it needs no more memory than the base. Adapters that need the whole model (DoRA, saved
embeddings, a quantized base, ...) are merged by PEFT into a temporary directory first.
"""

from __future__ import annotations

import json
import logging
import math
import re
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from llm_finetuning.errors import UserError
from llm_finetuning.export.model_files import INDEX_FILE, SINGLE_FILE, read_config
from llm_finetuning.export.safetensors_stream import TensorInfo, read_header, read_tensor

logger = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass
class ModelSource:
    """One model's tensors, read one at a time."""

    label: str
    """How messages name the model: the path as written in the config."""
    directory: Path
    """The saved model holding config.json (and, unless `tokenizer_dir` says otherwise, the tokenizer)."""
    tensors: dict[str, TensorInfo]
    tokenizer_dir: Path
    lora: dict[str, tuple[TensorInfo, TensorInfo]] = field(default_factory=dict)
    """Per base tensor name, the adapter's A and B matrices to add to it."""
    lora_scale: float = 1.0
    lora_transposed: bool = False

    @property
    def config(self) -> dict[str, Any]:
        return read_config(self.directory)

    def read(self, name: str) -> torch.Tensor:
        tensor = read_tensor(self.tensors[name])
        if name not in self.lora:
            return tensor
        down, up = (read_tensor(info) for info in self.lora[name])
        work = torch.float64 if tensor.dtype == torch.float64 else torch.float32
        delta = up.to(work) @ down.to(work)
        if self.lora_transposed:
            delta = delta.T
        return (tensor.to(work) + delta * self.lora_scale).to(tensor.dtype)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a saved model (one file, or the shards its index lists)."""
    single, index = directory / SINGLE_FILE, directory / INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise UserError(f"{index} lists shard {missing[0]}, which is missing from {directory}")
        return [directory / s for s in shards]
    # Pickled .bin weights can run code when loaded; only safetensors is accepted.
    raise UserError(
        f"{directory}: no {SINGLE_FILE} or {INDEX_FILE}. Only safetensors weights can be merged; re-save the "
        "model with `save_pretrained(..., safe_serialization=True)`."
    )


def plain_model(directory: Path, label: str) -> ModelSource:
    read_config(directory)
    tensors: dict[str, TensorInfo] = {}
    for path in weight_files(directory):
        tensors.update(read_header(path))
    return ModelSource(label, directory, tensors, directory)


def _locate(reference: str, label: str) -> Path:
    """A local directory for a path or a Hugging Face id already in the local cache."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", reference):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(reference, local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not in the cache", said below
            pass
    raise UserError(
        f"Model {label!r} not found: it is not a local directory, nor a Hugging Face id in the local cache. "
        f"Download it first (`huggingface-cli download {reference}`) or give its path."
    )


def _streamable(adapter: dict[str, Any], keys: list[str], quantized: bool) -> str | None:
    """Why this adapter must be merged by PEFT with the whole model, or None where it can be streamed."""
    if adapter.get("peft_type") != "LORA":
        return f"it is a {adapter.get('peft_type')} adapter"
    for option in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "trainable_token_indices"):
        if adapter.get(option):
            return f"it sets `{option}`"
    if quantized:
        return "it was trained on a quantized base, which must be loaded quantized again"
    other = [k for k in keys if not LORA_KEY.match(k)]
    if other:
        return f"it saves other weights too ({other[0]})"
    return None


def _peft_merged(adapter_dir: Path, base_dir: Path, stack: ExitStack) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="llmft-lora-merge-")))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base_dir
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if base.get_input_embeddings().weight.shape[0] < len(tokenizer):
        base.resize_token_embeddings(len(tokenizer))
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


def lora_model(adapter_dir: Path, base_reference: str | None, label: str, stack: ExitStack) -> ModelSource:
    """The base of an adapter with the adapter applied (streamed where possible)."""
    adapter = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    base_reference = base_reference or adapter.get("base_model_name_or_path")
    if not base_reference:
        raise UserError(f"{adapter_dir / ADAPTER_CONFIG} names no base model; give it as `BASE+{adapter_dir}`")
    base_dir = _locate(base_reference, base_reference)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; only safetensors adapters can be merged")
    header = read_header(weights)
    run_config = adapter_dir / "llmft_config.yaml"
    model_section = (yaml.safe_load(run_config.read_text()) or {}).get("model", {}) if run_config.is_file() else {}
    reason = _streamable(adapter, list(header), model_section.get("quantization", "none") != "none")
    if reason is not None:
        logger.info("Merging the adapter %s into its base with PEFT first (%s): needs the whole model", label, reason)
        if model_section.get("quantization", "none") != "none" and adapter_dir.name == "final":
            from llm_finetuning.export.lora_merge import merge_run

            return plain_model(merge_run(adapter_dir.parent).path, label)
        return plain_model(_peft_merged(adapter_dir, base_dir, stack), label)
    source = plain_model(base_dir, label)
    parts: dict[str, dict[str, TensorInfo]] = {}
    for key, info in header.items():
        match = LORA_KEY.match(key)
        assert match is not None  # checked by _streamable
        parts.setdefault(f"{match['module']}.weight", {})[match["part"]] = info
    for name, pair in parts.items():
        if name not in source.tensors or set(pair) != {"A", "B"}:
            raise UserError(f"Adapter {label}: `{name}` has no LoRA pair or no base weight in {base_dir}")
        source.lora[name] = (pair["A"], pair["B"])
    rank = adapter["r"]
    alpha = adapter.get("lora_alpha", rank)
    source.lora_scale = alpha / math.sqrt(rank) if adapter.get("use_rslora") else alpha / rank
    source.lora_transposed = bool(adapter.get("fan_in_fan_out"))
    if (adapter_dir / "tokenizer_config.json").is_file():
        source.tokenizer_dir = adapter_dir
    return source


def open_model(reference: str, stack: ExitStack) -> ModelSource:
    """The source of one `path` of a merge config (see `MergeModel.path`)."""
    if "+" in reference and not Path(reference).exists():
        base, adapter = reference.split("+", 1)
        adapter_dir = _locate(adapter, reference)
        if not (adapter_dir / ADAPTER_CONFIG).is_file():
            raise UserError(f"{reference!r}: {adapter_dir} holds no {ADAPTER_CONFIG}, so it is not a LoRA adapter")
        return lora_model(adapter_dir, base, reference, stack)
    directory = _locate(reference, reference)
    if (directory / "final").is_dir() and not (directory / "config.json").is_file():
        directory = directory / "final"  # an llmft run directory: its final model or adapter
    if (directory / ADAPTER_CONFIG).is_file():
        return lora_model(directory, None, reference, stack)
    return plain_model(directory, reference)
