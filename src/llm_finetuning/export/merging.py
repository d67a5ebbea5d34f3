"""Merge methods that interpolate between whole models, one tensor at a time: linear, SLERP, NuSLERP, Model Stock.

The task-vector methods (task arithmetic, TIES, DARE, breadcrumbs, DELLA) are in `task_vectors`. Every function
takes tensors of one shape and returns a tensor of that shape in the working dtype: float64 where the inputs are
float64, float32 otherwise, so half-precision checkpoints do not lose small differences to rounding. Formulas and
edge cases follow mergekit 0.1.5, so that a mergekit config gives the same model (docs/merging.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _check(tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> None:
    if not tensors:
        raise ValueError("at least one tensor is needed")
    if weights is not None and len(tensors) != len(weights):
        raise ValueError(f"{len(tensors)} tensors but {len(weights)} weights")
    shape = tensors[0].shape
    for tensor in tensors[1:]:
        if tensor.shape != shape:
            raise ValueError(f"shapes differ: {tuple(shape)} and {tuple(tensor.shape)}")


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """`sum_i w_i m_i`, divided by `sum_i w_i` with `normalize` ("model soups", Wortsman et al. 2022)."""
    _check(tensors, weights)
    work = work_dtype(*tensors)
    total = torch.zeros(tensors[0].shape, dtype=work)
    for weight, tensor in zip(weights, tensors, strict=True):
        total += weight * tensor.to(work)
    if normalize:
        norm = sum(weights)
        if norm == 0:
            # mergekit divides anyway and writes a model of NaNs and infinities.
            raise ValueError("the weights sum to zero and cannot be normalized")
        total /= norm
    return total


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, dot_threshold: float = 0.9995) -> torch.Tensor:
    """Spherical interpolation of two tensors, each taken as one flat vector (Shoemake 1985).

    With `theta` the angle between `a` and `b`, the result is `sin((1-t) theta)/sin(theta) a +
    sin(t theta)/sin(theta) b`: the weights apply to the tensors as they are, so the norm follows the arc
    between two vectors of different lengths. Where `|cos theta| > dot_threshold` the angle is too small (or
    too close to 180 degrees) to divide by its sine and `(1-t) a + t b` is returned; a zero tensor counts as
    having norm 1 there, as in mergekit.
    """
    _check([a, b])
    work = work_dtype(a, b)
    x, y = a.to(work).reshape(-1), b.to(work).reshape(-1)
    if x.numel() == 0:
        return ((1 - t) * x + t * y).reshape(a.shape)
    norm_x, norm_y = torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)
    norm_x = torch.where(norm_x > 1e-8, norm_x, 1.0)
    norm_y = torch.where(norm_y > 1e-8, norm_y, 1.0)
    cos = ((x / norm_x) * (y / norm_y)).sum().clamp(-1, 1)
    if cos.abs() > dot_threshold:
        return ((1 - t) * x + t * y).reshape(a.shape)
    theta = torch.acos(cos)
    sin = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / sin * x + torch.sin(t * theta) / sin * y).reshape(a.shape)


def slerp_directions(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """`slerp_mode: directions`: the unit directions move along the great circle and the norm is interpolated
    linearly, `((1-t)|a| + t|b|) slerp(a/|a|, b/|b|, t)`; linear where `1 - |cos theta| < eps` or a tensor is
    zero. This was llmft's SLERP before it followed mergekit; it differs where the norms differ."""
    _check([a, b])
    work = work_dtype(a, b)
    x, y = a.to(work).reshape(-1), b.to(work).reshape(-1)
    norm_x, norm_y = x.norm(), y.norm()
    if norm_x == 0 or norm_y == 0:
        return ((1 - t) * x + t * y).reshape(a.shape)
    unit_x, unit_y = x / norm_x, y / norm_y
    cos = torch.clamp(torch.dot(unit_x, unit_y), -1.0, 1.0)
    if 1 - cos.abs() < eps:
        return ((1 - t) * x + t * y).reshape(a.shape)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    direction = (torch.sin((1 - t) * theta) / sin) * unit_x + (torch.sin(t * theta) / sin) * unit_y
    return (((1 - t) * norm_x + t * norm_y) * direction).reshape(a.shape)


def _nuslerp_vectors(x: torch.Tensor, y: torch.Tensor, t: float, eps: float = 1e-8) -> torch.Tensor:
    """SLERP of every vector along the last dimension of `x` with its partner in `y`."""
    unit_x = x / torch.norm(x, dim=-1, keepdim=True).clamp(min=1e-7)
    unit_y = y / torch.norm(y, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = torch.sum(unit_x * unit_y, dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= eps**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    spherical = (torch.sin((1 - t) * theta) * x + torch.sin(t * theta) * y) / torch.sin(theta)
    return torch.where(colinear, (1 - t) * x + t * y, spherical)


def nuslerp(
    a: torch.Tensor,
    b: torch.Tensor,
    t: float,
    base: torch.Tensor | None = None,
    row_wise: bool = False,
    flatten: bool = True,
) -> torch.Tensor:
    """NuSLERP (mergekit): SLERP of `a` and `b` (or of their task vectors `a - base`, `b - base`, added back to
    `base`), over the whole flattened tensor (`flatten`), or vector by vector along the last dimension, or
    along the first with `row_wise`. Vectors that are exactly parallel are interpolated linearly."""
    _check([a, b] if base is None else [a, b, base])
    work = work_dtype(a, b)
    x, y = a.to(work), b.to(work)
    if base is not None:
        x, y = x - base.to(work), y - base.to(work)
    if flatten:
        merged = _nuslerp_vectors(x.reshape(-1), y.reshape(-1), t).reshape(a.shape)
    elif row_wise:
        merged = _nuslerp_vectors(x.transpose(0, -1), y.transpose(0, -1), t).transpose(0, -1)
    else:
        merged = _nuslerp_vectors(x, y, t)
    return merged if base is None else base.to(work) + merged


def nuslerp_t(weights: Sequence[float]) -> float:
    """NuSLERP's position from the two models' weights: `w_2 / (w_1 + w_2)`, the midpoint where they cancel."""
    total = weights[0] + weights[1]
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def model_stock(base: torch.Tensor, tensors: Sequence[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    """Model Stock (Jang et al. 2024, arXiv:2403.19522): move from the base towards the average of the N models
    by `t = N cos / (1 + (N - 1) cos)`, where `cos` is the mean cosine between the models' task vectors, taken
    over the whole tensor or, with `filter_wise`, per row. Where the denominator vanishes the base is kept."""
    _check([base, *tensors])
    if len(tensors) < 2:
        raise ValueError("model stock needs at least two models besides the base")
    work = work_dtype(base, *tensors)

    def vectors(x: torch.Tensor) -> torch.Tensor:
        """The vectors one ratio is computed for: the whole tensor, or each row (a 1-D tensor is one row)."""
        x = x.to(work)
        if not filter_wise:
            return x.reshape(-1)
        return x.unsqueeze(0) if x.dim() < 2 else x

    origin = vectors(base)
    models = [vectors(m) for m in tensors]
    offsets = [m - origin for m in models]
    cosines = []
    for i, first in enumerate(offsets):
        for second in offsets[i + 1 :]:
            norms = (torch.norm(first, dim=-1) * torch.norm(second, dim=-1)).clamp(min=1e-6)
            cosines.append(((first * second).sum(dim=-1) / norms).clamp(-1, 1))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    count = len(models)
    denominator = 1 + (count - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, count * cos / torch.where(singular, 1.0, denominator))
    average = sum(models) / count
    return (t * average + (1 - t) * origin).reshape(base.shape)


def passthrough(tensor: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The tensor unchanged, or multiplied by `scale` (used to silence a layer's output projections)."""
    if scale is None:
        return tensor
    return tensor.to(work_dtype(tensor)) * scale


__all__ = ["linear", "model_stock", "nuslerp", "nuslerp_t", "passthrough", "slerp", "slerp_directions"]
