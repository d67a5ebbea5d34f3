"""Turn a validated config into the numbers the estimate works with: dtypes, batch, sequence length, what the
method keeps in memory besides the policy (reference model, reward model, generation cache), and the sharding.

Every assumption made here is recorded as a note, so the output says what was assumed and why.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_finetuning.config.adapters import FreezeAdapter, FullAdapter, LoraAdapter
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError
from llm_finetuning.estimate import codepaths
from llm_finetuning.estimate.gpus import GPU
from llm_finetuning.estimate.params import Params, count
from llm_finetuning.estimate.shapes import ModelShape
from llm_finetuning.estimate.source import read_config_json

logger = logging.getLogger(__name__)

SHARDING = ("none", "zero1", "zero2", "zero3", "fsdp")
# GRPO's options when the config section does not define them (TRL's defaults as the toolkit uses them).
GRPO_DEFAULTS = {"num_generations": 8, "max_completion_length": 256, "beta": 0.04, "max_prompt_length": None}


@dataclass
class Notes:
    """Assumptions and warnings collected while estimating; each is also logged."""

    items: list[tuple[str, str]] = field(default_factory=list)
    quiet: bool = False
    """Collect without logging (the what-if estimates behind the suggestions)."""

    def info(self, message: str) -> None:
        if not self.quiet:
            logger.info("%s", message)
        self.items.append(("info", message))

    def warn(self, message: str) -> None:
        if not self.quiet:
            logger.warning("%s", message)
        self.items.append(("warning", message))

    @property
    def warnings(self) -> list[str]:
        return [m for level, m in self.items if level == "warning"]


@dataclass(frozen=True)
class Generation:
    """Sampling in GRPO/PPO: how many sequences are generated together, and their prompt and completion lengths."""

    sequences: int
    prompt: int
    completion: int
    merged: bool = False
    """Sampling from merged copies of the LoRA layers (`method.generation_weights: merged`), kept on the device."""


@dataclass
class Plan:
    """Everything the memory and time estimates need, resolved from the config and the command line."""

    shape: ModelShape
    params: Params
    method: str
    device: str
    dtype: str
    """`model.dtype` as resolved (`auto` becomes bfloat16 or float32)."""
    weight_bytes: int
    """Bytes per base weight before quantization (`model.dtype`)."""
    act_bytes: int
    """Bytes per value of the matmul inputs and outputs (the autocast dtype, else the weight dtype)."""
    residual_bytes: int
    """Bytes per value of the residual stream and the norms (float32 with float32 weights or QLoRA)."""
    linear_out_bytes: int
    """Bytes per value of the linear layers' outputs (QLoRA's bitsandbytes layers return the input dtype)."""
    attn_bytes: int
    """Bytes per value of the queries, keys and values the attention keeps (and of the KV cache)."""
    autocast: bool
    cast_copies: bool
    """Float32 weights that train under 16-bit autocast: every linear keeps its own 16-bit copy of its input."""
    base_linears_train: bool
    """The decoder layers' own linear weights train (full or freeze), so those layers keep their inputs."""
    quantization: str
    double_quantization: bool
    optimizer: str
    sequences: int
    """Sequences in one micro-batch with gradients (chosen and rejected both count)."""
    seq_len: int
    scored: int
    """Positions per sequence the LM head scores (the completion only in GRPO/PPO)."""
    accumulation: int
    checkpointing: bool
    loss: str
    """`fused` (TRL's chunked LM head, no full logits), `plain` (the toolkit's head on CPU: logits of the labelled
    positions only), `full` (logits materialised) or `score` (reward head)."""
    lora_dropout: float
    attention: str
    expanded_kv: bool
    """Grouped key/value heads are repeated to the query heads before the attention (sdpa with a mask)."""
    reference: str
    """`none`, `adapter` (the base with the adapter disabled: no memory), `copy` (a frozen copy), `precomputed`."""
    reward_shape: ModelShape | None
    value_head: bool
    generation: Generation | None
    gpus: int
    sharding: str
    notes: Notes
    batch: int
    """`training.per_device_batch_size` as configured (examples, pairs, prompts or completions per device)."""
    ppo_epochs: int = 1
    ppo_passes: int = 1
    """Forward passes without gradients per sequence besides training (old log-probs, reference, values)."""
    padding_free: bool = False
    """The examples of a micro-batch go end to end in one row (padding-free or packed SFT)."""
    per_example_attention: bool = False
    """That row is attended per example by the toolkit's varlen sdpa (`models/varlen_attention.py`)."""
    math_attention: int = 0
    """Example length over which sdpa's math kernel keeps float32 scores (per-example attention on CPU); 0: none."""
    liger: bool = False
    """Liger's RMSNorm and SwiGLU kernels replace the model's (`training.liger_kernel` on CUDA)."""
    offload: str = "none"
    """`distributed.cpu_offload`: FSDP keeps parameters, gradients and optimizer states in CPU memory (`all`),
    DeepSpeed the optimizer states (`optimizer`)."""

    @property
    def head_weight_bytes(self) -> int:
        """The LM head's dtype: float32 after QLoRA's preparation, else the weights' dtype."""
        return 4 if self.quantization != "none" else self.weight_bytes

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


def _dtype_bytes(name: str) -> int:
    return 4 if name == "float32" else 2


def _precision(
    config: Config, shape: ModelShape, device: str, gpu: GPU | None, notes: Notes, cpu_bf16: bool | None
) -> tuple[str, str]:
    """Weight dtype and the autocast setting (`bf16`, `fp16` or `no`), as the toolkit resolves them on `device`."""
    bf16_ok = device == "cuda" and (gpu is None or gpu.bf16)
    dtype = config.model.dtype
    if dtype == "auto":
        dtype = "bfloat16" if bf16_ok else "float32"
        where = f"on {gpu.name}" if gpu else "on a GPU with bf16" if device == "cuda" else "on CPU"
        notes.info(f"model.dtype auto: {dtype} assumed ({where})")
    elif dtype == "bfloat16" and device == "cuda" and not bf16_ok:
        notes.warn(f"model.dtype bfloat16: {gpu.name if gpu else 'this GPU'} has no bf16 support; use float16")
    return dtype, codepaths.autocast(config, shape, device, gpu, notes, cpu_bf16)


def _sharding(config: Config, sharding: str | None, gpus: int, notes: Notes) -> str:
    if sharding is None:
        extra = config.training.extra
        distributed = getattr(config, "distributed", None)  # the `distributed:` section, where it exists
        stage = getattr(distributed, "sharding_stage", 0)
        if stage:
            sharding = f"zero{stage}"
        elif extra.get("fsdp"):
            sharding = "zero3" if "full_shard" in str(extra["fsdp"]) else "zero2"
        elif extra.get("deepspeed"):
            sharding = _deepspeed_stage(extra["deepspeed"], notes)
        else:
            sharding = "none"
        if sharding != "none":
            notes.info(f"sharding {sharding}, as the config's FSDP/DeepSpeed settings say")
    if sharding not in SHARDING:
        raise UserError(f"--sharding: `{sharding}` is not one of {', '.join(SHARDING)}.")
    sharding = "zero3" if sharding == "fsdp" else sharding
    if sharding != "none" and gpus == 1:
        notes.warn(f"sharding {sharding} over 1 device saves nothing; pass --gpus N to spread the states")
    return sharding


def _offload(config: Config, notes: Notes) -> str:
    distributed = getattr(config, "distributed", None)
    if distributed is None or not distributed.cpu_offload or distributed.strategy == "ddp":
        return "none"
    offload = "all" if distributed.strategy == "fsdp" else "optimizer"
    what = "parameters, gradients and optimizer states" if offload == "all" else "optimizer states"
    notes.info(f"distributed.cpu_offload: {what} are kept in CPU memory, not counted on the device")
    return offload


def _deepspeed_stage(value: Any, notes: Notes) -> str:
    data = value
    if isinstance(value, str):
        path = Path(value)
        try:
            data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            data = None
        if data is None:
            notes.warn(f"training.extra.deepspeed: cannot read `{value}`; ZeRO stage 2 assumed")
            return "zero2"
    stage = (data.get("zero_optimization") or {}).get("stage", 0) if isinstance(data, dict) else 0
    return f"zero{stage}" if stage in (1, 2, 3) else "none"


def _reference(config: Config, peft: bool) -> str:
    name = config.method.name
    if name in ("dpo", "kto"):
        if peft:
            return "adapter"
        return "precomputed" if config.method.precompute_ref_log_probs else "copy"
    if name == "ppo":
        return "adapter" if peft else "copy"
    if name == "grpo":
        beta = getattr(config.method, "beta", GRPO_DEFAULTS["beta"])
        return "none" if beta == 0 else "adapter" if peft else "copy"
    return "none"


def _reward_shape(config: Config, policy: ModelShape, notes: Notes) -> ModelShape | None:
    path = getattr(config.method, "reward_model", None)
    if not path:
        return None
    try:
        from llm_finetuning.estimate.shapes import shape_from_config

        return shape_from_config(read_config_json(path), f"method.reward_model {path}").as_reward_model()
    except UserError:
        notes.warn(
            f"method.reward_model: no config.json found for `{path}`; its memory is counted as a copy of the policy"
        )
        return policy.as_reward_model()


def _grpo_option(config: Config, key: str, notes: Notes) -> Any:
    if hasattr(config.method, key):
        return getattr(config.method, key)
    default = GRPO_DEFAULTS[key]
    if default is not None:
        notes.warn(f"method.{key}: not in this config's GRPO section; the default {default} assumed")
    return default


ENCODER_METHODS = ("embedding", "reranker", "classify", "multi_head")
"""Models that read text and end in a small head: no generation, no LM head unless a multi-head has one."""


def build_plan(
    config: Config,
    shape: ModelShape,
    *,
    device: str = "cuda",
    gpu: GPU | None = None,
    gpus: int = 1,
    sharding: str | None = None,
    notes: Notes | None = None,
    cpu_bf16: bool | None = None,
) -> Plan:
    """Resolve `config` into a `Plan` for `gpus` devices of kind `device` (`cuda` or `cpu`).

    `cpu_bf16` says whether the CPU multiplies bf16 natively (what `training.mixed_precision: auto` depends on
    there); None reads this machine's CPU flags.
    """
    notes = notes or Notes()
    if gpus < 1:
        raise UserError(f"--gpus: must be at least 1 (got {gpus}).")
    method, training, adapter = config.method.name, config.training, config.adapter
    encoder = method in ENCODER_METHODS
    lm_head = method == "multi_head" and any(head.type == "lm" for head in config.method.heads)
    if method == "reward" or (encoder and not lm_head):
        shape = shape.as_reward_model()  # a small head (pooling + linear, or a score) instead of the LM head
    params = count(shape, adapter)
    peft = not isinstance(adapter, FullAdapter | FreezeAdapter)
    dtype, mixed = _precision(config, shape, device, gpu, notes, cpu_bf16)
    w = _dtype_bytes(dtype)
    autocast = mixed != "no"
    quantized = config.model.quantization != "none"
    residual = 4 if quantized or w == 4 else 2
    act = 2 if autocast else w
    linear_out = residual if quantized else act
    seq = config.data.max_length + params.virtual_tokens
    batch = training.per_device_batch_size
    sharding = _sharding(config, sharding, gpus, notes)
    sequences, scored, accumulation = batch, seq, training.gradient_accumulation_steps
    loss = codepaths.lm_head(config, shape, device, sharding, notes)
    generation, ppo_epochs, passes = None, 1, 1
    merged = getattr(config.method, "generation_weights", "adapter") == "merged"  # GRPO and PPO sampling
    if encoder:
        loss = "full" if lm_head else "score"
        if method == "embedding" and config.method.record_kind == "retrieval":
            # Query, positive and (assumed) one hard negative per row go through the encoder in one step.
            sequences = 3 * batch
            notes.info("embedding: 3 texts per row assumed (query, positive, one hard negative)")
            if config.method.loss == "cached_mnrl":
                sequences = min(sequences, config.method.mini_batch_size or 16)
                notes.info("cached_mnrl: activations of one mini-batch at a time (GradCache)")
        elif method == "embedding":
            sequences = 2 * batch
    elif method in ("dpo", "orpo", "reward"):
        sequences = 2 * batch  # chosen and rejected go through the model together
        loss = {"dpo": "fused", "orpo": "full", "reward": "score"}[method]
    elif method == "ppo":
        opts = config.method
        prompt = opts.max_prompt_length or config.data.max_length
        generation = Generation(batch * opts.num_generations, prompt, opts.max_new_tokens, merged)
        sequences, seq, accumulation, loss = opts.mini_batch_size, prompt + opts.max_new_tokens, 1, "full"
        scored = opts.max_new_tokens + 1
        ppo_epochs, passes = opts.ppo_epochs, 2  # policy/value and reference scoring passes
        notes.info(f"PPO: prompts assumed {prompt} tokens long (the limit), completions {opts.max_new_tokens}")
    elif method == "grpo":
        prompt = _grpo_option(config, "max_prompt_length", notes) or config.data.max_length
        completion = _grpo_option(config, "max_completion_length", notes)
        _grpo_option(config, "num_generations", notes)  # only warns where the section lacks it
        # TRL generates the completions of a whole optimizer step at once (steps_per_generation = accumulation).
        generation = Generation(batch * accumulation, prompt, completion, merged)
        seq, scored = prompt + completion, completion
        passes = 1 + int(_reference(config, peft) != "none")
        notes.info(f"GRPO: prompts assumed {prompt} tokens long (the limit), completions {completion}")
    if shape.max_position_embeddings and seq > shape.max_position_embeddings:
        notes.warn(
            f"data.max_length: sequences of {seq} tokens exceed the model's max_position_embeddings "
            f"({shape.max_position_embeddings})"
        )
    padding_free, per_example = codepaths.per_example_attention(config, shape, device, notes)
    attention = config.model.attn_implementation
    attention = "sdpa" if attention == "auto" else attention
    if attention == "eager":
        notes.warn("model.attn_implementation eager keeps a seq x seq attention matrix per head and layer")
    reference = _reference(config, peft)
    return Plan(
        shape=shape,
        params=params,
        method=method,
        device=device,
        dtype=dtype,
        weight_bytes=w,
        act_bytes=act,
        residual_bytes=residual,
        linear_out_bytes=linear_out,
        attn_bytes=act if autocast else linear_out,
        autocast=autocast,
        cast_copies=autocast and w == 4 and not quantized and not peft,
        base_linears_train=not peft and not quantized,
        quantization=config.model.quantization,
        double_quantization=config.model.double_quantization,
        optimizer=training.optimizer,
        sequences=sequences,
        seq_len=seq,
        scored=scored,
        accumulation=accumulation,
        checkpointing=training.gradient_checkpointing,
        loss=loss,
        lora_dropout=adapter.dropout if isinstance(adapter, LoraAdapter) else 0.0,
        attention=attention,
        expanded_kv=attention != "flash_attention_2" and shape.num_kv_heads < shape.num_heads,
        reference=reference,
        reward_shape=_reward_shape(config, shape, notes) if method == "ppo" else None,
        value_head=method == "ppo",
        generation=generation,
        gpus=gpus,
        sharding=sharding,
        notes=notes,
        padding_free=padding_free,
        per_example_attention=per_example,
        math_attention=codepaths.math_attention_length(config, seq, device, per_example, notes),
        liger=codepaths.liger(config, shape, device, notes),
        offload=_offload(config, notes),
        batch=batch,
        ppo_epochs=ppo_epochs,
        ppo_passes=passes,
    )
