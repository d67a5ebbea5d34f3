"""Tensor-level merge methods against hand-computed results, and the random ones by their statistics.

Their agreement with mergekit on whole models is tests/e2e/test_merge_mergekit.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from llm_finetuning.export import merging, task_vectors
from llm_finetuning.export.task_vectors import METHODS

pytestmark = pytest.mark.unit
R = 1 / math.sqrt(2)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_linear_weighted_and_normalized() -> None:
    a, b = t(1, 2), t(3, 6)
    # (1*a + 3*b) / 4 = ([1, 2] + [9, 18]) / 4
    assert torch.allclose(merging.linear([a, b], [1, 3]), t(2.5, 5.0))
    assert torch.allclose(merging.linear([a, b], [1, 3], normalize=False), t(10, 20))
    assert torch.allclose(merging.linear([a, b], [2, 2]), t(2, 4))


def test_linear_works_in_float32_and_rejects_zero_sum() -> None:
    a = torch.ones(3, dtype=torch.bfloat16)
    assert merging.linear([a, a], [1, 1]).dtype == torch.float32
    with pytest.raises(ValueError, match="sum to zero"):
        merging.linear([a, a], [1, -1])


def test_slerp_of_orthogonal_unit_vectors() -> None:
    a, b = t(1, 0), t(0, 1)
    assert torch.allclose(merging.slerp(a, b, 0.5), t(R, R))
    assert torch.allclose(merging.slerp(a, b, 0.0), a)
    assert torch.allclose(merging.slerp(a, b, 1.0), b)


def test_slerp_weights_the_tensors_and_the_directions_mode_the_norm() -> None:
    # Orthogonal, norms 1 and 3, t = 0.5: the sine weights are sin(pi/4) / sin(pi/2) = 1/sqrt(2) each.
    a, b = t(1, 0), t(0, 3)
    assert torch.allclose(merging.slerp(a, b, 0.5), t(R, 3 * R))
    # `slerp_mode: directions`: direction (1, 1)/sqrt(2), norm (1 + 3) / 2 = 2.
    assert torch.allclose(merging.slerp_directions(a, b, 0.5), t(2 * R, 2 * R))


def test_slerp_falls_back_to_linear_above_the_dot_threshold() -> None:
    a = t(1, 0)
    near = t(1, 0.03)  # cos = 0.99955 > 0.9995
    assert torch.allclose(merging.slerp(a, near, 0.25), 0.75 * a + 0.25 * near)
    farther = t(1, 0.033)  # cos = 0.99946 < 0.9995: the spherical formula
    theta = math.acos(1 / math.hypot(1, 0.033))
    expected = math.sin(0.75 * theta) / math.sin(theta) * a + math.sin(0.25 * theta) / math.sin(theta) * farther
    assert torch.allclose(merging.slerp(a, farther, 0.25), expected)
    # Opposite vectors too: the sine of 180 degrees cannot be divided by.
    assert torch.allclose(merging.slerp(a, -a, 0.5), torch.zeros(2))


def test_slerp_of_a_zero_tensor_treats_its_norm_as_one() -> None:
    # mergekit's convention: cos = 0, so the weights are sin((1-t) pi/2) and sin(t pi/2).
    assert torch.allclose(merging.slerp(torch.zeros(2), t(0, 2), 0.5), t(0, 2 * R))


def test_slerp_works_on_matrices_as_one_vector() -> None:
    a, b = torch.eye(2), torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    merged = merging.slerp(a, b, 0.5)
    assert merged.shape == (2, 2)
    assert torch.allclose(merged, (a + b) * R)


def test_nuslerp_flat_row_and_column_vectors() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # Flattened: (1, 0, 0, 1) and (0, 1, 0, 1) are 60 degrees apart; at t = 0.5 each weight is sin(30)/sin(60).
    weight = math.sin(math.pi / 6) / math.sin(math.pi / 3)
    assert torch.allclose(merging.nuslerp(a, b, 0.5), weight * (a + b))
    # Per vector along the last dimension: row 0 is orthogonal (weights 1/sqrt(2)), row 1 identical (linear).
    rows = merging.nuslerp(a, b, 0.5, flatten=False)
    assert torch.allclose(rows, torch.tensor([[R, R], [0.0, 1.0]]))
    # row_wise: along the first dimension, i.e. the columns (1, 0)|(0, 0) and (0, 1)|(1, 1).
    columns = merging.nuslerp(a, b, 0.5, row_wise=True, flatten=False)
    # Column 0 of b is zero: its unit vector is zero, so cos 0 and the weights are sin(pi/4) each.
    assert torch.allclose(columns[:, 0], t(R, 0.0))
    assert columns.shape == (2, 2)


def test_nuslerp_with_a_base_interpolates_task_vectors() -> None:
    base = t(1, 1)
    merged = merging.nuslerp(t(2, 1), t(1, 2), 0.5, base=base)
    assert torch.allclose(merged, base + t(R, R))


def test_nuslerp_t_comes_from_the_weights() -> None:
    assert merging.nuslerp_t([1.0, 3.0]) == 0.75
    assert merging.nuslerp_t([1.0, -1.0]) == 0.5


def test_model_stock_ratio_from_the_angle() -> None:
    base = torch.zeros(2)
    # Identical task vectors: cos 1, t = 2 / (1 + 1) = 1, the average of the models.
    assert torch.allclose(merging.model_stock(base, [t(1, 1), t(1, 1)]), t(1, 1))
    # Orthogonal: cos 0, t = 0, the base.
    assert torch.allclose(merging.model_stock(base, [t(1, 0), t(0, 1)]), base)
    # 45 degrees: t = 2c / (1 + c) with c = 1/sqrt(2); average (1, 0.5).
    ratio = 2 * R / (1 + R)
    assert torch.allclose(merging.model_stock(base, [t(1, 0), t(1, 1)]), ratio * t(1, 0.5))
    # Opposite: 1 + (N - 1) cos = 0, the base is kept.
    assert torch.allclose(merging.model_stock(t(3, 3), [t(4, 3), t(2, 3)]), t(3, 3))


def test_model_stock_filter_wise_takes_each_row_on_its_own() -> None:
    base = torch.zeros(2, 2)
    first = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    second = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    merged = merging.model_stock(base, [first, second], filter_wise=True)
    assert torch.allclose(merged, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # row 0 cos 1, row 1 cos 0


def test_passthrough_scale() -> None:
    assert torch.equal(merging.passthrough(t(1, 2)), t(1, 2))
    assert torch.equal(merging.passthrough(t(1, 2), 0.0), t(0, 0))


def test_keep_largest_keeps_floor_of_density_times_n() -> None:
    delta = t(0.1, -5, 3, -0.2, 4)
    # floor(0.5 * 5) = 2 entries: -5 and 4 (round() would keep 3).
    assert torch.equal(delta * task_vectors.keep_largest(delta, 0.5), t(0, -5, 0, 0, 4))
    assert int(task_vectors.keep_largest(delta, 0.01).sum()) == 1  # at least one


def test_keep_middle_drops_outliers_and_the_smallest() -> None:
    delta = torch.arange(1, 11, dtype=torch.float32)  # magnitudes 1..10
    # keep floor(0.5 * 10) = 5, drop the floor(0.2 * 10) = 2 largest, so the 3 smallest go too: 4..8 stay.
    mask = task_vectors.keep_middle(delta, 0.5, 0.2)
    assert torch.equal(delta * mask, t(0, 0, 0, 4, 5, 6, 7, 8, 0, 0))
    # density 0.9 with gamma 0.2 cannot drop both: fewer outliers are dropped (only the largest here).
    assert torch.equal(task_vectors.keep_middle(delta, 0.9, 0.2), t(1, 1, 1, 1, 1, 1, 1, 1, 1, 0))


def test_random_drop_keeps_the_density_and_rescaling_keeps_the_l1_norm() -> None:
    generator = torch.Generator().manual_seed(0)
    delta = torch.linspace(-2, 2, 20000)
    mask = task_vectors.keep_random(delta, 0.3, generator)
    assert abs(float(mask.mean()) - 0.3) < 0.015  # 4.6 standard deviations
    rescaled = task_vectors.masked(delta, mask, rescale=True)
    assert torch.isclose(rescaled.abs().sum(), delta.abs().sum(), rtol=1e-5)
    # The L1 ratio is 1 / density on average (the DARE paper's factor).
    assert abs(float(rescaled[mask.bool()][0] / delta[mask.bool()][0]) - 1 / 0.3) < 0.1
    assert torch.equal(task_vectors.masked(delta, mask, rescale=False), delta * mask)


def test_della_keeps_large_magnitudes_more_often() -> None:
    generator = torch.Generator().manual_seed(0)
    row = torch.arange(1, 101, dtype=torch.float32)  # ranks 1..100 in the one row
    draws = torch.stack([task_vectors.keep_della(row, 0.5, 0.2, generator) for _ in range(2000)])
    frequency = draws.mean(dim=0)
    # Keep probability rises linearly with the rank: 0.3 for the smallest, 0.7 for the largest.
    assert abs(float(frequency[0]) - 0.3) < 0.05 and abs(float(frequency[-1]) - 0.7) < 0.05
    assert abs(float(frequency.mean()) - 0.5) < 0.01
    with pytest.raises(ValueError, match="density \\+/- epsilon"):
        task_vectors.keep_della(row, 0.9, 0.2, generator)


def test_ties_trim_elect_and_disjoint_mean() -> None:
    # base 0, density 0.5 keeps floor(0.5 * 4) = 2 entries of each task vector:
    #   tau1 = [ 3, -1,  2, 0.5] -> [ 3,  0,  2, 0]
    #   tau2 = [-2, -4,  1, 0.1] -> [-2, -4,  0, 0]
    #   tau3 = [ 1, .5, -5, 0.2] -> [ 1,  0, -5, 0]
    # summed = [2, -4, -3, 0] -> elected [+, -, -, +]; zero entries never agree.
    # disjoint mean: [(3 + 1) / 2, -4 / 1, -5 / 1, 0] = [2, -4, -5, 0]
    base = torch.zeros(4)
    models = [t(3, -1, 2, 0.5), t(-2, -4, 1, 0.1), t(1, 0.5, -5, 0.2)]
    merged = task_vectors.combine(base, models, [1, 1, 1], METHODS["ties"], densities=[0.5] * 3)
    assert torch.allclose(merged, t(2, -4, -5, 0))
    shifted = [m + 1 for m in models]
    merged = task_vectors.combine(torch.ones(4), shifted, [1, 1, 1], METHODS["ties"], densities=[0.5] * 3, scale=0.5)
    assert torch.allclose(merged, t(2, -1, -1.5, 1))


def test_weights_decide_the_elected_sign() -> None:
    # 1*2 + 3*(-1) = -1 < 0: the negative side wins; its weighted mean is (3 * -1) / 3 = -1.
    merged = task_vectors.combine(torch.zeros(1), [t(2), t(-1)], [1, 3], METHODS["ties"])
    assert torch.allclose(merged, t(-1))
    # A tie elects +: 1*1 + 1*(-1) = 0 keeps the positive entry.
    assert torch.allclose(task_vectors.combine(torch.zeros(1), [t(1), t(-1)], [1, 1], METHODS["ties"]), t(1))


def test_dare_ties_sums_without_normalizing_by_default() -> None:
    # mergekit's defaults: dare_ties does not divide by the weights (ties does).
    base, models = torch.zeros(2), [t(1, 1), t(1, -1)]
    dare = task_vectors.combine(base, models, [0.5, 0.5], METHODS["dare_ties"])
    assert torch.allclose(dare, t(1, 0.5))
    ties = task_vectors.combine(base, models, [0.5, 0.5], METHODS["ties"])
    assert torch.allclose(ties, t(1, 1))


def test_task_arithmetic_and_dare_linear_at_density_one() -> None:
    base = t(1, 1)
    models = [t(2, 1), t(1, 3)]  # task vectors [1, 0] and [0, 2]
    # 1 + 0.5 * (2*[1, 0] + 1*[0, 2]) = [2, 2]
    arithmetic = task_vectors.combine(base, models, [2, 1], METHODS["task_arithmetic"], scale=0.5)
    assert torch.allclose(arithmetic, t(2, 2))
    dare = task_vectors.combine(base, models, [2, 1], METHODS["dare_linear"], densities=[1.0, 1.0], scale=0.5)
    assert torch.equal(dare, arithmetic)


def test_randomised_methods_follow_the_generator() -> None:
    base = torch.zeros(50)
    models = [torch.randn(50, generator=torch.Generator().manual_seed(i)) for i in range(2)]

    def run(method: str, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return task_vectors.combine(base, models, [1, 1], METHODS[method], densities=[0.4, 0.4], generator=generator)

    for method in ("dare_ties", "dare_linear", "della", "della_linear"):
        assert torch.equal(run(method, 7), run(method, 7))
        assert not torch.equal(run(method, 7), run(method, 8))


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        merging.linear([t(1, 2), t(1)], [1, 1])
    with pytest.raises(ValueError, match="shapes differ"):
        task_vectors.combine(t(0, 0), [t(1)], [1], METHODS["ties"])
