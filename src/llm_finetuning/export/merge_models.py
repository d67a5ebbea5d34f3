"""`llmft merge-models`: merge several models of one architecture into a plain transformers model directory."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from llm_finetuning.errors import UserError
from llm_finetuning.export import merging
from llm_finetuning.export.merge_config import TASK_VECTOR_METHODS, MergeConfig
from llm_finetuning.export.model_files import (
    check_same_architecture,
    check_same_vocabulary,
    load_state_dict,
    load_tokenizer,
    read_config,
)

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
TensorMerge = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]


def _merge_function(config: MergeConfig) -> TensorMerge:
    """One function (reference tensor, model tensors) -> merged tensor for the configured method."""
    weights = [m.weight for m in config.models]
    method = config.method
    if method == "linear":
        return lambda _ref, ts: merging.linear(ts, weights, normalize=config.normalize)
    if method == "slerp":
        t = float(config.t if config.t is not None else 0.5)
        return lambda _ref, ts: merging.slerp(ts[0], ts[1], t)
    if method == "task_arithmetic":
        return lambda base, ts: merging.task_arithmetic(base, ts, weights, scale=config.scale)
    density = float(config.density or 1.0)
    if method == "ties":
        return lambda base, ts: merging.ties(base, ts, weights, density, scale=config.scale)
    # One generator for the whole merge, consumed in sorted tensor order: the same seed gives the same model.
    generator = torch.Generator().manual_seed(config.seed)
    combine: merging.Combine = "ties" if method == "dare_ties" else "linear"
    return lambda base, ts: merging.dare(base, ts, weights, density, combine, generator, scale=config.scale)


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"Output directory {output} exists and is not empty; pass --overwrite or choose another")
        # Stale shards or an old index would be picked up by from_pretrained next to the new weights.
        for stale in [*output.glob("model*.safetensors"), output / "model.safetensors.index.json"]:
            if stale.is_file():
                stale.unlink()
    output.mkdir(parents=True, exist_ok=True)


def merge_models(config: MergeConfig, overwrite: bool = False) -> Path:
    """Merge `config.models` tensor by tensor and save a model loadable by `AutoModelForCausalLM`.

    The reference model (the base for task-vector methods, else the first model) provides config.json, the
    tokenizer, and every non-float tensor (integer buffers cannot be averaged meaningfully).
    """
    model_dirs = [Path(m.path) for m in config.models]
    reference_dir = Path(config.base_model) if config.method in TASK_VECTOR_METHODS else model_dirs[0]
    output = Path(config.output_dir)
    if output.resolve() in {d.resolve() for d in [reference_dir, *model_dirs]}:
        raise UserError(f"`output_dir` {output} is one of the input models; choose a new directory")

    reference_config = read_config(reference_dir)
    reference_tensors = load_state_dict(reference_dir)
    all_tensors: list[dict[str, torch.Tensor]] = []
    for directory in model_dirs:
        tensors = reference_tensors if directory == reference_dir else load_state_dict(directory)
        check_same_architecture(
            reference_dir, reference_config, reference_tensors, directory, read_config(directory), tensors
        )
        all_tensors.append(tensors)

    tokenizer = load_tokenizer(reference_dir)
    tokenizer_dir = reference_dir
    for directory in model_dirs:
        other = load_tokenizer(directory)
        if other is None:
            continue
        if tokenizer is None:
            tokenizer, tokenizer_dir = other, directory
        else:
            check_same_vocabulary(tokenizer_dir, tokenizer, directory, other)

    merge = _merge_function(config)
    dtype = DTYPES[config.dtype] if config.dtype else None
    merged: dict[str, torch.Tensor] = {}
    logger.info("Merging %d models with %s (%d tensors)", len(model_dirs), config.method, len(reference_tensors))
    for name in sorted(reference_tensors):
        reference = reference_tensors[name]
        if reference.is_floating_point():
            result = merge(reference, [tensors[name] for tensors in all_tensors])
            merged[name] = result.to(dtype or reference.dtype).contiguous()
        else:
            merged[name] = reference.clone().contiguous()

    _prepare_output(output, overwrite)
    save_file(merged, str(output / "model.safetensors"), metadata={"format": "pt"})
    model_config = dict(reference_config)
    if config.dtype:
        model_config["dtype"] = config.dtype
        if "torch_dtype" in model_config:
            model_config["torch_dtype"] = config.dtype
    (output / "config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
    if (reference_dir / "generation_config.json").is_file():
        shutil.copyfile(reference_dir / "generation_config.json", output / "generation_config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(output))
    else:
        logger.warning("None of the models has a tokenizer; the merged model is saved without one")
    record = config.model_dump(mode="json")
    (output / "merge_config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    logger.info("Merged model saved to %s", output)
    return output
