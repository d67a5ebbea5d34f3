"""Optimizer and random-number-generator state as safetensors tensors plus JSON, so checkpoints hold no pickle.

Each `*_state()` returns `(meta, tensors)`: `meta` is JSON-ready, `tensors` go into a safetensors file; the
matching `restore_*` / `*_from_parts` take both back. JSON floats round-trip exactly (Python writes the
shortest repr that reads back to the same double), so nothing is rounded on the way.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ optimizer
def optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Split `optimizer.state_dict()` into JSON (hyper-parameters, plain values) and tensors (`state.<i>.<key>`,
    `param_groups.<g>.<key>`)."""
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain_state.setdefault(str(index), {})[key] = value
    groups: list[dict[str, Any]] = []
    for number, group in enumerate(state_dict["param_groups"]):
        plain: dict[str, Any] = {}
        for key, value in group.items():
            if isinstance(value, Tensor):
                tensors[f"param_groups.{number}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[key] = value
        groups.append(plain)
    return {"state": plain_state, "param_groups": groups}, tensors


def optimizer_state_from_parts(
    meta: dict[str, Any], tensors: dict[str, Tensor], current: dict[str, Any]
) -> dict[str, Any]:
    """The `state_dict` that `optimizer_state` split; `current` (the live optimizer's) supplies the types JSON
    lost: a hyper-parameter that is a tuple there (AdamW's `betas`) becomes one again."""
    state: dict[int, dict[str, Any]] = {int(index): dict(entry) for index, entry in meta["state"].items()}
    groups = [dict(group) for group in meta["param_groups"]]
    for name, tensor in tensors.items():
        kind, number, key = name.split(".", 2)
        if kind == "state":
            state.setdefault(int(number), {})[key] = tensor
        else:
            groups[int(number)][key] = tensor
    for group, live in zip(groups, current["param_groups"], strict=False):
        for key, value in group.items():
            if isinstance(live.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------------------ RNG
def rng_state() -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Every global generator that sampling, dropout or user code may draw from: Python's, NumPy's, torch's CPU
    generator and each CUDA device's (MPS's where present)."""
    version, internal, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    meta = {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": keys.tolist(),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for device, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{device}"] = state
    if torch.backends.mps.is_available():
        tensors["mps"] = torch.mps.get_rng_state()
    return meta, tensors


def restore_rng(meta: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    """Put back what `rng_state` captured. CUDA states are restored when the device count matches; otherwise
    the run continues with a warning (it is no longer bit-identical to the uninterrupted one)."""
    py = meta["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = meta["numpy"]
    keys = np.array(npy["keys"], dtype=np.uint32)
    np.random.set_state((npy["name"], keys, npy["position"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(tensors["torch"].clone())
    cuda = [tensors[f"cuda.{i}"].clone() for i in range(sum(name.startswith("cuda.") for name in tensors))]
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and len(cuda) == available:
        torch.cuda.set_rng_state_all(cuda)
    elif cuda or available:
        logger.warning(
            "The checkpoint holds CUDA generator states for %d device(s), this process sees %d: sampling will not "
            "repeat the interrupted run exactly",
            len(cuda),
            available,
        )
    if "mps" in tensors and torch.backends.mps.is_available():
        torch.mps.set_rng_state(tensors["mps"].clone())
