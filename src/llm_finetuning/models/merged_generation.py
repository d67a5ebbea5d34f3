"""Sampling from merged LoRA weights while training the unmerged adapter (`method.generation_weights: merged`).

During decoding every LoRA layer costs its base matmul plus a cast of the input to the adapter's float32, two thin
matmuls, a scale and an add: on a GPU decoding a few sequences, where each step is bound by kernel launches and
weight reads, that is several extra kernels per adapted layer per token. Here each adapted linear layer gets one
buffer holding `W + sum(scale * B @ A)` in the base weight's dtype, refreshed from the current adapter before every
`generate` call, and during the call the layer runs one plain `F.linear` on it.

The base weights are never written: PEFT's own `merge_adapter` / `unmerge_adapter` would add and subtract the update
in bfloat16 and leave rounding error in the frozen weights after every step. The price is one copy of the adapted
weights, kept between steps so their addresses stay fixed for compiled decoding (CUDA graphs).

Only plain LoRA on `nn.Linear` is merged. DoRA and other variants, quantized or Conv1D base layers and embedding
LoRA keep the adapter path (exact, only slower), and the log says how many. The adapter's dropout does not apply to
sampling, as with vLLM; training still uses it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from llm_finetuning.errors import ConfigError
from llm_finetuning.runs import distributed

if TYPE_CHECKING:
    from llm_finetuning.config.schema import Config

logger = logging.getLogger(__name__)
PATCHED = ("generate", "generate_batch")  # the sampling entry points TRL calls on the unwrapped model


def _lora_linear() -> type:
    from peft.tuners.lora.layer import Linear

    return Linear


def _lora_layer() -> type:
    from peft.tuners.lora.layer import LoraLayer

    return LoraLayer


def mergeable(module: nn.Module) -> bool:
    """A PEFT LoRA layer this class can merge: plain LoRA (no DoRA or other variant) on a plain `nn.Linear`."""
    return (
        type(module) is _lora_linear()
        and type(module.base_layer) is nn.Linear
        and not getattr(module, "lora_variant", None)
        and bool(module.lora_A)
    )


def _plain_forward(layer: nn.Module, weight: torch.Tensor) -> Callable[..., torch.Tensor]:
    base = layer.base_layer
    original = type(layer).forward

    def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if args or kwargs:  # e.g. PEFT's per-row `adapter_names`: only the adapter path knows them
            return original(layer, x, *args, **kwargs)
        return F.linear(x, weight, base.bias)

    return forward


class MergedWeights:
    """One merged weight per adapted linear layer of `model`, and the context that runs the layers on them."""

    def __init__(self, model: nn.Module) -> None:
        lora = _lora_layer()  # every LoRA layer, quantized and embedding ones included, to count those kept
        adapted = [m for m in model.modules() if isinstance(m, lora)]
        self.layers = [m for m in adapted if mergeable(m)]
        self.kept = len(adapted) - len(self.layers)
        self.weights: list[torch.Tensor] = []
        self._forwards: list[Callable[..., torch.Tensor]] = []
        self.refreshes = 0

    @property
    def nbytes(self) -> int:
        """Bytes of the merged copies (one per mergeable layer, in its base weight's dtype)."""
        return sum(m.base_layer.weight.numel() * m.base_layer.weight.element_size() for m in self.layers)

    def _allocate(self) -> None:
        for layer in self.layers:
            weight = torch.empty_like(layer.base_layer.weight, requires_grad=False)
            _mark_static(weight)
            self.weights.append(weight)
            # One forward object per layer for the whole run: compiled decoding sees the same function every step.
            self._forwards.append(_plain_forward(layer, weight))

    @torch.no_grad()
    def refresh(self) -> None:
        """Write each layer's `W + sum(scale * B @ A)` over its active adapters into its buffer, rounded once."""
        if not self.weights:
            self._allocate()
        for layer, weight in zip(self.layers, self.weights, strict=True):
            base = layer.base_layer.weight
            total = base.to(torch.float32)
            for name in layer.active_adapters:
                if name in layer.lora_A:
                    total = total + layer.get_delta_weight(name).to(device=base.device, dtype=torch.float32)
            weight.copy_(total)
        self.refreshes += 1

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within: every adapted layer whose adapter is on and unmerged runs on its fresh merged weight."""
        self.refresh()
        swapped = []
        for layer, forward in zip(self.layers, self._forwards, strict=True):
            if layer.disable_adapters or layer.merged:  # the adapter path already does the right thing
                continue
            layer.forward = forward
            swapped.append(layer)
        try:
            yield
        finally:
            for layer in swapped:
                del layer.forward


def _mark_static(weight: torch.Tensor) -> None:
    """Tell torch.compile the buffer keeps its address, so CUDA graphs read it in place instead of copying it."""
    try:
        from torch._dynamo import mark_static_address
    except ImportError:  # pragma: no cover - every torch the toolkit supports has it
        return
    mark_static_address(weight)


def use_merged_weights(model: nn.Module, config: Config) -> MergedWeights | None:
    """`method.generation_weights: merged` (GRPO, PPO): `model` samples from merged copies of its LoRA layers."""
    if getattr(config.method, "generation_weights", "adapter") != "merged":
        return None
    if config.distributed.sharding_stage == 3 and distributed.world_size() > 1:
        raise ConfigError(
            "method.generation_weights: merged keeps a whole copy of the adapted weights on every device, which "
            "sharded parameters (FSDP full or hybrid sharding, ZeRO-3) do not have. Use `generation_weights: "
            "adapter`, or DDP / `fsdp_sharding: shard_grad_op` / ZeRO-2."
        )
    return sample_from_merged(model)


def sample_from_merged(model: nn.Module) -> MergedWeights | None:
    """Make `model.generate` (and `generate_batch`) sample from merged LoRA weights; None when nothing can merge.

    The model's forward for training is untouched: the swap lasts exactly as long as each sampling call."""
    merged = MergedWeights(model)
    if not merged.layers:
        logger.warning(
            "method.generation_weights: merged: none of the %d adapter layers is plain LoRA on nn.Linear; sampling "
            "stays on the adapter path",
            merged.kept,
        )
        return None
    for name in PATCHED:
        original = getattr(model, name, None)
        if original is None:
            continue
        setattr(model, name, _within(merged, original))
    logger.info(
        "sampling from merged weights: %d LoRA layers, a %.2f GB copy kept on the device%s",
        len(merged.layers),
        merged.nbytes / 1e9,
        f"; {merged.kept} adapter layers stay unmerged (not plain LoRA on nn.Linear)" if merged.kept else "",
    )
    return merged


def _within(merged: MergedWeights, call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def sampling(*args: Any, **kwargs: Any) -> Any:
        with merged.active():
            return call(*args, **kwargs)

    return sampling
