"""Wrap a model with the adapter named by `adapter:` (PEFT), or choose which of its own weights train."""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path
from typing import Any

from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from torch import nn
from transformers import PreTrainedModel

from llm_finetuning.config.adapters import (
    AnyAdapter,
    DoraAdapter,
    FreezeAdapter,
    FullAdapter,
    IA3Adapter,
    LoraAdapter,
    PrefixAdapter,
    PromptAdapter,
    PTuningAdapter,
)
from llm_finetuning.errors import ConfigError
from llm_finetuning.models import unsloth_backend

logger = logging.getLogger(__name__)

# Adapters whose initialisation changes the base weights; saved as a plain LoRA relative to the original base.
MUTATING_INITS = ("pissa", "olora")


def peft_config(adapter: AnyAdapter, tokenizer_path: str | None = None, task_type: str = "CAUSAL_LM") -> PeftConfig:
    """The PEFT config for an adapter section (not for `full` and `freeze`, which use no PEFT wrapper)."""
    if isinstance(adapter, LoraAdapter):  # DoraAdapter included
        return LoraConfig(
            r=adapter.r,
            lora_alpha=adapter.alpha,
            lora_dropout=adapter.dropout,
            target_modules=adapter.target_modules,
            bias=adapter.bias,
            modules_to_save=adapter.modules_to_save or None,
            use_rslora=adapter.use_rslora,
            use_dora=isinstance(adapter, DoraAdapter),
            init_lora_weights=True if adapter.init == "default" else adapter.init,
            task_type=task_type,
        )
    if isinstance(adapter, IA3Adapter):
        explicit = isinstance(adapter.target_modules, list)
        return IA3Config(
            target_modules=adapter.target_modules if explicit else None,
            feedforward_modules=adapter.feedforward_modules if explicit else None,
            modules_to_save=adapter.modules_to_save or None,
            task_type=task_type,
        )
    if isinstance(adapter, PrefixAdapter):
        return PrefixTuningConfig(
            num_virtual_tokens=adapter.num_virtual_tokens,
            prefix_projection=adapter.projection,
            encoder_hidden_size=adapter.projection_hidden_size,
            task_type=task_type,
        )
    if isinstance(adapter, PromptAdapter):
        return PromptTuningConfig(
            num_virtual_tokens=adapter.num_virtual_tokens,
            prompt_tuning_init="TEXT" if adapter.init == "text" else "RANDOM",
            prompt_tuning_init_text=adapter.init_text,
            tokenizer_name_or_path=tokenizer_path if adapter.init == "text" else None,
            task_type=task_type,
        )
    if isinstance(adapter, PTuningAdapter):
        return PromptEncoderConfig(
            num_virtual_tokens=adapter.num_virtual_tokens,
            encoder_reparameterization_type=adapter.encoder.upper(),
            encoder_hidden_size=adapter.encoder_hidden_size,
            encoder_num_layers=adapter.encoder_num_layers,
            encoder_dropout=adapter.encoder_dropout,
            task_type=task_type,
        )
    raise TypeError(f"no PEFT config for adapter method {adapter.method}")


def apply_adapter(
    model: PreTrainedModel,
    adapter: AnyAdapter,
    tokenizer_path: str | None = None,
    quantized: bool = False,
    gradient_checkpointing: bool = False,
    task_type: str = "CAUSAL_LM",
    seed: int | None = None,
) -> PreTrainedModel | PeftModel:
    """Return the model to train: a PEFT model with only adapter weights trainable, or the model itself.

    A model loaded by `model.backend: unsloth` gets its adapter from Unsloth, seeded with `seed` (`training.seed`);
    Unsloth prepares quantized weights and checkpointing itself.
    """
    if unsloth_backend.loaded_by_unsloth(model):
        wrapped = unsloth_backend.apply_adapter(model, adapter, gradient_checkpointing, seed)
    else:
        wrapped = _apply_peft(model, adapter, tokenizer_path, quantized, gradient_checkpointing, task_type)
    counts = count_parameters(wrapped)
    logger.info(
        "adapter %s: %s of %s parameters train (%.3f%%)",
        adapter.method,
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        100 * counts["trainable"] / max(counts["total"], 1),
    )
    return wrapped


def _apply_peft(
    model: PreTrainedModel,
    adapter: AnyAdapter,
    tokenizer_path: str | None,
    quantized: bool,
    gradient_checkpointing: bool,
    task_type: str,
) -> PreTrainedModel | PeftModel:
    if quantized:
        # Casts norms to fp32, enables input gradients for checkpointing through frozen quantized layers.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if isinstance(adapter, FullAdapter):
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        wrapped = model
    elif isinstance(adapter, FreezeAdapter):
        wrapped = freeze_except(model, adapter)
    else:
        wrapped = get_peft_model(model, peft_config(adapter, tokenizer_path, task_type))
    return wrapped


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name and the list of the model's decoder layers (the longest `ModuleList`)."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ConfigError("adapter.method freeze: the model has no list of decoder layers to choose from")
    return max(lists, key=lambda item: (len(item[1]), -item[0].count(".")))


def chosen_layers(layers: int | list[int], count: int) -> list[int]:
    if isinstance(layers, int):
        if layers > count:
            raise ConfigError(f"adapter.layers: {layers} exceeds the model's {count} layers")
        return list(range(count - layers, count))
    resolved = []
    for index in layers:
        if not -count <= index < count:
            raise ConfigError(f"adapter.layers: index {index} is out of range for {count} layers")
        resolved.append(index % count)
    return sorted(set(resolved))


def freeze_except(model: PreTrainedModel, adapter: FreezeAdapter) -> PreTrainedModel:
    """Train the chosen layers (or their chosen submodules) and extra modules; freeze everything else."""
    prefix, layer_list = decoder_layers(model)
    indices = chosen_layers(adapter.layers, len(layer_list))
    layer_pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$")
    used = {name: False for name in [*adapter.modules, *adapter.extra_modules]}
    # Decide per tensor, not per name: tied weights (lm_head = embed_tokens) are one tensor under two names,
    # and choosing either name must train it.
    chosen: set[int] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        parts = name.split(".")
        match = layer_pattern.match(name)
        if match and int(match.group(1)) in indices:
            hits = [m for m in adapter.modules if m in match.group(2).split(".")]
            train = not adapter.modules or bool(hits)
        elif not match:
            hits = [m for m in adapter.extra_modules if m in parts]
            train = bool(hits)
        else:
            hits, train = [], False
        used.update(dict.fromkeys(hits, True))
        if train:
            chosen.add(id(parameter))
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)
    unknown = [name for name, hit in used.items() if not hit]
    if unknown:
        raise ConfigError(
            f"adapter.modules / adapter.extra_modules: no parameter of the model is named {', '.join(unknown)}. "
            "Check the names with `model.named_modules()` (e.g. mlp, self_attn, embed_tokens, lm_head, norm)."
        )
    return model


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def save_initial_adapter(model: Any, adapter: AnyAdapter, path: Path) -> Path | None:
    """PiSSA/OLoRA change the base weights; keep the initial adapter so the final one can be converted back."""
    if isinstance(model, PeftModel) and isinstance(adapter, LoraAdapter) and adapter.init in MUTATING_INITS:
        with warnings.catch_warnings():
            # PEFT warns that a PiSSA adapter is unconverted; this copy exists precisely to convert at save time.
            warnings.filterwarnings("ignore", message=".*changes the base weights.*")
            model.save_pretrained(path)
        return path
    return None
