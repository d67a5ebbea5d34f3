"""The model half of a GGUF file: architecture, hyperparameters and tensors, in llama.cpp's conventions.

Tensors are read from safetensors only (pickled `.bin` weights can run code when loaded) one at a time, so
exporting a model needs memory for one tensor at a time, not for the whole model twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors import safe_open
from transformers import PretrainedConfig

from llm_finetuning.errors import UserError
from llm_finetuning.export.model_files import INDEX_FILE, SINGLE_FILE, read_config

logger = logging.getLogger(__name__)

# Hugging Face class -> llama.cpp architecture. llama.cpp has no `mistral` text architecture: it runs Mistral
# as `llama` (the same blocks; the sliding window is not modelled).
ARCHITECTURES = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
}
OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)  # recomputed at load time; llama.cpp drops it too


@dataclass(frozen=True)
class TensorPlan:
    """One tensor as it will be written: source name, GGUF name, shape and type."""

    source: str
    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return int(np.prod(self.shape)) // block * size


def architecture(folder: Path) -> gguf.MODEL_ARCH:
    """The llama.cpp architecture of the model in `folder`, or a `UserError` naming the supported ones.

    Read from config.json before any config class is built, so an unsupported or custom-code model is refused
    with this message and never imported."""
    names = read_config(folder).get("architectures") or ["(none listed)"]
    if names[0] not in ARCHITECTURES:
        raise UserError(
            f"{folder / 'config.json'}: architecture {names[0]} cannot be exported to GGUF; supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. Export with --format hf and convert with llama.cpp instead."
        )
    return ARCHITECTURES[names[0]]


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _rope(config: PretrainedConfig) -> dict:
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    legacy = getattr(config, "rope_scaling", None)  # older configs keep the scaling apart from the base
    if isinstance(legacy, dict):
        parameters = {**legacy, **parameters}
    parameters.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    parameters["rope_type"] = parameters.get("rope_type") or parameters.get("type") or "default"
    return parameters


def llama3_rope_factors(config: PretrainedConfig) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1-style rope scaling, as llama.cpp's `rope_freqs` tensor holds them."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = head_dim(config)
    base = _rope(config)["rope_theta"]
    plain = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return (plain / scaled).numpy().astype(np.float32)


def write_hyperparameters(
    writer: gguf.GGUFWriter, config: PretrainedConfig, arch: gguf.MODEL_ARCH, file_type: gguf.LlamaFileType
) -> None:
    """The `{arch}.*` keys llama.cpp reads to build the model."""
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if head_dim(config) != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
    if arch == gguf.MODEL_ARCH.LLAMA:
        writer.add_rope_dimension_count(head_dim(config))
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    supported = ("default", "linear", "yarn") + (("llama3",) if arch == gguf.MODEL_ARCH.LLAMA else ())
    if kind not in supported:
        raise UserError(f"rope_parameters.rope_type `{kind}` cannot be exported to GGUF; supported: {supported}.")
    if kind in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(kind))
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if kind == "yarn" and rope.get("original_max_position_embeddings"):
            writer.add_rope_scaling_orig_ctx_len(int(rope["original_max_position_embeddings"]))
    window = getattr(config, "sliding_window", None)
    if window and (arch == gguf.MODEL_ARCH.LLAMA or getattr(config, "use_sliding_window", False)):
        if window < config.max_position_embeddings:
            logger.warning(
                "sliding_window=%s is not stored in GGUF: llama.cpp attends to the whole context (up to %s).",
                window,
                config.max_position_embeddings,
            )
    writer.add_file_type(file_type)


def safetensors_files(folder: Path) -> list[Path]:
    """The safetensors files of a model folder; pickled weights are refused."""
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    index = folder / INDEX_FILE
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        missing = [shard for shard in shards if not (folder / shard).is_file()]
        if missing:
            raise UserError(f"{index} lists shard {missing[0]}, which is missing from {folder}.")
        return [folder / shard for shard in shards]
    found = sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt"))
    raise UserError(
        f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}"
        + (f" (found pickled weights {found[0].name}, which are refused: loading them can run code)" if found else "")
        + ". Re-save the model with `save_pretrained(..., safe_serialization=True)` and export again."
    )


def _shapes(files: list[Path]) -> Iterator[tuple[str, tuple[int, ...], Path]]:
    for path in files:
        with safe_open(path, framework="pt") as handle:
            for key in handle.keys():
                yield key, tuple(handle.get_slice(key).get_shape()), path


def tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> gguf.GGMLQuantizationType:
    """Norms, biases and other 1-D tensors stay F32; a Q8_0 row must be whole 32-value blocks."""
    qtype = OUTTYPES[outtype][0]
    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if shape[-1] % block:
        logger.info("%s: rows of %d values are not whole %d-value blocks; written as F16", name, shape[-1], block)
        return gguf.GGMLQuantizationType.F16
    return qtype


def plan_tensors(folder: Path, config: PretrainedConfig, arch: gguf.MODEL_ARCH, outtype: str) -> list[TensorPlan]:
    """Every tensor to write, named as llama.cpp names it; `UserError` for one it does not know."""
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plans = []
    for source, shape, _ in _shapes(safetensors_files(folder)):
        if source.endswith(_SKIPPED_SUFFIXES) or (tied and source == "lm_head.weight"):
            continue  # a tied head is the embedding matrix; llama.cpp reuses token_embd when output is absent
        stem, _, suffix = source.rpartition(".")
        mapped = names.get_name(stem)
        if mapped is None or suffix not in ("weight", "bias"):
            raise UserError(f"{folder}: tensor `{source}` has no GGUF name for architecture {arch.name.lower()}.")
        name = f"{mapped}.{suffix}"
        plans.append(TensorPlan(source, name, shape, tensor_type(name, shape, outtype)))
    if not tied and not any(plan.name == "output.weight" for plan in plans):
        raise UserError(f"{folder}: config says the output head is untied, but lm_head.weight is missing.")
    if _rope(config)["rope_type"] == "llama3":
        dims = (head_dim(config) // 2,)
        plans.append(TensorPlan("", "rope_freqs.weight", dims, gguf.GGMLQuantizationType.F32))
    return plans


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder q/k rows from Hugging Face's rotate-half layout to llama.cpp's interleaved pairs (`llama` only)."""
    shape = weight.shape
    return weight.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def encoded_tensors(
    folder: Path, config: PretrainedConfig, arch: gguf.MODEL_ARCH, plans: list[TensorPlan]
) -> Iterator[np.ndarray]:
    """The data of each planned tensor, in plan order, converted to its GGUF type."""
    location = {key: path for key, _, path in _shapes(safetensors_files(folder))}
    with ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(path, framework="pt")) for path in set(location.values())}
        for plan in plans:
            if plan.name == "rope_freqs.weight":
                data = llama3_rope_factors(config)
            else:
                data = handles[location[plan.source]].get_tensor(plan.source).to(torch.float32).numpy()
            if arch == gguf.MODEL_ARCH.LLAMA and ".attn_q." in plan.name:
                data = permute_rotary(data, config.num_attention_heads)
            elif arch == gguf.MODEL_ARCH.LLAMA and ".attn_k." in plan.name:
                data = permute_rotary(data, config.num_key_value_heads or config.num_attention_heads)
            yield gguf.quants.quantize(np.ascontiguousarray(data), plan.qtype)
