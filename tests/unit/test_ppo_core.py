"""PPO arithmetic against numbers worked out by hand (gamma, lambda, clipping, KL, whitening)."""

from __future__ import annotations

import math

import pytest
import torch

from llm_finetuning.methods.ppo import core
from llm_finetuning.methods.ppo.rollout import truncate_after_eos

pytestmark = pytest.mark.unit


def close(actual: torch.Tensor, expected: list | float) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- GAE
def test_gae_one_row_of_three() -> None:
    # gamma 0.9, lambda 0.8, so gamma * lambda = 0.72; the value after the last token is 0.
    # t=2: delta = 1 + 0 - 0.3 = 0.7                    A2 = 0.7
    # t=1: delta = 0 + 0.9 * 0.3 - 0.4 = -0.13          A1 = -0.13 + 0.72 * 0.7 = 0.374
    # t=0: delta = 0 + 0.9 * 0.4 - 0.5 = -0.14          A0 = -0.14 + 0.72 * 0.374 = 0.12928
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3]])
    advantages, returns = core.compute_gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.8)
    close(advantages, [[0.12928, 0.374, 0.7]])
    close(returns, [[0.62928, 0.774, 1.0]])


def test_gae_two_rows_with_masks() -> None:
    # Masked-out positions carry garbage (9, 7, 5, 3) that must not leak into anything.
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [0.0, 2.0, 5.0, 5.0]])
    values = torch.tensor([[0.5, 0.4, 0.3, 7.0], [1.0, 0.5, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    advantages, returns = core.compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # Row 0: t=2: delta = 1.0 - 0.3 = 0.7                         A2 = 0.7
    #        t=1: delta = -0.2 + 0.9 * 0.3 - 0.4 = -0.33          A1 = -0.33 + 0.72 * 0.7 = 0.174
    #        t=0: delta = 0.1 + 0.9 * 0.4 - 0.5 = -0.04           A0 = -0.04 + 0.72 * 0.174 = 0.08528
    # Row 1: t=1: delta = 2.0 - 0.5 = 1.5                         A1 = 1.5
    #        t=0: delta = 0.0 + 0.9 * 0.5 - 1.0 = -0.55           A0 = -0.55 + 0.72 * 1.5 = 0.53
    close(advantages, [[0.08528, 0.174, 0.7, 0.0], [0.53, 1.5, 0.0, 0.0]])
    close(returns, [[0.58528, 0.574, 1.0, 0.0], [1.53, 2.0, 0.0, 0.0]])
    torch.testing.assert_close(returns, (advantages + values) * mask)


def test_gae_with_lambda_one_and_no_discount_is_return_to_go_minus_value() -> None:
    rewards = torch.tensor([[0.5, -1.0, 2.0]])
    values = torch.tensor([[0.2, 0.1, 0.3]])
    advantages, returns = core.compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    close(returns, [[1.5, 1.0, 2.0]])
    close(advantages, [[1.3, 0.9, 1.7]])


# ------------------------------------------------------------------------------------------ whitening
def test_masked_mean_ignores_masked_positions_and_empty_rows() -> None:
    values = torch.tensor([[1.0, 2.0, 100.0], [5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    close(core.masked_mean(values, mask), 1.5)
    close(core.masked_mean(values, mask, dim=1), [1.5, 0.0])


def test_whiten_hand_values() -> None:
    # Masked-in values 1, 2, 3: mean 2, population variance 2/3, so (v - 2) / sqrt(2/3) = -1.2247, 0, 1.2247.
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    scaled = 1 / math.sqrt(2 / 3)
    close(core.masked_whiten(values, mask), [[-scaled, 0.0, scaled, 0.0]])
    close(core.masked_whiten(values, mask, shift_mean=False), [[2 - scaled, 2.0, 2 + scaled, 0.0]])


def test_whiten_gives_mean_zero_variance_one_over_the_mask() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(4, 6, generator=generator) * 3 + 5
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] + [0] * 5])
    whitened = core.masked_whiten(values, mask)
    close(core.masked_mean(whitened, mask), 0.0)
    close(core.masked_var(whitened, mask), 1.0)
    kept = core.masked_whiten(values, mask, shift_mean=False)
    close(core.masked_mean(kept, mask), core.masked_mean(values, mask).item())
    close(core.masked_var(kept, mask), 1.0)
    assert torch.all(whitened[mask == 0] == 0)


# ---------------------------------------------------------------------------------------- policy loss
def policy_case() -> tuple[torch.Tensor, ...]:
    old = torch.log(torch.tensor([[0.5, 0.4, 0.4, 0.4, 0.3]]))
    ratios = torch.tensor([[1.0, 1.5, 0.5, 0.5, 3.0]])
    new = (old + torch.log(ratios)).requires_grad_(True)
    advantages = torch.tensor([[1.0, 2.0, 1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    return new, old, advantages, mask


def test_policy_loss_clipping_against_hand_values() -> None:
    new, old, advantages, mask = policy_case()
    loss, clipfrac, approx_kl = core.policy_loss(new, old, advantages, mask, clip_range=0.2)
    # Per token max(-A r, -A clip(r, 0.8, 1.2)):
    #   r=1.0, A=1:  -1.0 vs -1.0 -> -1.0                    (inside the range)
    #   r=1.5, A=2:  -3.0 vs -2.4 -> -2.4  clipped           (gain beyond 1.2 is not rewarded)
    #   r=0.5, A=1:  -0.5 vs -0.8 -> -0.5                    (outside, but the unclipped term is pessimistic)
    #   r=0.5, A=-1:  0.5 vs  0.8 ->  0.8  clipped
    #   masked token (r=3, A=5) ignored.      loss = (-1 - 2.4 - 0.5 + 0.8) / 4 = -0.775, clipfrac = 2/4
    close(loss, -0.775)
    close(clipfrac, 0.5)
    # approx KL = mean(r - 1 - log r) = (0 + (0.5 - ln 1.5) + 2 * (-0.5 + ln 2)) / 4
    close(approx_kl, (0.5 - math.log(1.5) + 2 * (math.log(2) - 0.5)) / 4)


def test_policy_loss_gradient_is_zero_where_clipped() -> None:
    new, old, advantages, mask = policy_case()
    loss, _, _ = core.policy_loss(new, old, advantages, mask, clip_range=0.2)
    loss.backward()
    # d/d(new logp) of -A r / 4 is -A r / 4: -0.25 for token 0, -0.125 for token 2; clipped and masked: 0.
    close(new.grad, [[-0.25, 0.0, -0.125, 0.0, 0.0]])


# ----------------------------------------------------------------------------------------- value loss
def test_value_loss_clipping_against_hand_values() -> None:
    old = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    new = torch.tensor([[1.1, 1.5, 0.5, 1.5, 9.0]], requires_grad=True)
    returns = torch.tensor([[2.0, 2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, clipfrac = core.value_loss(new, old, returns, mask, clip_range_value=0.2)
    # Per token max((v - R)^2, (v_clip - R)^2), v_clip = old + clip(v - old, -0.2, 0.2):
    #   v=1.1 R=2: 0.81 vs 0.81 -> 0.81          v=1.5 R=2: 0.25 vs (1.2-2)^2 = 0.64 -> 0.64 clipped
    #   v=0.5 R=0: 0.25 vs 0.8^2 = 0.64 -> 0.64 clipped          v=1.5 R=0: 2.25 vs 1.44 -> 2.25
    #   loss = 0.5 * (0.81 + 0.64 + 0.64 + 2.25) / 4 = 0.5425, clipfrac = 2/4
    close(loss, 0.5425)
    close(clipfrac, 0.5)
    loss.backward()
    # Gradient 0.5 * 2 (v - R) / 4 where the unclipped term counts; 0 where the clipped one does.
    close(new.grad, [[0.25 * (1.1 - 2.0), 0.0, 0.0, 0.25 * 1.5, 0.0]])


# -------------------------------------------------------------------------------------- KL and rewards
def test_kl_estimators() -> None:
    logprobs = torch.tensor([-1.0, -2.0, -0.5])
    ref_logprobs = torch.tensor([-1.5, -2.0, -0.2])
    close(core.kl_penalty(logprobs, ref_logprobs, "k1"), [0.5, 0.0, -0.3])
    # k3 = exp(-d) - 1 + d with d = log p - log q: never negative.
    close(
        core.kl_penalty(logprobs, ref_logprobs, "k3"),
        [math.exp(-0.5) - 0.5, 0.0, math.exp(0.3) - 1.3],
    )
    with pytest.raises(ValueError, match="k1"):
        core.kl_penalty(logprobs, ref_logprobs, "k2")  # type: ignore[arg-type]


def test_per_token_rewards_put_the_score_on_the_last_real_token() -> None:
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -1.0, -9.0], [-1.0, -5.0, -5.0, -5.0], [-2.0, -2.0, -2.0, -2.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    score = torch.tensor([2.0, -1.0, 7.0])
    rewards = core.per_token_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.1)
    # Row 0: KL 0.5, 0, 0.5 -> -0.05, 0, -0.05; the score 2 joins the last real token (index 2); index 3 masked.
    # Row 1: one token with KL 0: only the score. Row 2: no tokens, no reward at all.
    close(rewards, [[-0.05, 0.0, 1.95, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    k3 = core.per_token_rewards(score, logprobs, ref_logprobs, mask, kl_coef=0.1, estimator="k3")
    close(k3[0], [-0.1 * (math.exp(-0.5) - 0.5), 0.0, 2.0 - 0.1 * (math.exp(-0.5) - 0.5), 0.0])


def test_last_token_index() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert core.last_token_index(mask).tolist() == [2, 3, 0]


def test_adaptive_kl_controller_follows_the_formula() -> None:
    controller = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(current_kl=9.0, n_steps=16)  # error 9/6 - 1 = 0.5, clipped to 0.2
    expected = 0.1 * (1 + 0.2 * 16 / 10000)
    assert controller.value == pytest.approx(expected)
    controller.update(current_kl=5.0, n_steps=64)  # error 5/6 - 1 = -1/6, inside the clip
    expected *= 1 + (5 / 6 - 1) * 64 / 10000
    assert controller.value == pytest.approx(expected)
    controller.update(current_kl=0.0, n_steps=100)  # error -1, clipped to -0.2
    expected *= 1 - 0.2 * 100 / 10000
    assert controller.value == pytest.approx(expected)


def test_fixed_kl_controller_stays() -> None:
    controller = core.FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=64)
    assert controller.value == 0.05


# ------------------------------------------------------------------------------------ logits helpers
def test_entropy_and_logprobs_from_logits() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e9, -1e9]]])
    entropy = core.entropy_from_logits(logits)
    # Uniform over 4: ln 4. Probabilities (3/4, 1/4): -(3/4 ln 3/4 + 1/4 ln 1/4).
    close(entropy[0, 0], math.log(4))
    assert entropy[0, 1] < 0.01
    close(entropy[0, 2], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    tokens = torch.tensor([[2, 0, 1]])
    close(
        core.logprobs_of(logits, tokens),
        [[math.log(0.25), torch.log_softmax(logits[0, 1], -1)[0].item(), math.log(0.25)]],
    )


def test_truncate_after_eos_masks_everything_after_the_first_eos() -> None:
    ids = torch.tensor([[5, 9, 6, 9], [5, 6, 7, 8], [9, 1, 2, 3], [5, 4, 6, 2]])
    cut, mask, ended = truncate_after_eos(ids, eos_ids=[9, 2], pad_id=0)
    assert cut.tolist() == [[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0], [5, 4, 6, 2]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert ended.tolist() == [True, False, True, True]
