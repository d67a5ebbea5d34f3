"""The `method: grpo` section: group-relative policy optimisation over TRL's GRPOTrainer, with rewards by name."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llm_finetuning.config.base import Section
from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.config.sampling import SamplingWeights


class RewardEntry(Section):
    """One reward of a GRPO run: a reward of the library by name, or your own function."""

    name: str
    """A reward of the library (`llmft rewards list`), or the label of your own `function`."""
    weight: float | None = None
    """Its weight in the total reward (unset: the library's default weight, 1.0 for your own functions)."""
    function: str | None = None
    """Your own reward as `module:function`, called like TRL's reward functions: `f(prompts, completions,
    completion_ids, **dataset_columns)` returning one float per completion. Unset for library rewards."""


class GRPOMethod(SamplingWeights):
    """Group-relative policy optimisation (DeepSeekMath): for every `prompt_only` record, sample a group of
    completions, score them with the rewards, and push the policy towards the completions that beat their group's
    mean. Every reward is checked on a sample before training starts. `training.per_device_batch_size` counts
    completions, so it times `training.gradient_accumulation_steps` must be a multiple of `num_generations`."""

    name: Literal["grpo"] = "grpo"
    """Training method."""
    rewards: list[RewardEntry] = Field(min_length=1)
    """The rewards, summed with their weights: e.g. `[{name: answer_correctness}, {name: reasoning_tags}]`."""
    num_generations: int = Field(8, ge=2)
    """Completions sampled per prompt (the group whose mean reward is the baseline)."""
    max_prompt_length: int | None = Field(None, ge=1)
    """Prompts longer than this many tokens are dropped and counted before training (unset: `data.max_length`)."""
    max_completion_length: int = Field(256, ge=1)
    """Longest completion sampled, in tokens."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature of the completions (diversity within a group is what GRPO learns from)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling threshold of the completions."""
    beta: float = Field(0.04, ge=0)
    """KL penalty towards the reference model (the base with the adapter disabled, or a frozen copy with full
    weights). 0 drops the reference model and its memory."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = "dapo"
    """How token losses are aggregated: `grpo` (per-sequence mean, length-biased), `dr_grpo` (constant
    normaliser), `dapo` (token-level over the batch), `bnpo` (token-level over the local batch)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: divide by the reward standard deviation of the `group` or of the whole `batch`, or
    `none` (Dr. GRPO recommends none)."""
    num_iterations: int = Field(1, ge=1)
    """Optimisation passes over each generated batch (mu in the GRPO paper); above 1 the ratio is clipped."""
    epsilon: float = Field(0.2, gt=0)
    """Clipping range of the probability ratio."""
    mask_truncated_completions: bool = False
    """Leave completions cut at `max_completion_length` out of the loss (DAPO's recommendation)."""
    generation_backend: Literal["transformers", "vllm"] = "transformers"
    """What samples the completions: `transformers` (the policy's own `generate`, one batched call for all the
    completions of an optimizer step) or `vllm` (a vLLM engine in the training process sharing the GPU, with the
    policy's weights synced to it every step: several times faster generation on long completions). `vllm` needs a
    CUDA GPU and `pip install 'llm-finetuning[vllm]'`."""
    generation_cache: Literal["dynamic", "static"] = "dynamic"
    """The KV cache of the policy's own `generate` (`generation_backend: transformers`). `dynamic` grows with each
    token (transformers' default). `static` is sized once for `max_prompt_length` (or `data.max_length`) plus
    `max_completion_length` and reused by every step, which lets transformers compile the decoding step with
    `torch.compile` on a GPU (CUDA graphs: far fewer kernel launches per token; the first step pays the
    compilation). On CPU it changes nothing but the cache's layout."""
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, lt=1)
    """With `generation_backend: vllm`, the share of GPU memory vLLM reserves for its weights and KV cache; the rest
    is left to training."""
    log_completions: bool = False
    """Log a sample of prompts, completions and rewards every `training.logging_steps`."""
    judge: JudgeConfig | None = None
    """The LLM judge of the `judge_*` rewards: any OpenAI-compatible endpoint. Checked with the sample batch
    before training: a judge that answers none of it stops the run there."""

    @model_validator(mode="after")
    def _transformers_options(self) -> GRPOMethod:
        if self.generation_cache == "static" and self.generation_backend == "vllm":
            raise ValueError(
                "`method.generation_cache: static` is the transformers backend's cache; vLLM manages its own. "
                "Remove it or set `generation_backend: transformers`"
            )
        if self.generation_weights == "merged" and self.generation_backend == "vllm":
            raise ValueError(
                "`method.generation_weights: merged` is the transformers backend's sampling; vLLM loads merged "
                "weights itself. Remove it or set `generation_backend: transformers`"
            )
        return self

    @model_validator(mode="after")
    def _distinct_rewards(self) -> GRPOMethod:
        names = [entry.name for entry in self.rewards]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"reward `{repeated[0]}` is listed twice in `method.rewards`; list each reward once")
        return self
