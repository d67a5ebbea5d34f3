"""Changes that make a config fit the chosen GPU, each re-estimated, and one combination that fits if any does.

Each suggestion is expressed as command-line overrides (`training.gradient_checkpointing=true`) or estimate
options (`--gpus 4 --sharding zero3`), so it can be pasted into `llmft train` or `llmft estimate`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llm_finetuning.config.adapters import FreezeAdapter, FullAdapter, LoraAdapter
from llm_finetuning.config.schema import Config
from llm_finetuning.estimate.gpus import GPU

# total bytes a variant needs on one device: (config, devices, sharding) -> bytes
Measure = Callable[[Config, int, str], float]
DEVICE_COUNTS = (2, 4, 8, 16, 32, 64)
MEANINGFUL = 0.99  # a change is listed when it saves at least 1% of the memory


@dataclass
class Suggestion:
    """One change and what it leads to."""

    label: str
    overrides: list[str] = field(default_factory=list)
    """Config overrides (`key=value`), as `llmft train CONFIG key=value` takes them."""
    options: list[str] = field(default_factory=list)
    """Options of `llmft estimate` (more devices, another GPU)."""
    total_bytes: float = 0.0
    fits: bool = False


def _apply(config: Config, overrides: list[str]) -> Config:
    """A copy of `config` with `section.key=value` overrides (values as the override strings say)."""
    variant = config.model_copy(deep=True)
    for item in overrides:
        key, _, value = item.partition("=")
        section, name = key.split(".", 1)
        if (section, name) == ("adapter", "method"):
            variant.adapter = LoraAdapter()
            continue
        parsed: object = {"true": True, "false": False}.get(value, value)
        if isinstance(parsed, str) and parsed.isdigit():
            parsed = int(parsed)
        setattr(getattr(variant, section), name, parsed)
    return variant


def _candidates(config: Config) -> list[tuple[str, list[str]]]:
    """Single changes that lower memory, cheapest in lost quality or speed first."""
    t, out = config.training, []
    if not t.gradient_checkpointing:
        out.append(
            ("turn on gradient checkpointing (about a third more compute)", ["training.gradient_checkpointing=true"])
        )
    if t.optimizer in ("adamw_torch", "adamw_torch_fused", "adafactor"):
        out.append(("8-bit AdamW states (bitsandbytes)", ["training.optimizer=adamw_8bit"]))
    if isinstance(config.adapter, FullAdapter | FreezeAdapter):
        out.append(("train a LoRA adapter instead of the weights", ["adapter.method=lora"]))
    elif isinstance(config.adapter, LoraAdapter) and config.model.quantization == "none":
        out.append(("load the base 4-bit (QLoRA)", ["model.quantization=nf4"]))
    return out


def _smaller_batches(config: Config) -> list[list[str]]:
    """Smaller micro-batches with more accumulation, keeping the effective batch (and its divisibility)."""
    b, ga = config.training.per_device_batch_size, config.training.gradient_accumulation_steps
    return [
        [f"training.per_device_batch_size={d}", f"training.gradient_accumulation_steps={ga * b // d}"]
        for d in range(b - 1, 0, -1)
        if b % d == 0
    ]


def suggest(
    config: Config, measure: Measure, budget: float, table: list[GPU], gpus: int, sharding: str
) -> list[Suggestion]:
    """Suggestions for a config that needs more than `budget` bytes per device."""
    out: list[Suggestion] = []
    current = measure(config, gpus, sharding)

    def add(label: str, overrides: list[str], options: list[str] | None = None, total: float | None = None) -> None:
        total = measure(_apply(config, overrides), gpus, sharding) if total is None else total
        if total < MEANINGFUL * current:
            out.append(Suggestion(label, overrides, options or [], total, total <= budget))

    for label, overrides in _candidates(config):
        add(label, overrides)
    for overrides in _smaller_batches(config):
        total = measure(_apply(config, overrides), gpus, sharding)
        if total <= budget or overrides[0].endswith("=1"):
            add("smaller micro-batches, more accumulation (same effective batch)", overrides, total=total)
            break
    length = config.data.max_length
    while length > 256:
        length //= 2
        total = measure(_apply(config, [f"data.max_length={length}"]), gpus, sharding)
        if total <= budget or length <= 256:
            add("shorter sequences (longer examples are cut)", [f"data.max_length={length}"], total=total)
            break
    for n in DEVICE_COUNTS:
        if n > gpus:
            total = measure(config, n, "zero3")
            if total <= budget:
                add(f"shard over {n} devices (ZeRO-3 / FSDP)", [], [f"--gpus {n}", "--sharding zero3"], total)
                break
    bigger = sorted((g for g in table if g.memory_bytes > budget), key=lambda g: g.memory_bytes)
    for gpu in bigger:
        if current <= gpu.memory_bytes:
            out.append(Suggestion(f"a GPU with more memory ({gpu.name})", [], [f"--gpu {gpu.name}"], current, True))
            break
    _combine(config, measure, budget, gpus, sharding, out)
    return out


def _combine(config: Config, measure: Measure, budget: float, gpus: int, sharding: str, out: list[Suggestion]) -> None:
    """Apply the single changes one after another until the config fits; add that combination if it does."""
    if any(s.fits and s.overrides for s in out):
        return
    overrides: list[str] = []
    variant = config
    steps = [o for _, o in _candidates(config)]
    if isinstance(config.adapter, FullAdapter | FreezeAdapter) and config.model.quantization == "none":
        steps.append(["model.quantization=nf4"])
    steps += _smaller_batches(config)[-1:]
    for step in steps:
        overrides += step
        variant = _apply(config, overrides)
        total = measure(variant, gpus, sharding)
        if total <= budget:
            out.append(Suggestion("all of these together", list(overrides), [], total, True))
            return
