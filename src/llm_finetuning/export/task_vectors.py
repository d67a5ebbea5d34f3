"""The task-vector merge methods: task arithmetic, TIES, DARE, breadcrumbs and DELLA, one tensor at a time.

Each is the same three steps on the task vectors `delta_i = m_i - base` (as in mergekit's "generalized task
arithmetic"): sparsify each delta (keep the largest magnitudes, a random subset, the middle band, or a random
subset favouring large magnitudes), optionally keep only the entries that agree with an elected sign, and add
the weighted sum of what is left to the base. The methods differ only in those choices and their defaults,
listed in `METHODS`. Formulas follow mergekit 0.1.5 (docs/merging.md gives them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from llm_finetuning.export.merging import _check, work_dtype

Sparsification = Literal["magnitude", "random", "breadcrumbs", "della"]


@dataclass(frozen=True)
class TaskVectorMethod:
    """How one method treats the task vectors, and its defaults for `normalize` and `rescale`."""

    sparsification: Sparsification | None
    sign_consensus: bool
    normalize: bool
    rescale: bool


METHODS: dict[str, TaskVectorMethod] = {
    "task_arithmetic": TaskVectorMethod(None, sign_consensus=False, normalize=False, rescale=False),
    "ties": TaskVectorMethod("magnitude", sign_consensus=True, normalize=True, rescale=False),
    "dare_ties": TaskVectorMethod("random", sign_consensus=True, normalize=False, rescale=True),
    "dare_linear": TaskVectorMethod("random", sign_consensus=False, normalize=False, rescale=True),
    "breadcrumbs": TaskVectorMethod("breadcrumbs", sign_consensus=False, normalize=False, rescale=False),
    "breadcrumbs_ties": TaskVectorMethod("breadcrumbs", sign_consensus=True, normalize=False, rescale=False),
    "della": TaskVectorMethod("della", sign_consensus=True, normalize=True, rescale=True),
    "della_linear": TaskVectorMethod("della", sign_consensus=False, normalize=False, rescale=True),
}


def keep_largest(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES' trim: a mask of the `floor(density * n)` entries of largest magnitude (at least one)."""
    flat = delta.abs().reshape(-1)
    keep = max(1, int(density * flat.numel()))
    mask = torch.zeros(flat.numel(), dtype=delta.dtype)
    # argsort like mergekit (not a threshold), so that equal magnitudes at the cut fall the same way.
    mask[torch.argsort(flat.float(), descending=True)[:keep]] = 1
    return mask.reshape(delta.shape)


def keep_middle(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs (Davari & Belilovsky 2023, arXiv:2312.06795): drop the `floor(gamma * n)` largest entries as
    outliers and the smallest, keeping `floor(density * n)` in between; fewer outliers are dropped where both
    cannot be met."""
    flat = delta.abs().reshape(-1)
    count = flat.numel()
    keep, top = int(density * count), int(gamma * count)
    bottom = max(0, count - keep - top)
    mask = torch.zeros(count, dtype=delta.dtype)
    mask[torch.sort(flat.float()).indices[bottom : bottom + keep]] = 1
    return mask.reshape(delta.shape)


def keep_random(delta: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE's drop (Yu et al. 2023, arXiv:2311.03099): keep each entry with probability `density`."""
    return torch.bernoulli(torch.full_like(delta, density), generator=generator)


def keep_della(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None) -> torch.Tensor:
    """DELLA's MagPrune (Deep et al. 2024, arXiv:2406.11617): keep each entry with a probability rising linearly
    with its magnitude rank within its row, from `density - epsilon` (smallest) to `density + epsilon`."""
    if not (0 < density - epsilon and density + epsilon < 1):
        raise ValueError(f"della needs density +/- epsilon inside (0, 1); got density {density}, epsilon {epsilon}")
    rows = delta if delta.dim() >= 2 else delta.unsqueeze(0)
    ranks = torch.argsort(rows.abs(), dim=1).argsort(dim=1).to(delta.dtype) + 1
    lowest, highest = ranks.min(dim=1, keepdim=True).values, ranks.max(dim=1, keepdim=True).values
    position = ((ranks - lowest) / (highest - lowest)).clamp(0, 1)
    probability = (density - epsilon) + position * 2 * epsilon
    return torch.bernoulli(probability, generator=generator).reshape(delta.shape)


def masked(delta: torch.Tensor, mask: torch.Tensor, rescale: bool) -> torch.Tensor:
    """`delta * mask`; with `rescale`, scaled back to the L1 norm of `delta` (mergekit's rescaling, which for
    DARE is `1 / density` on average), unless either norm is below 1e-7."""
    kept = delta * mask
    if not rescale:
        return kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def sparsify(
    delta: torch.Tensor,
    how: Sparsification | None,
    density: float,
    rescale: bool,
    gamma: float = 0.01,
    epsilon: float = 0.15,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One task vector with the method's sparsification applied (none at `density >= 1`)."""
    if how is None or density >= 1:
        return delta
    if density <= 0 and how in ("magnitude", "della"):
        return torch.zeros_like(delta)  # without a draw, as in mergekit (DARE still draws at density 0)
    if how == "magnitude":
        mask = keep_largest(delta, density)
    elif how == "breadcrumbs":
        mask = keep_middle(delta, density, gamma)
    elif how == "random":
        mask = keep_random(delta, density, generator)
    else:
        mask = keep_della(delta, density, epsilon, generator)
    return masked(delta, mask, rescale)


def agreeing(weighted: torch.Tensor) -> torch.Tensor:
    """TIES' sign election over stacked weighted deltas: True where an entry has the sign of the summed deltas
    (zero sums elect +; zero entries never agree)."""
    elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)
    return weighted.sign() == elected


def combine(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    method: TaskVectorMethod,
    densities: Sequence[float] | None = None,
    normalize: bool | None = None,
    rescale: bool | None = None,
    scale: float = 1.0,
    gammas: Sequence[float] | None = None,
    epsilons: Sequence[float] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """`base + scale * sum_i w_i s(delta_i) [/ sum_i w_i]`, with `s` the method's sparsification; with sign
    consensus only the entries agreeing with the elected sign are summed and the division (`normalize`) is by
    the weights of those entries alone (TIES' disjoint mean). Random draws come from `generator`, one model
    after another, so a seeded generator fed the tensors in a fixed order gives a fixed model."""
    _check([base, *tensors], None)
    count = len(tensors)
    densities = densities or [1.0] * count
    normalize = method.normalize if normalize is None else normalize
    rescale = method.rescale if rescale is None else rescale
    work = work_dtype(base, *tensors)
    origin = base.to(work)
    deltas = torch.empty((count, *base.shape), dtype=work)
    for i, tensor in enumerate(tensors):
        gamma = gammas[i] if gammas else 0.01
        epsilon = epsilons[i] if epsilons else 0.15
        deltas[i] = sparsify(
            tensor.to(work) - origin, method.sparsification, densities[i], rescale, gamma, epsilon, generator
        )
    column = torch.tensor(list(weights), dtype=work).reshape(-1, *([1] * base.dim()))
    deltas *= column
    if method.sign_consensus:
        mask = agreeing(deltas)
        merged = (deltas * mask).sum(dim=0)
        divisor = (column * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        merged = deltas.sum(dim=0)
        divisor = column.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        merged /= divisor
    if scale != 1:
        merged *= scale
    return origin + merged


__all__ = [
    "METHODS",
    "TaskVectorMethod",
    "agreeing",
    "combine",
    "keep_della",
    "keep_largest",
    "keep_middle",
    "sparsify",
]
