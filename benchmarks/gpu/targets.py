"""The GPU targets of issue 18, judged from the check's scenario results (pure: no torch, tested on CPU).

Each scenario result is a dict as `scenario.py` writes it: `figures` (tokens_per_s, mfu, ...), `memory`
(cuda_peak bytes), `skipped` (a reason, or None), and for GRPO `figures.split_s.generation`. A target whose
scenarios did not run is `not measured`, which fails the check as a missed target does: the check exists to
measure them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Results = Mapping[str, Mapping[str, Any]]  # scenario key ("llmft-lora@1b") -> result
FAST_GENERATION = ("gen-static", "gen-static-merged")  # GRPO generation options judged against gen-batched


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    value: str
    met: bool | None  # None: not measured

    @property
    def status(self) -> str:
        return "not measured" if self.met is None else ("met" if self.met else "MISSED")


def _figure(results: Results, key: str, figure: str) -> float | None:
    result = results.get(key)
    if not result or result.get("skipped"):
        return None
    value = result.get("figures", {}).get(figure)
    return float(value) if isinstance(value, int | float) else None


def _peak(results: Results, key: str) -> float | None:
    result = results.get(key)
    if not result or result.get("skipped"):
        return None
    value = (result.get("memory") or {}).get("cuda_peak")
    return float(value) if value else None


def _generation(results: Results, key: str) -> float | None:
    result = results.get(key)
    if not result or result.get("skipped"):
        return None
    value = (result.get("figures", {}).get("split_s") or {}).get("generation")
    return float(value) if value else None


def _ratio(name: str, goal: float, top: float | None, bottom: float | None, unit: str = "x") -> Target:
    if top is None or bottom is None or bottom == 0:
        return Target(name, f">= {goal:g}{unit}", "-", None)
    value = top / bottom
    return Target(name, f">= {goal:g}{unit}", f"{value:.2f}{unit}", value >= goal)


def _at_least(name: str, goal: float, value: float | None, percent: bool = True) -> Target:
    shown = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3g}")
    if value is None:
        return Target(name, f">= {shown(goal)}", "-", None)
    return Target(name, f">= {shown(goal)}", shown(value), value >= goal)


def _at_most(name: str, goal: float, value: float | None, fmt: Callable[[float], str]) -> Target:
    if value is None:
        return Target(name, f"<= {fmt(goal)}", "-", None)
    return Target(name, f"<= {fmt(goal)}", fmt(value), value <= goal)


def evaluate(results: Results, extras: Mapping[str, Any] | None = None) -> list[Target]:
    """Every target of the issue, from the results of one check run (`extras`: correctness and estimate)."""
    extras = extras or {}
    tps = lambda key: _figure(results, key, "tokens_per_s")  # noqa: E731
    mfu = lambda key: _figure(results, key, "mfu")  # noqa: E731
    targets = [
        _ratio("1B LoRA: llmft defaults vs plain HF+PEFT padded", 1.5, tps("llmft-lora@1b"), tps("hf-peft-padded@1b")),
        _ratio("1B LoRA: llmft defaults vs TRL SFTTrainer defaults", 1.3, tps("llmft-lora@1b"), tps("trl-sft@1b")),
        _at_least("3B LoRA MFU (llmft defaults)", 0.40, mfu("llmft-lora@3b")),
        _at_least("3B full MFU (llmft defaults)", 0.45, mfu("llmft-full@3b")),
        _ratio("1B: LoRA tokens/s vs full tokens/s", 1.0, tps("llmft-lora@1b"), tps("llmft-full@1b")),
        _ratio("3B: LoRA tokens/s vs full tokens/s", 1.0, tps("llmft-lora@3b"), tps("llmft-full@3b")),
    ]
    ours, plain = _peak(results, "llmft-lora@1b"), _peak(results, "hf-peft-padded@1b")
    share = ours / plain if ours is not None and plain else None
    targets.append(_at_most("1B LoRA peak memory vs plain HF+PEFT padded", 0.60, share, lambda v: f"{100 * v:.0f}%"))
    for adapter in ("lora", "full"):
        liger, base = f"llmft-{adapter}-liger@1b", f"llmft-{adapter}@1b"
        targets.append(_ratio(f"1B {adapter}: Liger vs without", 1.15, tps(liger), tps(base)))
        less = _peak(results, liger), _peak(results, base)
        fraction = less[0] / less[1] if None not in less and less[1] else None
        targets.append(_at_most(f"1B {adapter}: Liger peak memory vs without", 1.0, fraction, lambda v: f"{v:.2f}x"))
    batched = _generation(results, "grpo-gen-batched@1b")
    # The fastest of the generation options measured (static cache + compile, with or without merged weights).
    options = {key: _generation(results, f"grpo-{key}@1b") for key in FAST_GENERATION}
    measured = {key: seconds for key, seconds in options.items() if seconds}
    best = min(measured, key=measured.__getitem__) if measured else None
    name = "GRPO 1B: generation speed-up over batched generation" + (f" ({best})" if best else "")
    targets.append(_ratio(name, 3.0, batched, measured.get(best)))
    errors = extras.get("estimate_errors")  # relative errors of the 1B estimate cases
    worst = max((abs(e) for e in errors), default=None) if errors else None
    percent = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    targets.append(_at_most("1B memory estimate vs measured peak (worst case)", 0.15, worst, percent))
    loss = extras.get("packed_loss_relative_difference")
    targets.append(_at_most("packed vs unpacked loss, bf16 (relative)", 1e-2, loss, lambda v: f"{v:.2e}"))
    leak = extras.get("cross_example_difference")
    targets.append(_at_most("packed example's logits vs alone (relative)", 1e-2, leak, lambda v: f"{v:.2e}"))
    calls = extras.get("kernel_calls_per_forward")
    layers = extras.get("layers")
    targets.append(
        Target(
            "one attention call per layer on a packed row",
            f"= {layers} (layers)" if layers else "= layers",
            "-" if calls is None else str(calls),
            None if calls is None or not layers else calls == layers,
        )
    )
    return targets


def markdown(targets: list[Target]) -> str:
    lines = ["| target | goal | measured | status |", "|---|---|---:|---|"]
    lines += [f"| {t.name} | {t.goal} | {t.value} | {t.status} |" for t in targets]
    return "\n".join(lines) + "\n"
