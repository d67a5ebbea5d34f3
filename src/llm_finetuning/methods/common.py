"""Training arguments shared by every method: the `training:`, `eval:` and `tracking:` sections."""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from llm_finetuning.config.schema import Config
from llm_finetuning.env import is_installed
from llm_finetuning.errors import ConfigError
from llm_finetuning.models import fast_path
from llm_finetuning.models.fast_path import model_hidden_size  # noqa: F401 - re-exported for callers
from llm_finetuning.runs import distributed
from llm_finetuning.runs.rundir import RunDir

# TrainingArguments names this schema sets itself; `training.extra` may not set them behind its back.
COVERED = {
    "output_dir",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler_type",
    "warmup_steps",
    "seed",
    "data_seed",
    "torch_compile",
    "gradient_checkpointing",
    "logging_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "eval_strategy",
    "eval_steps",
    "report_to",
    "run_name",
    "bf16",
    "fp16",
    "fsdp",
    "fsdp_config",
    "deepspeed",
    "ddp_find_unused_parameters",
    "ddp_timeout",
}


def check_trackers(report_to: list[str]) -> None:
    """Fail before training, not at the first log step, when a tracker's package is missing."""
    missing = [name for name in report_to if not is_installed(name)]
    if missing:
        extras = ",".join(missing)
        raise ConfigError(
            f"tracking.report_to: {', '.join(missing)} not installed. Install it "
            f"(`pip install 'llm-finetuning[{extras}]'`) or remove it from tracking.report_to."
        )


def training_arguments(config: Config, run: RunDir, has_eval: bool) -> dict[str, Any]:
    """Keyword arguments for a transformers `TrainingArguments` subclass (TRL's method configs)."""
    check_trackers(config.tracking.report_to)
    t = config.training
    path = fast_path.for_config(config)
    precision = path.precision.value
    warmup: float = t.warmup_steps if t.warmup_steps is not None else (t.warmup_ratio or 0.0)
    evaluate_steps = has_eval and config.eval.every_steps is not None
    return {
        "output_dir": str(run.checkpoints),
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "per_device_train_batch_size": t.per_device_batch_size,
        "per_device_eval_batch_size": t.per_device_eval_batch_size or t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "optim": path.optimizer.value,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": warmup,
        "seed": t.seed,
        "data_seed": t.seed,
        "activation_checkpointing": t.gradient_checkpointing,
        "activation_checkpointing_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps" if t.save_steps else "epoch",
        "save_steps": t.save_steps or 500,
        "save_total_limit": t.save_total_limit,
        "eval_strategy": "steps" if evaluate_steps else "no",
        "eval_steps": config.eval.every_steps if evaluate_steps else None,
        "report_to": list(config.tracking.report_to) or "none",
        "run_name": config.tracking.run_name or run.root.name,
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": path.device == "cpu",
        "torch_compile": path.compile.value == "on",
        **distributed_arguments(config),
    }


def distributed_arguments(config: Config) -> dict[str, Any]:
    """TrainingArguments for `distributed:` (DDP, FSDP or DeepSpeed ZeRO); nothing in a single-process run."""
    d = config.distributed
    if distributed.world_size() <= 1:
        return {}
    arguments: dict[str, Any] = {
        "ddp_find_unused_parameters": d.find_unused_parameters,
        "ddp_timeout": d.timeout_minutes * 60,
    }
    if d.strategy == "fsdp":
        if config.model.quantization != "none":
            raise ConfigError(
                "distributed.strategy: fsdp cannot shard a 4/8-bit quantized base here; use `strategy: ddp` (each "
                "process holds the quantized model) or `deepspeed` with `zero_stage: 3`."
            )
        # FSDP2 takes "reshard after forward" as a bool (full_shard: yes, shard_grad_op: no); FSDP1 the strategy.
        reshard: bool | str = d.fsdp_sharding != "shard_grad_op" if d.fsdp_version == 2 else d.fsdp_sharding
        if d.fsdp_version == 2 and d.fsdp_sharding == "hybrid_shard":
            raise ConfigError("distributed.fsdp_sharding: hybrid_shard needs `fsdp_version: 1` in this version.")
        arguments["fsdp"] = True
        arguments["fsdp_config"] = {
            "version": d.fsdp_version,
            "reshard_after_forward": reshard,
            "cpu_offload": d.cpu_offload,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "state_dict_type": "FULL_STATE_DICT",  # `final/` is one loadable model, not shards
            "activation_checkpointing": config.training.gradient_checkpointing,
        }
    elif d.strategy == "deepspeed":
        if not is_installed("deepspeed"):
            raise ConfigError(
                "distributed.strategy: deepspeed is not installed. `pip install deepspeed` (it needs a CUDA "
                "toolkit), or use `strategy: fsdp`."
            )
        arguments["deepspeed"] = deepspeed_config(d.zero_stage, d.cpu_offload)
    return arguments


def deepspeed_config(stage: int, offload: bool) -> dict[str, Any]:
    """A ZeRO config whose batch, clipping and precision follow the training arguments (`auto`)."""
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True  # so `final/` is a whole model
    return {
        "zero_optimization": zero,
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
    }


def apply_extra(arguments: dict[str, Any], extra: dict[str, Any], config_class: type) -> dict[str, Any]:
    """Add `training.extra` to the arguments after checking each name against the trainer config class."""
    valid = {f.name for f in dataclasses.fields(config_class) if f.init}
    for key, value in extra.items():
        if key in COVERED or key in arguments:
            raise ConfigError(
                f"training.extra.{key}: this option is set by the config schema; use the matching "
                "`training.*`, `eval.*` or `tracking.*` key instead."
            )
        if key not in valid:
            close = difflib.get_close_matches(key, sorted(valid), n=1, cutoff=0.6)
            hint = f" Did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"training.extra.{key}: not an option of {config_class.__name__}.{hint}")
        arguments[key] = value
    return arguments
