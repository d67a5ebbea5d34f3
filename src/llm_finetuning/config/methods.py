"""The `method:` section: one class per training method, each owning (and validating) its own options."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from llm_finetuning.config.base import Section
from llm_finetuning.config.encoders import ClassifyMethod, EmbeddingMethod, RerankerMethod
from llm_finetuning.config.grpo import GRPOMethod
from llm_finetuning.config.multihead import MultiHeadMethod
from llm_finetuning.config.ppo import PPOOptions


class SFTMethod(Section):
    """Supervised fine-tuning on prompt/response pairs or conversations."""

    name: Literal["sft"] = "sft"
    """Training method."""
    train_on_prompt: bool = False
    """Also compute the loss on prompt and user tokens. Off by default: only assistant/completion tokens and the
    end-of-sequence token that closes each of them carry loss."""


class PretrainMethod(Section):
    """Continual pretraining on raw text: documents are tokenized, joined and cut into blocks of
    `data.max_length` tokens, with loss on every token."""

    name: Literal["pretrain"] = "pretrain"
    """Training method."""
    add_eos: bool = True
    """Put the EOS token after every document, so the model sees where documents end."""


class RewardMethod(Section):
    """Reward model: a causal LM with a scalar head, trained so chosen responses score above rejected ones
    (pairwise Bradley-Terry loss). Data: `preference` records."""

    name: Literal["reward"] = "reward"
    """Training method."""
    center_rewards_coefficient: float | None = Field(None, ge=0)
    """Weight of a penalty on the mean reward, keeping scores centred on zero (unset: no penalty)."""


class DPOMethod(Section):
    """Direct preference optimisation on `preference` records. With an adapter the reference model is the base
    with the adapter disabled (no second copy in memory); with full weights, a frozen copy."""

    name: Literal["dpo"] = "dpo"
    """Training method."""
    beta: float = Field(0.1, gt=0)
    """Strength of the pull towards the reference model (the KL weight; for `ipo`, the regularisation)."""
    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """`sigmoid` (DPO), `ipo` (identity preference optimisation), or `hinge` (SLiC)."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probabilities once before training, instead of a reference forward pass
    at every step."""


class ORPOMethod(Section):
    """Odds-ratio preference optimisation: SFT on the chosen response plus an odds-ratio penalty on the
    rejected one, without a reference model. Data: `preference` records."""

    name: Literal["orpo"] = "orpo"
    """Training method."""
    beta: float = Field(0.1, gt=0)
    """Weight of the odds-ratio term (lambda in the ORPO paper)."""


class KTOMethod(Section):
    """Kahneman-Tversky optimisation on `unpaired` records (one completion judged desirable or undesirable)."""

    name: Literal["kto"] = "kto"
    """Training method."""
    beta: float = Field(0.1, gt=0)
    """Strength of the pull towards the reference model."""
    desirable_weight: float = Field(1.0, gt=0)
    """Loss weight of desirable examples (raise it when they are the minority)."""
    undesirable_weight: float = Field(1.0, gt=0)
    """Loss weight of undesirable examples."""
    precompute_ref_log_probs: bool = False
    """Compute the reference log-probabilities once before training."""


# Options PPO shares with every trainer: they come from `training.*`, described there once.
PPO_FROM_TRAINING = {
    "learning_rate": "learning_rate",
    "weight_decay": "weight_decay",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "total_steps": "max_steps",
    "batch_size": "per_device_batch_size",
}


class PPOMethod(PPOOptions):
    """PPO (RLHF) with our own trainer: sample completions to `prompt_only` records, score them with a reward
    model or a reward function, and optimise the policy with clipped PPO, a value head, GAE and a per-token KL
    penalty to the reference (the adapter-disabled base with LoRA, a frozen copy with full weights). The number
    of PPO steps is `training.max_steps`, prompts per step `training.per_device_batch_size`."""

    name: Literal["ppo"] = "ppo"
    """Training method."""
    reward_model: str | None = None
    """The reward model: a `method: reward` run directory, or a sequence-classification model (hub id or
    directory)."""
    reward_function: str | None = None
    """A Python reward function as `module:function`, called as `f(prompts, completions, **extra_columns)` and
    returning one float per completion."""

    @model_validator(mode="after")
    def _one_reward(self) -> PPOMethod:
        if (self.reward_model is None) == (self.reward_function is None):
            raise ValueError("PPO needs exactly one of `method.reward_model` or `method.reward_function`")
        duplicated = sorted(set(PPO_FROM_TRAINING) & self.model_fields_set)
        if duplicated:
            keys = ", ".join(f"`training.{PPO_FROM_TRAINING[k]}`" for k in duplicated)
            raise ValueError(f"set {keys} instead of `method.{'`, `method.'.join(duplicated)}`")
        return self


# The tagged union of methods: each method owns its options. Later methods join this union.
METHODS: tuple[type[Section], ...] = (
    SFTMethod,
    PretrainMethod,
    RewardMethod,
    DPOMethod,
    ORPOMethod,
    KTOMethod,
    PPOMethod,
    GRPOMethod,
    EmbeddingMethod,
    RerankerMethod,
    ClassifyMethod,
    MultiHeadMethod,
)
MethodConfig = Annotated[
    SFTMethod
    | PretrainMethod
    | RewardMethod
    | DPOMethod
    | ORPOMethod
    | KTOMethod
    | PPOMethod
    | GRPOMethod
    | EmbeddingMethod
    | RerankerMethod
    | ClassifyMethod
    | MultiHeadMethod,
    Field(discriminator="name"),
]
