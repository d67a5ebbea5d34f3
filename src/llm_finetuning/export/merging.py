"""Merge the weights of several models of one architecture, one tensor at a time.

Every function takes tensors of the same shape and returns a new tensor of the dtype of the first (or base)
input. Arithmetic runs in float32 at least, so merging half-precision checkpoints does not lose the small
task-vector differences to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Combine = Literal["ties", "linear"]


def _work_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    if not tensors:
        raise ValueError("at least one tensor is needed")
    if len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    shape = tensors[0].shape
    for tensor in tensors[1:]:
        if tensor.shape != shape:
            raise ValueError(f"shapes differ: {tuple(shape)} and {tuple(tensor.shape)}")


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """Weighted average of the tensors ("model soups", Wortsman et al. 2022, arXiv:2203.05482).

    With `normalize` the weights are divided by their sum, so `[2, 2]` is the plain mean; without it the
    weighted sum is returned as is.
    """
    _check(tensors, weights)
    work = _work_dtype(tensors[0])
    total = sum(w * t.to(work) for w, t in zip(weights, tensors, strict=True))
    if normalize:
        norm = sum(weights)
        if norm == 0:
            raise ValueError("the weights sum to zero and cannot be normalized")
        total = total / norm
    return torch.as_tensor(total).to(tensors[0].dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985, "Animating rotation with quaternion curves").

    The flattened tensors' directions move along the great circle between them, which keeps the norm of the
    direction instead of shrinking it as a straight line through the sphere does; the magnitude itself is
    interpolated linearly. When the directions are parallel or opposite to within `eps` (1 - |cos| < eps), or
    either tensor is zero, the angle is meaningless and plain linear interpolation is returned.
    """
    _check([a, b], [0.0, 0.0])
    work = _work_dtype(a)
    x, y = a.to(work).flatten(), b.to(work).flatten()
    norm_x, norm_y = x.norm(), y.norm()
    if norm_x == 0 or norm_y == 0:
        return ((1 - t) * x + t * y).reshape(a.shape).to(a.dtype)
    unit_x, unit_y = x / norm_x, y / norm_y
    cos = torch.clamp(torch.dot(unit_x, unit_y), -1.0, 1.0)
    if 1 - cos.abs() < eps:
        return ((1 - t) * x + t * y).reshape(a.shape).to(a.dtype)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    direction = (torch.sin((1 - t) * theta) / sin) * unit_x + (torch.sin(t * theta) / sin) * unit_y
    magnitude = (1 - t) * norm_x + t * norm_y
    return (magnitude * direction).reshape(a.shape).to(a.dtype)


def _task_vectors(base: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    work = _work_dtype(base)
    return [t.to(work) - base.to(work) for t in tensors]


def task_arithmetic(
    base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float], scale: float = 1.0
) -> torch.Tensor:
    """`base + scale * sum_i w_i (m_i - base)` (Ilharco et al. 2023, "Editing models with task arithmetic")."""
    _check([base, *tensors], [0.0, *weights])
    deltas = _task_vectors(base, tensors)
    summed = sum(w * d for w, d in zip(weights, deltas, strict=True))
    return (base.to(deltas[0].dtype) + scale * summed).to(base.dtype)


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the `round(density * numel)` entries of largest magnitude (at least one), zero the rest."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    flat = delta.flatten()
    keep = max(1, round(density * flat.numel()))
    if keep >= flat.numel():
        return delta.clone()
    # topk (not a magnitude threshold) so that ties at the threshold still keep exactly `keep` entries.
    index = flat.abs().topk(keep).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[index] = True
    return (flat * mask).reshape(delta.shape)


def _elect_and_average(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """TIES steps 2 and 3: elect a sign per entry, then average the entries that agree with it.

    The elected sign is the sign of the weighted sum of the task vectors (the side with more total mass);
    the disjoint mean divides by the summed weights of the agreeing models only, so a parameter changed by
    one model is not diluted by the models that left it alone.
    """
    weighted = torch.stack([w * d for w, d in zip(weights, deltas, strict=True)])
    elected = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(torch.stack(list(deltas))) == elected) & (elected != 0)
    weight_column = torch.tensor(weights, dtype=weighted.dtype).reshape(-1, *([1] * deltas[0].dim()))
    numerator = (weighted * agree).sum(dim=0)
    denominator = (weight_column * agree).sum(dim=0)
    return torch.where(denominator != 0, numerator / denominator.clamp_min(1e-12), torch.zeros_like(numerator))


def ties(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    scale: float = 1.0,
) -> torch.Tensor:
    """TIES-Merging (Yadav et al. 2023, "Resolving interference when merging models", arXiv:2306.01708).

    Trim each task vector to its top-`density` fraction by magnitude, elect a sign per parameter, average
    the trimmed values that agree with it (disjoint mean), and add `scale` times the result to the base.
    """
    _check([base, *tensors], [0.0, *weights])
    deltas = [trim(d, density) for d in _task_vectors(base, tensors)]
    merged = _elect_and_average(deltas, weights)
    return (base.to(merged.dtype) + scale * merged).to(base.dtype)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """DARE's step: drop each entry with probability `1 - density`, divide the survivors by `density`.

    The rescaling keeps the expected value of every entry equal to the original.
    """
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    return delta * keep / density


def dare(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    combine: Combine = "ties",
    generator: torch.Generator | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """DARE (Yu et al. 2023, "Language models are Super Mario", arXiv:2311.03099).

    Each task vector is randomly sparsified by `drop_and_rescale`, then combined either by TIES sign election
    and disjoint mean (`combine="ties"`, no magnitude trimming) or by a weighted sum (`combine="linear"`),
    and `scale` times the result is added to the base. Pass a seeded `generator` for a reproducible merge.
    """
    _check([base, *tensors], [0.0, *weights])
    deltas = [drop_and_rescale(d, density, generator) for d in _task_vectors(base, tensors)]
    if combine == "ties":
        merged = _elect_and_average(deltas, weights)
    elif combine == "linear":
        merged = sum(w * d for w, d in zip(weights, deltas, strict=True))
    else:
        raise ValueError(f"combine must be 'ties' or 'linear', got {combine!r}")
    return (base.to(deltas[0].dtype) + scale * torch.as_tensor(merged)).to(base.dtype)


__all__ = ["dare", "drop_and_rescale", "linear", "slerp", "task_arithmetic", "ties", "trim"]
