"""Tensor-level merge methods against hand-computed results."""

from __future__ import annotations

import math

import pytest
import torch

from llm_finetuning.export import merging

pytestmark = pytest.mark.unit


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_linear_weighted_and_normalized() -> None:
    a, b = t(1, 2), t(3, 6)
    # (1*a + 3*b) / 4 = ([1, 2] + [9, 18]) / 4
    assert torch.allclose(merging.linear([a, b], [1, 3]), t(2.5, 5.0))
    assert torch.allclose(merging.linear([a, b], [1, 3], normalize=False), t(10, 20))
    assert torch.allclose(merging.linear([a, b], [2, 2]), t(2, 4))


def test_linear_keeps_dtype_and_rejects_zero_sum() -> None:
    a = torch.ones(3, dtype=torch.bfloat16)
    assert merging.linear([a, a], [1, 1]).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="sum to zero"):
        merging.linear([a, a], [1, -1])


def test_slerp_of_orthogonal_unit_vectors() -> None:
    a, b = t(1, 0), t(0, 1)
    assert torch.allclose(merging.slerp(a, b, 0.5), (a + b) / math.sqrt(2))
    assert torch.allclose(merging.slerp(a, b, 0.0), a)
    assert torch.allclose(merging.slerp(a, b, 1.0), b)


def test_slerp_interpolates_magnitude_linearly() -> None:
    # Orthogonal with norms 1 and 3: at t=0.5 the direction is (1,1)/sqrt(2) and the norm is 2.
    merged = merging.slerp(t(1, 0), t(0, 3), 0.5)
    assert torch.allclose(merged, t(1, 1) * 2 / math.sqrt(2))


def test_slerp_nearly_parallel_falls_back_to_linear() -> None:
    a, b = t(1, 0), t(2, 1e-5)
    assert torch.allclose(merging.slerp(a, b, 0.25), 0.75 * a + 0.25 * b)


def test_slerp_works_on_matrices() -> None:
    a, b = torch.eye(2), torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    merged = merging.slerp(a, b, 0.5)
    assert merged.shape == (2, 2)
    assert torch.allclose(merged, (a + b) / math.sqrt(2))


def test_task_arithmetic() -> None:
    base = t(1, 1)
    models = [t(2, 1), t(1, 3)]  # task vectors [1, 0] and [0, 2]
    # 1 + 0.5 * (2*[1, 0] + 1*[0, 2]) = [2, 2]
    assert torch.allclose(merging.task_arithmetic(base, models, [2, 1], scale=0.5), t(2, 2))


def test_trim_keeps_exactly_the_top_k_magnitudes() -> None:
    delta = t(0.1, -5, 3, -0.2, 4, 1)
    assert torch.equal(merging.trim(delta, 0.5), t(0, -5, 3, 0, 4, 0))
    # Equal magnitudes at the threshold still keep exactly round(0.5 * 4) = 2 entries.
    assert int((merging.trim(t(1, -1, 1, 0.5), 0.5) != 0).sum()) == 2
    assert torch.equal(merging.trim(delta, 1.0), delta)


def test_ties_trim_elect_and_disjoint_mean() -> None:
    # base 0, density 0.5 keeps the two largest magnitudes of each task vector:
    #   tau1 = [ 3, -1,  2, 0.5] -> [ 3,  0,  2, 0]
    #   tau2 = [-2, -4,  1, 0.1] -> [-2, -4,  0, 0]
    #   tau3 = [ 1, .5, -5, 0.2] -> [ 1,  0, -5, 0]
    # summed trimmed = [2, -4, -3, 0] -> elected signs [+, -, -, 0]
    # disjoint mean:   [(3 + 1) / 2, -4 / 1, -5 / 1, 0] = [2, -4, -5, 0]
    base = torch.zeros(4)
    models = [t(3, -1, 2, 0.5), t(-2, -4, 1, 0.1), t(1, 0.5, -5, 0.2)]
    assert torch.allclose(merging.ties(base, models, [1, 1, 1], density=0.5), t(2, -4, -5, 0))
    # With base 1 and scale 0.5: 1 + 0.5 * [2, -4, -5, 0]
    shifted = [m + 1 for m in models]
    merged = merging.ties(torch.ones(4), shifted, [1, 1, 1], density=0.5, scale=0.5)
    assert torch.allclose(merged, t(2, -1, -1.5, 1))


def test_ties_weights_decide_the_sign() -> None:
    # 1*2 + 3*(-1) = -1 < 0: the negative side wins; its weighted mean is (3 * -1) / 3 = -1.
    merged = merging.ties(torch.zeros(1), [t(2), t(-1)], [1, 3], density=1.0)
    assert torch.allclose(merged, t(-1))


def test_dare_density_one_equals_the_plain_combination() -> None:
    base = t(0.5, -1, 2)
    models = [t(1, 0, 2), t(-1, -3, 5)]
    generator = torch.Generator().manual_seed(0)
    linear = merging.dare(base, models, [0.3, 0.7], 1.0, "linear", generator, scale=2.0)
    assert torch.allclose(linear, merging.task_arithmetic(base, models, [0.3, 0.7], scale=2.0))
    tied = merging.dare(base, models, [0.3, 0.7], 1.0, "ties", generator)
    assert torch.allclose(tied, merging.ties(base, models, [0.3, 0.7], density=1.0))


def test_dare_rescaling_keeps_the_expectation() -> None:
    base = torch.zeros(20)
    models = [torch.linspace(-2, 2, 20)]
    generator = torch.Generator().manual_seed(1)
    draws = torch.stack([merging.dare(base, models, [1.0], 0.5, "linear", generator) for _ in range(4000)])
    # Each entry is 0 or 2*x with equal probability: the mean is x (std of the mean |x| / sqrt(4000) < 0.035).
    assert torch.allclose(draws.mean(dim=0), models[0], atol=0.15)
    # Survivors are rescaled by 1 / density.
    assert set(draws[:, -1].unique().tolist()) == {0.0, 4.0}


def test_dare_is_deterministic_with_a_seed() -> None:
    base = torch.zeros(50)
    models = [torch.randn(50, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def run(seed: int) -> torch.Tensor:
        return merging.dare(base, models, [1, 1], 0.3, "ties", torch.Generator().manual_seed(seed))

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_shape_mismatch_and_bad_density_are_errors() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        merging.linear([t(1, 2), t(1)], [1, 1])
    with pytest.raises(ValueError, match="density"):
        merging.ties(t(0), [t(1)], [1], density=0.0)
