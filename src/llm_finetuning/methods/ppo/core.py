"""The arithmetic of PPO for language models, as pure functions of (batch, time) tensors and masks.

A mask is 1 on the completion tokens that count (up to and including the end-of-sequence token) and 0 on
padding; every reduction here ignores masked-out positions. Nothing in this module knows about models.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k3"]


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of `values` over the positions where `mask` is 1 (0 where nothing is masked in)."""
    mask = mask.to(values.dtype)
    total = (values * mask).sum() if dim is None else (values * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    # An empty selection has mean 0 rather than NaN, so one empty row cannot poison a whole batch's loss.
    return total / count.clamp(min=1)


def masked_var(values: Tensor, mask: Tensor) -> Tensor:
    """Population variance (divided by the count, not count - 1) over the masked-in positions."""
    mean = masked_mean(values, mask)
    return masked_mean((values - mean) ** 2, mask)


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Scale `values` to variance 1 over the masked-in positions and, with `shift_mean`, to mean 0.

    Without `shift_mean` the mean is kept (only the spread changes), which is how rewards are whitened: moving
    their mean would add a constant bonus or penalty to every token. Masked-out positions come back as 0.
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def compute_gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates (Schulman et al. 2016) and returns (advantages + values).

    Walks each row backwards over its masked-in positions only: a masked-out position neither contributes a
    reward nor bootstraps a value, so the value after the last real token is 0 (the episode ends there).
    """
    batch, steps = rewards.shape
    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(batch)
    next_value = rewards.new_zeros(batch)
    keep = mask.bool()
    for t in reversed(range(steps)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        candidate = delta + gamma * lam * running
        running = torch.where(keep[:, t], candidate, running)
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(keep[:, t], candidate, torch.zeros_like(candidate))
    returns = (advantages + values) * mask.to(values.dtype)
    return advantages, returns


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of KL(policy || reference) from the log-probs of the sampled tokens.

    `k1` = log p - log q: unbiased, but negative on single tokens. `k3` = (r - 1) - log r with r = q / p: also
    unbiased and never negative, with lower variance (Schulman, "Approximating KL divergence", 2020).
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last masked-in position of each row (0 for an empty row)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).max(dim=1).values


def per_token_rewards(
    score: Tensor,
    logprobs: Tensor,
    ref_logprobs: Tensor,
    mask: Tensor,
    kl_coef: float,
    estimator: KLEstimator = "k1",
) -> Tensor:
    """Rewards per completion token: -kl_coef x KL on every token, plus the sequence score on the last one.

    The score judges the whole completion, so it arrives when the completion ends; the KL penalty is paid where
    each token departs from the reference. A row with no masked-in token gets nothing.
    """
    float_mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * kl_penalty(logprobs, ref_logprobs, estimator) * float_mask
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has_tokens = float_mask.sum(dim=1) > 0
    bonus = torch.where(has_tokens, score.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    rewards[rows, last_token_index(mask)] += bonus
    return rewards


def policy_loss(
    new_logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate loss (Schulman et al. 2017), the fraction of tokens where clipping bit, and the
    approximate KL between the old and new policy (k3, mean per token).

    The loss takes the pessimistic of the unclipped and clipped objectives, so where the clipped one wins its
    gradient is zero: the update gets no reward for moving a token's probability further out of the trust region.
    """
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)
    return loss, clipfrac, approx_kl


def value_loss(
    new_values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss, 0.5 x max((v - R)^2, (v_clipped - R)^2), and the fraction of tokens where the clipped
    term was the larger. v_clipped stays within `clip_range_value` of the rollout's value prediction."""
    clipped_values = old_values + torch.clamp(new_values - old_values, -clip_range_value, clip_range_value)
    unclipped_loss = (new_values - returns) ** 2
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_loss > unclipped_loss).to(new_values.dtype), mask)
    return loss, clipfrac


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position: logsumexp(z) - sum softmax(z) z."""
    probabilities = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probabilities * logits).sum(dim=-1)


def logprobs_of(logits: Tensor, tokens: Tensor) -> Tensor:
    """Log-probability of each token in `tokens` (batch, time) under `logits` (batch, time, vocab)."""
    picked = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
    # log_softmax(z)[t] = z[t] - logsumexp(z): no (batch, time, vocab) log-softmax tensor is materialised.
    return picked - torch.logsumexp(logits, dim=-1)


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to adapt."""


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. (2019): a proportional controller on log(kl_coef).

    After a batch of `n_steps` completions with mean KL `current_kl`, the coefficient is multiplied by
    1 + clip(current_kl / target - 1, -0.2, 0.2) x n_steps / horizon, so it rises while the KL is above the
    target and falls while it is below, by at most 20% per horizon's worth of completions.
    """

    def __init__(self, kl_coef: float, target: float, horizon: float) -> None:
        self.value = kl_coef
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
