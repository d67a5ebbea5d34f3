"""`llmft merge-models`: merge several models of one architecture into a plain transformers model directory.

The merge streams: each output tensor is computed from its input tensors, read from disk when it is needed,
and written straight into its output file, so memory holds one tensor set at a time, not the models
(docs/merging.md, "Memory").
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
import yaml

from llm_finetuning.errors import UserError
from llm_finetuning.export.merge_config import MergeConfig, parse_size
from llm_finetuning.export.merge_plan import Job, Plan, build_plan
from llm_finetuning.export.model_files import check_same_vocabulary, load_tokenizer
from llm_finetuning.export.model_sources import ModelSource, open_model
from llm_finetuning.export.safetensors_stream import Planned, StreamingFile, shard_names, split_shards, write_index
from llm_finetuning.export.tensor_merge import TensorMerger

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")


def _paths(config: MergeConfig) -> list[str]:
    listed = [m.path for m in config.models or []] + [s.path for p in config.slices or [] for s in p.sources]
    return list(dict.fromkeys([*([config.base_model] if config.base_model else []), *listed]))


def _check_models(config: MergeConfig, sources: dict[str, ModelSource], reference: ModelSource) -> None:
    """Same architecture everywhere; for a `models:` merge, the same tensors with the same shapes."""
    kind = reference.config.get("model_type")
    for source in sources.values():
        other = source.config.get("model_type")
        if other != kind:
            raise UserError(
                f"Cannot merge different architectures: {reference.label} is `model_type: {kind}` but "
                f"{source.label} is `model_type: {other}`."
            )
        if config.models is None:
            continue
        for name, info in reference.tensors.items():
            if name not in source.tensors:
                raise UserError(f"Cannot merge: tensor `{name}` of {reference.label} is missing from {source.label}.")
            if source.tensors[name].shape != info.shape:
                raise UserError(
                    f"Cannot merge different architectures: tensor `{name}` has shape {info.shape} in "
                    f"{reference.label} but {source.tensors[name].shape} in {source.label}."
                )
        extra = sorted(set(source.tensors) - set(reference.tensors))
        if extra:
            raise UserError(f"Cannot merge: tensor `{extra[0]}` of {source.label} is missing from {reference.label}.")


def _planned(job: Job, sources: dict[str, ModelSource], dtype: torch.dtype | None) -> Planned:
    for model, name in job.inputs:
        if name not in sources[model.path].tensors:
            raise UserError(f"Cannot merge: `{name}`, an input of `{job.output}`, is missing from {model.path}")
    infos = [sources[model.path].tensors[name] for model, name in job.inputs]
    if any(info.shape != infos[0].shape for info in infos):
        shapes = ", ".join(
            f"{sources[m.path].label}: {tuple(i.shape)}" for (m, _), i in zip(job.inputs, infos, strict=True)
        )
        raise UserError(f"Cannot merge different architectures: `{job.output}` has shapes {shapes}")
    if not infos[0].dtype.is_floating_point:
        return Planned(job.output, infos[0].shape, infos[0].dtype)
    if dtype is None:
        dtype = infos[0].dtype
        for info in infos[1:]:
            dtype = torch.promote_types(dtype, info.dtype)
    return Planned(job.output, infos[0].shape, dtype)


def _tokenizer(config: MergeConfig, sources: dict[str, ModelSource], reference: ModelSource) -> Any:
    """The tokenizer to save, after checking that every model's maps the same tokens to the same ids."""
    loaded = [(s, t) for s in sources.values() if (t := load_tokenizer(s.tokenizer_dir)) is not None]
    for source, tokenizer in loaded[1:]:
        check_same_vocabulary(Path(loaded[0][0].label), loaded[0][1], Path(source.label), tokenizer)
    choice = config.tokenizer_source
    if choice not in (None, "base", "union"):
        matches = [t for s, t in loaded if s.label == choice or str(s.directory) == choice]
        if not matches:
            raise UserError(f"`tokenizer_source: {choice}` is not one of the merged models that has a tokenizer")
        return matches[0]
    # `union` of identical vocabularies is any of them (checked above).
    return next((t for s, t in loaded if s is reference), loaded[0][1] if loaded else None)


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise UserError(f"Output directory {output} exists and is not empty; pass --overwrite or choose another")
        # Stale shards or an old index would be picked up by from_pretrained next to the new weights.
        for stale in [*output.glob("model*.safetensors"), output / "model.safetensors.index.json"]:
            if stale.is_file():
                stale.unlink()
    output.mkdir(parents=True, exist_ok=True)


def _write_weights(
    output: Path, plan: Plan, planned: list[Planned], sources: dict[str, ModelSource], config: MergeConfig
) -> None:
    merge = TensorMerger(config)
    jobs = {job.output: job for job in plan.jobs}
    reference_path = config.base_model or plan.jobs[0].inputs[0][0].path
    shards = split_shards(planned, parse_size(config.max_shard_size))
    names = shard_names(len(shards))
    for shard, name in zip(shards, names, strict=True):
        file = StreamingFile(output / name, shard)
        try:
            for item in shard:
                job = jobs[item.name]
                tensors = [sources[model.path].read(tensor) for model, tensor in job.inputs]
                if item.dtype.is_floating_point:
                    result = merge(job, tensors)
                else:  # integer buffers cannot be averaged; they come from the base (or first) model
                    paths = [model.path for model, _ in job.inputs]
                    result = tensors[paths.index(reference_path) if reference_path in paths else 0]
                file.write(item.name, result.to(item.dtype))
                del tensors, result
        except BaseException:
            file.abort()
            raise
        file.close()
        logger.info("Wrote %s (%d tensors)", output / name, len(shard))
    write_index(output, shards, names)


def _model_config(reference: ModelSource, plan: Plan, planned: list[Planned], sources: dict[str, ModelSource]) -> dict:
    model_config = dict(reference.config)
    layers = len(plan.layer_sources)
    for key in LAYER_COUNT_KEYS:
        if key in model_config and model_config[key] != layers:
            model_config[key] = layers
    kinds = model_config.get("layer_types")
    if isinstance(kinds, list):
        model_config["layer_types"] = [sources[m.path].config["layer_types"][i] for m, i in plan.layer_sources]
    floats = [p.dtype for p in planned if p.dtype.is_floating_point]
    if floats:
        name = str(floats[0]).removeprefix("torch.")
        for key in ("dtype", "torch_dtype"):
            if key in model_config or key == "dtype":
                model_config[key] = name
    return model_config


def merge_models(
    config: MergeConfig, overwrite: bool = False, output_dir: str | Path | None = None, original: Path | None = None
) -> Path:
    """Merge as `config` says and save a model loadable by `AutoModelForCausalLM` in `output_dir` (default:
    `config.output_dir`). `original`, a mergekit file the config was read from, is saved beside it.

    The reference model (the base, else the first model) provides config.json, generation_config.json, the
    tokenizer (unless `tokenizer_source` names another) and every non-float tensor.
    """
    target = output_dir or config.output_dir
    if target is None:
        raise UserError("No output directory: set `output_dir` in the config or give it on the command line")
    output = Path(target).resolve()
    with ExitStack() as stack:
        sources = {path: open_model(path, stack) for path in _paths(config)}
        if output in {s.directory.resolve() for s in sources.values()}:
            raise UserError(f"The output directory {output} is one of the input models; choose a new directory")
        reference = sources[config.base_model or _paths(config)[0]]
        _check_models(config, sources, reference)
        plan = build_plan(config, {path: list(source.tensors) for path, source in sources.items()})
        dtype = DTYPES[config.dtype] if config.dtype else None
        planned = [_planned(job, sources, dtype) for job in plan.jobs]
        tokenizer = _tokenizer(config, sources, reference)
        _prepare_output(output, overwrite)
        logger.info("Merging %d models with %s (%d tensors)", len(sources), config.method, len(plan.jobs))
        # Written in the plan's order (mergekit's), so that random draws fall as they do in mergekit.
        _write_weights(output, plan, planned, sources, config)
        model_config = _model_config(reference, plan, planned, sources)
        (output / "config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
        if (reference.directory / "generation_config.json").is_file():
            shutil.copyfile(reference.directory / "generation_config.json", output / "generation_config.json")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(output))
    else:
        logger.warning("None of the models has a tokenizer; the merged model is saved without one")
    record = config.model_dump(mode="json", exclude_defaults=True) | {"output_dir": str(output)}
    (output / "merge_config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    if original is not None:
        shutil.copyfile(original, output / "mergekit_config.yml")
    logger.info("Merged model saved to %s", output)
    return output
