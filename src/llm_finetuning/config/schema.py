"""The one config schema. Every option is described once, as an attribute docstring.

Those docstrings are what `llmft config schema`, `llmft train --help` and the docs show, so they are written
for the user: what the option does, its unit, and when to change it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from llm_finetuning.config.adapters import (  # noqa: F401  (re-exported: the schema's public names)
    ADAPTERS,
    PROMPT_LEARNING,
    AdapterConfig,
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
from llm_finetuning.config.base import Section, conflict
from llm_finetuning.config.data import DataConfig, DataSource  # noqa: F401  (re-exported: the schema's public names)
from llm_finetuning.config.distributed import DistributedConfig
from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.config.methods import (  # noqa: F401  (re-exported: the schema's public names)
    METHODS,
    PPO_FROM_TRAINING,
    DPOMethod,
    KTOMethod,
    MethodConfig,
    ORPOMethod,
    PPOMethod,
    PretrainMethod,
    RewardMethod,
    SFTMethod,
)
from llm_finetuning.config.multihead import check_heads
from llm_finetuning.config.privacy import PrivacyConfig, check_privacy
from llm_finetuning.evaluation.config import EvalTaskConfig, GoldenConfig, one_or_many_tasks


# --------------------------------------------------------------------------------------------- model
class TinyModelConfig(Section):
    """Shape of a small randomly-initialised model, used when `model.name` is `tiny`."""

    architecture: Literal["llama", "qwen2", "bert"] = "llama"
    """Transformer family whose code builds the model: transformers' Llama or Qwen2 decoders, or a BERT encoder
    (for `method: embedding`, `reranker` and `classify`)."""
    hidden_size: int = Field(64, gt=0)
    """Width of the residual stream."""
    num_layers: int = Field(2, gt=0)
    """Number of decoder layers."""
    num_heads: int = Field(4, gt=0)
    """Attention heads per layer; must divide `hidden_size`."""
    num_kv_heads: int | None = Field(None, gt=0)
    """Key/value heads (grouped-query attention); defaults to `num_heads`. Must divide `num_heads`."""
    intermediate_size: int | None = Field(None, gt=0)
    """Width of the MLP; defaults to 4 x `hidden_size`."""
    max_position_embeddings: int = Field(2048, gt=0)
    """Longest sequence the model accepts."""
    seed: int = 0
    """Seed of the random initialisation, so two runs build the same model."""

    @model_validator(mode="after")
    def _check_heads(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"`hidden_size` ({self.hidden_size}) must be divisible by `num_heads` ({self.num_heads})")
        kv = self.num_kv_heads or self.num_heads
        if self.num_heads % kv:
            raise ValueError(f"`num_heads` ({self.num_heads}) must be divisible by `num_kv_heads` ({kv})")
        return self


class ModelConfig(Section):
    """Which model to start from and how to load it."""

    name: str = "tiny"
    """Hub id (`Qwen/Qwen2.5-0.5B-Instruct`), local directory, or `tiny` for a small random model built from
    `model.tiny`. A path starting with `./` or `../` is relative to the YAML file that sets it."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) to load; the default branch when unset."""
    tokenizer: str | None = None
    """Tokenizer hub id or directory; defaults to `model.name`. For `tiny`, `builtin` (the default) is the
    project's own byte-level tokenizer, or give a directory such as `../shared/data/tokenizers/qwen2`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weight dtype. `auto` picks bfloat16 on a GPU that supports it, float32 otherwise."""
    attn_implementation: Literal[
        "auto", "eager", "sdpa", "flash_attention_2", "flex_attention", "torch_varlen", "sdpa_per_example"
    ] = "auto"
    """Attention kernel. `auto` (recommended) is sdpa, and on rows that hold several examples (packing,
    padding-free batches) the fastest kernel that keeps them apart on this device: flash-attn's varlen kernel where
    installed, else torch's own varlen flash kernel on CUDA (sm80+), flex attention, or sdpa per example on CPU
    (`llmft env` shows the choice). `torch_varlen`, `sdpa_per_example` and `flex_attention` force one of those;
    `sdpa` and `eager` keep transformers' kernels, with a mask over the whole row (batches then stay padded)."""
    device_map: str | None = None
    """Device placement when loading (`auto`, `cpu`, `cuda:0`); unset lets the trainer place the model."""
    trust_remote_code: bool = False
    """Run modelling code shipped in the model repository. Only enable it for repositories you trust."""
    allow_unsafe_weights: bool = False
    """Allow pickle-based `.bin` weights. By default only safetensors files are loaded, because pickle files
    can run code when loaded."""
    quantization: Literal["none", "nf4", "fp4", "int8"] = "none"
    """Load the frozen base weights quantized with bitsandbytes (QLoRA with a `lora` or `dora` adapter):
    4-bit `nf4` or `fp4`, or 8-bit `int8`. Computation runs in `dtype`."""
    double_quantization: bool = True
    """With 4-bit quantization, also quantize the quantization constants (saves ~0.4 bits per parameter)."""
    backend: Literal["transformers", "unsloth"] = "transformers"
    """What loads the model and attaches the adapter. `transformers` (with PEFT) runs everywhere; `unsloth` uses
    Unsloth's loader and LoRA patches (CUDA GPUs, `pip install 'llm-finetuning[unsloth]'`), for LoRA/QLoRA."""
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)
    """Shape of the random model built when `name` is `tiny`."""

    @model_validator(mode="after")
    def _tiny_only_for_tiny(self) -> ModelConfig:
        if self.name != "tiny" and "tiny" in self.model_fields_set:
            raise ValueError(
                f"`model.tiny` only applies when `model.name` is `tiny`, but `model.name` is `{self.name}`. "
                "Remove `model.tiny` or set `model.name: tiny`"
            )
        return self


# --------------------------------------------------------------------------------------------- data
# DataSource and DataConfig live in config/data.py (imported above).


# ----------------------------------------------------------------------------------------- training
class TrainingConfig(Section):
    """Optimisation and checkpointing."""

    learning_rate: float = Field(2.0e-4, gt=0)
    """Peak learning rate."""
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (fractions allowed). Ignored when `max_steps` is set."""
    max_steps: int | None = Field(None, gt=0)
    """Stop after this many optimizer steps; overrides `epochs`."""
    per_device_batch_size: int = Field(4, gt=0)
    """Examples per device per forward pass."""
    per_device_eval_batch_size: int | None = Field(None, gt=0)
    """Examples per device per evaluation pass; defaults to `per_device_batch_size`."""
    gradient_accumulation_steps: int = Field(1, gt=0)
    """Forward passes summed into one optimizer step (effective batch = batch x accumulation x devices)."""
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit"] = (
        "adamw_torch_fused"
    )
    """Optimizer (transformers' names). `adamw_torch_fused` (the default, as in transformers and TRL) is AdamW in one
    fused kernel per step, on GPUs and CPUs alike; `adamw_torch` is the same update tensor by tensor. The 8-bit ones
    need bitsandbytes."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay."""
    max_grad_norm: float = Field(1.0, ge=0)
    """Gradient clipping norm; 0 disables clipping."""
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "polynomial", "inverse_sqrt"] = (
        "cosine"
    )
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    """Fraction of the steps spent warming up the learning rate."""
    warmup_steps: int | None = Field(None, ge=0)
    """Number of warm-up steps (instead of `warmup_ratio`)."""
    seed: int = 42
    """Seed for shuffling, dropout and adapter initialisation."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about a third more compute."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """Autocast precision for the forward pass: `auto` uses bf16 on GPUs that support it (fp16 on older ones), and on
    CPUs with native bf16 (AVX512-BF16 or AMX) for models from hidden size 128 up, where it trains about twice as fast;
    none otherwise. `bf16` forces it (on any CPU, fast only on those with native bf16), `no` turns it off."""
    liger_kernel: bool = False
    """Replace the model's RMSNorm, rotary embedding and SwiGLU MLP with Liger's fused Triton kernels (CUDA GPUs,
    `pip install 'llm-finetuning[liger]'`; Llama, Mistral, Qwen2/3, Gemma, Phi-3 and other architectures Liger
    patches). The loss head stays the trainer's own chunked one, so the full logits are not built either way."""
    compile: bool = False
    """Compile the model with `torch.compile` (transformers' `torch_compile`): faster steps after a compilation of
    minutes at the start, on GPUs with Triton and on CPUs. Off by default: not measured yet."""
    logging_steps: int = Field(10, gt=0)
    """Log loss and learning rate every N optimizer steps."""
    save_steps: int | None = Field(None, gt=0)
    """Write a checkpoint every N optimizer steps (PPO: PPO steps); unset saves one at the end of each epoch (PPO:
    each pass over the prompts). `--resume` continues from the newest complete one."""
    save_total_limit: int | None = Field(2, gt=0)
    """Keep only the newest N checkpoints."""
    privacy: PrivacyConfig | None = None
    """Differentially private SFT (DP-SGD through Opacus: per-example clipping, noise, Poisson batches, an
    accountant). Unset: ordinary training."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Escape hatch: keyword arguments passed straight to the underlying TRL/transformers config. Unknown names
    are errors; keys this schema already covers must be set there instead."""

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `no` as false: `mixed_precision: no` means "no autocast".
        return "no" if value is False else value

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingConfig:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise conflict("training.warmup_ratio", "training.warmup_steps")
        return self


# ------------------------------------------------------------------------------------- eval/tracking
class EvalConfig(Section):
    """Evaluation during and after training."""

    every_steps: int | None = Field(None, gt=0)
    """Compute the eval loss every N optimizer steps (and always at the end) when eval data exists."""
    tasks: list[EvalTaskConfig] = Field(default_factory=list)
    """Evaluation tasks run after training (results in `RUN/eval/<task>.json`, metrics in the manifest and
    `metrics.jsonl`): names (`gsm8k_accuracy`) or mappings with options (`{name: arc_loglik, limit: 100}`).
    `llmft eval --list` shows every task."""
    tasks_every_steps: int | None = Field(None, gt=0)
    """Also run `tasks` every N optimizer steps during training (results in `RUN/eval/step-N/`). Unset: only
    after training. Generation is slow; pair it with a small `limit`."""
    limit: int | None = Field(None, gt=0)
    """Default number of examples per task (first N); a task's own `limit` wins. Unset: all."""
    max_new_tokens: int | None = Field(None, gt=0)
    """Default tokens generated per answer; a task's own `max_new_tokens` wins. Unset: each task's default."""
    max_length: int | None = Field(None, gt=1)
    """Tokens the model reads at most in evaluation (prompt + generated answer, or context + option); unset: the
    model's own context (`max_position_embeddings` or equivalent). Examples that do not fit are skipped or truncated
    and counted (docs/evaluation.md)."""
    batch_size: int = Field(8, gt=0)
    """Prompts generated (or options scored) per forward pass."""
    seed: int = 0
    """Seed set before each task, so results repeat (greedy decoding is deterministic anyway)."""
    golden: GoldenConfig | None = None
    """A golden set checked after training against the base model (or `golden.baseline`): the guard against
    catastrophic forgetting. A regression beyond the tolerance fails the run unless `golden.fail_run: false`."""
    judge: JudgeConfig | None = None
    """The LLM judge of the `judged` task and of `judged` golden items (an OpenAI-compatible endpoint)."""

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names(cls, value: Any) -> Any:
        return one_or_many_tasks(value)

    @model_validator(mode="after")
    def _judge_when_judged(self) -> EvalConfig:
        if self.judge is None and any(task.name == "judged" for task in self.tasks):
            raise ValueError("task `judged` needs an `eval.judge` section (the judge endpoint and model)")
        return self


class TrackingConfig(Section):
    """Experiment trackers."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    """Trackers that receive the metrics, in addition to the run directory's `metrics.jsonl`."""
    run_name: str | None = None
    """Name shown in the trackers; defaults to the run directory's name."""


# ------------------------------------------------------------------------------------------- config
class Config(Section):
    """A whole run: what to train, on what, how, and where the results go."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    """The model to start from."""
    adapter: AdapterConfig = Field(default_factory=LoraAdapter)
    """How the model is adapted: `full`, `freeze`, `lora`, `dora`, `ia3`, `prefix`, `prompt` or `p_tuning`."""
    data: DataConfig
    """Training and evaluation data."""
    method: MethodConfig = Field(default_factory=SFTMethod)
    """Training method and its own options."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Optimisation and checkpointing."""
    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Experiment trackers."""
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    """Multi-process training (`llmft train --nproc N`): DDP, FSDP or DeepSpeed ZeRO."""
    output_dir: str = "runs/run"
    """Run directory (relative to the working directory). Never overwritten without `--overwrite`."""

    @model_validator(mode="after")
    def _compatible_sections(self) -> Config:
        method = self.adapter.method
        if self.model.quantization != "none" and method not in ("lora", "dora"):
            raise ValueError(
                f"`model.quantization: {self.model.quantization}` needs `adapter.method: lora` or `dora` (QLoRA); "
                f"`adapter.method: {method}` would train quantized weights. Change one of them"
            )
        if self.data.packing and method in PROMPT_LEARNING:
            raise ValueError(
                f"`data.packing: true` cannot be used with `adapter.method: {method}`: its virtual tokens are "
                "prepended once per sequence, so packed examples would share them. Choose one"
            )
        if method == "prefix" and self.training.gradient_checkpointing:
            raise ValueError(
                "`adapter.method: prefix` cannot be used with `training.gradient_checkpointing: true`: the recomputed "
                "layers see the attention mask without the prefix positions (transformers + PEFT). Turn one off"
            )
        if self.data.packing and self.method.name == "pretrain":
            raise ValueError(
                "`data.packing: true` has no effect with `method.name: pretrain`, whose text is already cut into "
                "full blocks. Remove one"
            )
        if self.method.name == "grpo" and "lm_head" in (getattr(self.adapter, "target_modules", None) or []):
            raise ValueError(
                "`adapter.target_modules` includes `lm_head`, which GRPO cannot train through an adapter (TRL "
                "computes log-probabilities from the head's base weight). Remove it, or add `lm_head` to "
                "`adapter.modules_to_save`"
            )
        if getattr(self.method, "generation_weights", None) == "merged":
            if method != "lora" or self.model.quantization != "none":
                used = f"`adapter.method: {method}`" if method != "lora" else "`model.quantization`"
                raise ValueError(
                    "`method.generation_weights: merged` merges a plain LoRA adapter into copies of unquantized "
                    f"linear weights; {used} has none to merge. Remove it, or train `adapter.method: lora` without "
                    "quantization"
                )
        if self.data.streaming and self.method.name != "pretrain":
            raise ValueError(
                f"`data.streaming: true` streams raw documents for `method.name: pretrain`; `{self.method.name}` "
                "reads its data into memory. Remove `data.streaming`"
            )
        if self.data.streaming and self.training.max_steps is None:
            raise ValueError(
                "`data.streaming: true` needs `training.max_steps`: the number of blocks in a stream is not known "
                "before reading it, so epochs cannot be counted. Set training.max_steps"
            )
        check_privacy(self)
        heads = {source.head for source in [*self.data.train, *self.data.eval] if source.head is not None}
        if self.method.name == "multi_head":
            check_heads(self)
        elif heads:
            raise ValueError("`data.*.head` applies to `method.name: multi_head` only; remove it")
        if self.method.name == "grpo":
            completions = self.training.per_device_batch_size * self.training.gradient_accumulation_steps
            if completions % self.method.num_generations:
                raise ValueError(
                    f"`training.per_device_batch_size` x `training.gradient_accumulation_steps` = {completions} "
                    f"completions per step is not a multiple of `method.num_generations: "
                    f"{self.method.num_generations}`; GRPO scores completions in whole groups. Change one of them"
                )
        return self

    @model_validator(mode="after")
    def _backend_can_run(self) -> Config:
        from llm_finetuning.config.backends import unsloth_refusal

        refusal = unsloth_refusal(self) if self.model.backend == "unsloth" else None
        if refusal:
            raise ValueError(f"`model.backend: unsloth` {refusal}")
        return self

    @field_validator("adapter", "method", mode="before")
    @classmethod
    def _default_tag(cls, value: Any, info: Any) -> Any:
        return with_default_tag(info.field_name, value)


SECTION_TAGS = {"adapter": ("method", "lora"), "method": ("name", "sft")}


def with_default_tag(section: str, value: Any) -> Any:
    """`adapter: full` is shorthand for `adapter: {method: full}`; a mapping without its tag gets the default."""
    tag, default = SECTION_TAGS[section]
    if isinstance(value, str):
        return {tag: value}
    if isinstance(value, dict) and tag not in value:
        return {tag: default, **value}
    return value
