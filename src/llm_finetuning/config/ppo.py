"""Options of the PPO trainer: rollout, optimisation, the KL penalty and the advantage estimate."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llm_finetuning.config.sampling import SamplingWeights


class PPOOptions(SamplingWeights):
    """Proximal policy optimisation against a reward function or reward model, with a KL penalty that keeps the
    policy near a reference (Ziegler et al. 2019, Ouyang et al. 2022)."""

    # ---------------------------------------------------------------------------------------------- rollout
    batch_size: int = Field(16, gt=0)
    """Prompts drawn from the dataset for each PPO step (by `train`; `step` takes whatever it is given)."""
    num_generations: int = Field(1, gt=0)
    """Completions sampled per prompt; a step's rollout holds `batch_size x num_generations` completions."""
    max_prompt_length: int | None = Field(None, gt=0)
    """Longest prompt in tokens; longer prompts keep their end (the part nearest the completion). Unset: no
    limit."""
    max_new_tokens: int = Field(64, gt=0)
    """Longest completion in tokens; sampling stops earlier at the end-of-sequence token."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature. The log-probabilities of the policy and of the reference are computed at the same
    temperature, so the ratio and the KL refer to the distribution that was actually sampled."""
    top_k: int | None = Field(None, gt=0)
    """Sample only among the k most likely tokens; unset samples from the whole vocabulary. Truncated sampling
    makes the rollout slightly off-policy (the loss uses the untruncated probabilities), so leave it unset
    unless completions degenerate."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling: sample among the most likely tokens whose probabilities sum to `top_p`; 1.0 disables
    it. Same caveat as `top_k`."""

    # ----------------------------------------------------------------------------------------- optimisation
    ppo_epochs: int = Field(4, gt=0)
    """Passes of clipped-objective optimisation over each rollout."""
    mini_batch_size: int = Field(8, gt=0)
    """Completions per optimizer step inside a PPO epoch; must divide `batch_size x num_generations`. Also the
    chunk size of the no-gradient scoring passes."""
    learning_rate: float = Field(1.0e-5, gt=0)
    """Learning rate of the AdamW optimizer the trainer builds over the trainable policy parameters and the value
    head. Ignored when the caller passes its own optimizer."""
    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay of the optimizer the trainer builds; ignored with a caller's optimizer."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm (policy and value head together) to this value; unset disables clipping."""
    clip_range: float = Field(0.2, gt=0)
    """Policy ratio clipping epsilon: the objective ignores moves of the probability ratio beyond 1 +/- this."""
    clip_range_value: float = Field(0.2, gt=0)
    """Value clipping: a new value prediction may move at most this far from the rollout's before its loss stops
    rewarding the move."""
    value_loss_coef: float = Field(0.1, ge=0)
    """Weight of the value loss in the total loss (policy and value head share the transformer)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Weight of the entropy bonus (subtracted from the loss); 0 disables it. The KL penalty already keeps the
    policy from collapsing, so this is rarely needed."""

    # ------------------------------------------------------------------------------------ reward and KL
    kl_coef: float = Field(0.05, ge=0)
    """Weight of the per-token KL penalty against the reference (the initial weight when `adaptive_kl`)."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimate in the reward: `k1` is log p - log p_ref (unbiased, can be negative per token),
    `k3` is exp(-d) - 1 + d with d = log p - log p_ref (unbiased in expectation, never negative, lower variance)."""
    adaptive_kl: bool = False
    """Adapt `kl_coef` after every step so the KL per completion tracks `target_kl` (Ziegler et al. 2019)."""
    target_kl: float = Field(6.0, gt=0)
    """KL per completion (summed over its tokens, in nats) that the adaptive controller aims at."""
    horizon: float = Field(10000, gt=0)
    """Adaptive controller horizon in completions: the larger, the slower `kl_coef` moves."""
    missing_eos_penalty: float | None = Field(None, ge=0)
    """Subtract this from the score of a completion that hit `max_new_tokens` without an end-of-sequence token,
    which discourages rambling; unset disables it."""

    # ------------------------------------------------------------------------------------- advantages
    gamma: float = Field(1.0, ge=0, le=1)
    """Discount factor per token. 1.0 (no discount) suits a sequence-level score."""
    lam: float = Field(0.95, ge=0, le=1)
    """GAE lambda: 1.0 gives Monte-Carlo returns (no bias, high variance), 0.0 one-step TD (low variance,
    biased by the value head)."""
    whiten_advantages: bool = True
    """Normalise the advantages of each rollout to mean 0 and variance 1 over the completion tokens."""
    whiten_rewards: bool = False
    """Scale the per-token rewards of each rollout to variance 1 (mean kept) before GAE; helps when scores vary
    widely in scale between tasks."""

    # --------------------------------------------------------------------------------------------- run
    total_steps: int = Field(100, gt=0)
    """PPO steps that `train` runs when not told otherwise (each step = one rollout + `ppo_epochs` of updates)."""
    seed: int = 0
    """Seed of sampling, prompt order and mini-batch order; two CPU runs with the same seed are identical."""

    @model_validator(mode="after")
    def _check_mini_batches(self) -> PPOOptions:
        rollout = self.batch_size * self.num_generations
        if rollout % self.mini_batch_size:
            raise ValueError(
                f"`mini_batch_size` ({self.mini_batch_size}) must divide `batch_size` x `num_generations` ({rollout})"
            )
        return self
