"""The resumable pieces of a PPO checkpoint: prompt order, optimizer state and generator states, each through its
file form (JSON text and safetensors) and back."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from llm_finetuning.methods.ppo.prompt_order import PromptOrder
from llm_finetuning.methods.ppo.state import optimizer_state, optimizer_state_from_parts, restore_rng, rng_state

pytestmark = pytest.mark.unit


def through_files(meta: dict, tensors: dict[str, torch.Tensor]) -> tuple[dict, dict[str, torch.Tensor]]:
    """What a checkpoint stores and reads back: JSON text and a safetensors blob."""
    return json.loads(json.dumps(meta)), load(save(tensors))


def test_prompt_order_is_a_fresh_seeded_permutation_per_pass() -> None:
    order = PromptOrder(seed=7)
    drawn = [order.take(3, 5) for _ in range(5)]  # 15 indices: exactly 3 passes over 5 prompts
    flat = [i for batch in drawn for i in batch]
    passes = [flat[i : i + 5] for i in range(0, 15, 5)]
    assert all(sorted(p) == list(range(5)) for p in passes)
    generator = torch.Generator().manual_seed(7)
    assert passes == [torch.randperm(5, generator=generator).tolist() for _ in range(3)]
    assert (order.epoch, order.position) == (3, 5)


@pytest.mark.parametrize("cut", [0, 1, 2, 3, 4])  # before any draw, mid pass, at a pass end, later passes
def test_prompt_order_restored_at_any_point_continues_identically(cut: int) -> None:
    uninterrupted = PromptOrder(seed=3)
    expected = [uninterrupted.take(3, 5) for _ in range(8)]

    first = PromptOrder(seed=3)
    for _ in range(cut):
        first.take(3, 5)
    position, tensors = through_files(*first.state_dict())
    restored = PromptOrder(seed=99)  # the seed of the restored object does not matter
    restored.load_state_dict(position, tensors)
    assert [restored.take(3, 5) for _ in range(8 - cut)] == expected[cut:]


def test_prompt_order_starts_a_new_pass_when_the_dataset_changes_size() -> None:
    order = PromptOrder(seed=0)
    order.take(2, 5)
    batch = order.take(4, 3)
    assert sorted(batch[:3]) == [0, 1, 2] and (order.size, order.epoch) == (3, 3)


def test_optimizer_state_round_trip_continues_the_same_updates() -> None:
    def build() -> tuple[list[torch.nn.Parameter], torch.optim.AdamW]:
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
        groups = [{"params": params[:1]}, {"params": params[1:], "lr": 0.5, "betas": (0.8, 0.95)}]
        return params, torch.optim.AdamW(groups, lr=0.1, weight_decay=0.1)

    def update(params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()
        sum((p**2).sum() * (i + 1) for i, p in enumerate(params)).backward()
        optimizer.step()

    params, optimizer = build()
    for _ in range(2):
        update(params, optimizer)
    meta, tensors = through_files(*optimizer_state(optimizer.state_dict()))
    assert set(tensors) == {f"state.{i}.{key}" for i in (0, 1) for key in ("step", "exp_avg", "exp_avg_sq")}

    copies, restored = build()
    for copy, param in zip(copies, params, strict=True):
        copy.data.copy_(param.data)
    restored.load_state_dict(optimizer_state_from_parts(meta, tensors, restored.state_dict()))
    assert restored.param_groups[1]["betas"] == (0.8, 0.95) and restored.param_groups[1]["lr"] == 0.5
    update(params, optimizer)
    update(copies, restored)
    for copy, param in zip(copies, params, strict=True):
        assert torch.equal(copy, param)
    assert torch.equal(restored.state[copies[0]]["exp_avg_sq"], optimizer.state[params[0]]["exp_avg_sq"])


def test_rng_state_round_trip_repeats_every_generator() -> None:
    def draw() -> tuple[float, float, float, float]:
        return random.random(), random.gauss(0, 1), float(np.random.rand()), torch.rand(1).item()

    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    meta, tensors = through_files(*rng_state())
    expected = [draw() for _ in range(3)]
    restore_rng(meta, tensors)
    assert [draw() for _ in range(3)] == expected
