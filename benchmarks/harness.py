"""The benchmark harness: time training steps, count real tokens, read peak memory, write JSON and markdown.

A scenario runs a real trainer (ours, plain TRL or plain transformers) with a `StepMeter` callback. The meter:
- times every optimizer step from the end of the previous one (data loading, forward, backward, optimizer);
- counts the tokens of every training forward without padding (`count_tokens`): a padded batch counts its
  attention mask, a padding-free batch its real positions;
- drops the warm-up steps and keeps the rest.

`summarize` turns the kept steps into the figures the tables show: the median step time, the median of the
per-step token rates, the padding fraction, and MFU when the model's flops per step and a peak are known. Ratios are
always to a baseline measured in the same run, so the machine's speed and load cancel out as far as they can.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

IGNORE_INDEX = -100


# ------------------------------------------------------------------------------------------------ counting
def sequence_lengths(inputs: Mapping[str, Any], pad_token_id: int | None = None) -> list[int]:
    """Lengths of the real sequences in one batch, without padding.

    A padded batch (`attention_mask`) gives one length per row. A padding-free batch (one row, `position_ids`
    restarting at 0 for every example) gives one length per example. Otherwise each row counts its non-pad tokens.
    """
    input_ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is not None and getattr(mask, "dim", lambda: 0)() == 2:
        return [int(n) for n in mask.sum(dim=1).tolist()]
    positions = inputs.get("position_ids")
    if positions is not None:
        import torch

        rows = positions.reshape(-1, positions.shape[-1])
        starts = rows == 0
        starts[:, 0] = True  # every row starts a sequence, whatever its first position
        flat = starts.flatten().nonzero().flatten().cpu()
        ends = torch.cat([flat[1:], torch.tensor([rows.numel()])])
        return [int(n) for n in (ends - flat).tolist()]
    if pad_token_id is not None:
        return [int(n) for n in (input_ids != pad_token_id).sum(dim=1).tolist()]
    return [int(input_ids.shape[-1])] * int(input_ids.shape[0])


def count_tokens(inputs: Mapping[str, Any], pad_token_id: int | None = None) -> tuple[int, int, int]:
    """(real tokens, positions computed, sum of squared sequence lengths) of one batch.

    Real tokens exclude padding; positions computed include it (their ratio is the padding fraction); the sum of
    squares is what causal attention costs.
    """
    lengths = sequence_lengths(inputs, pad_token_id)
    return sum(lengths), int(inputs["input_ids"].numel()), sum(n * n for n in lengths)


def loss_tokens(inputs: Mapping[str, Any]) -> int | None:
    """Positions whose next token is a label (what the loss needs logits for), or None without labels."""
    labels = inputs.get("labels")
    if labels is None or getattr(labels, "dim", lambda: 0)() != 2:
        return None
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


# ------------------------------------------------------------------------------------------------- memory
def reset_peak_memory() -> int:
    """Free what can be freed, reset the process's peak RSS (and CUDA's peak), and return the RSS now in bytes."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so the next peak starts low
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM to the current RSS
    except OSError:
        pass
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return _status_bytes("VmRSS")


def peak_memory() -> dict[str, int | None]:
    """Peak RSS since the last reset, and CUDA's peak allocated memory (None without CUDA), in bytes."""
    import torch

    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {"peak_rss": _status_bytes("VmHWM"), "cuda_peak": cuda}


def _status_bytes(key: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -------------------------------------------------------------------------------------------------- meter
class StepMeter(TrainerCallback):
    """A transformers callback that times optimizer steps and counts the real tokens each one trained on.

    Each step has a wall-clock time and the process's CPU time. On a machine shared with other jobs the CPU time of
    a single-threaded run is the steadier figure (time spent waiting for a core is not in it).

    Tokens are read by a forward pre-hook on the model, counted only for training forwards (module in train mode
    and gradients enabled), so evaluation and generation do not count.
    """

    def __init__(
        self,
        warmup: int,
        pad_token_id: int | None = None,
        clock: Any = time.perf_counter,
        cpu_clock: Any = time.process_time,
    ) -> None:
        self.warmup = warmup
        self.pad_token_id = pad_token_id
        self.clock = clock
        self.cpu_clock = cpu_clock
        self.steps: list[dict[str, float]] = []
        self._handle: Any = None
        self._last = 0.0
        self._last_cpu = 0.0
        self._pending = [0, 0, 0, 0]
        self._sync = lambda: None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        import torch

        if torch.cuda.is_available():
            self._sync = torch.cuda.synchronize
        if model is not None and self._handle is None:
            self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._sync()
        self._last, self._last_cpu = self.clock(), self.cpu_clock()

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return
        inputs = dict(kwargs)
        if "input_ids" not in inputs and args:
            inputs["input_ids"] = args[0]
        if inputs.get("input_ids") is None:
            return
        for index, value in enumerate(count_tokens(inputs, self.pad_token_id)):
            self._pending[index] += value
        labelled = loss_tokens(inputs)
        self._pending[3] += labelled if labelled is not None else 0

    def record(self) -> None:
        """Close the current step: its time since the last one, and the tokens counted meanwhile."""
        self._sync()
        now, cpu = self.clock(), self.cpu_clock()
        tokens, slots, squares, labelled = self._pending
        self.steps.append(
            {
                "seconds": now - self._last,
                "cpu_seconds": cpu - self._last_cpu,
                "tokens": tokens,
                "slots": slots,
                "squares": squares,
                "loss_tokens": labelled,
            }
        )
        self._pending = [0, 0, 0, 0]
        self._last, self._last_cpu = now, cpu

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.record()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def measured(self) -> list[dict[str, float]]:
        """The steps after warm-up."""
        return self.steps[self.warmup :]


# ------------------------------------------------------------------------------------------------ figures
def train_flops(
    tokens: float, squares: float, frozen: int, trained: int, layers: int, hidden: int, attention_ratio: float = 1.0
) -> float:
    """Model flops of one training pass: 6 per trained and 4 per frozen matmul weight per token (forward 2,
    input gradients 2, weight gradients 2 only where they train), plus causal attention.

    Causal attention of a sequence of s tokens costs 2*hidden*s*(s+1)/2 multiply-adds in QK^T and as many in AV per
    layer: 2*hidden*s^2 flops forward, times 3 with the backward. `squares` is the sum of s^2 over sequences.
    `attention_ratio` scales it for grouped or narrow heads (heads*head_dim / hidden).
    """
    linear = (6 * trained + 4 * frozen) * tokens
    attention = 6 * layers * hidden * attention_ratio * squares
    return linear + attention


def summarize(
    steps: Sequence[Mapping[str, float]],
    flops_per_step: Any = None,
    peak_flops: float | None = None,
    useful_flops_per_step: Any = None,
):
    """Median step time, median tokens/s over steps, padding fraction, and MFU when flops and a peak are given.

    `flops_per_step(step)` returns the model flops of one measured step (see `train_flops`); `useful_flops_per_step`
    the part the loss needs (the output head only where there is a label), for `useful_mfu`. Steps that carry
    `cpu_seconds` also give the same figures per CPU-second (`cpu_tokens_per_s`, `cpu_mfu`).
    """
    if not steps:
        raise ValueError("no measured steps: raise the number of steps above the warm-up")
    seconds = [s["seconds"] for s in steps]
    rates = [s["tokens"] / s["seconds"] for s in steps]
    cpu = [s["cpu_seconds"] for s in steps if s.get("cpu_seconds")]
    tokens = sum(s["tokens"] for s in steps)
    slots = sum(s["slots"] for s in steps)
    out: dict[str, Any] = {
        "steps": len(steps),
        "median_step_s": statistics.median(seconds),
        "tokens_per_s": statistics.median(rates),
        "tokens_per_step": tokens / len(steps),
        "padding_fraction": 1 - tokens / slots if slots else 0.0,
        "spread": (max(rates) - min(rates)) / statistics.median(rates) if rates else 0.0,
    }
    if len(cpu) == len(steps):
        out["median_step_cpu_s"] = statistics.median(cpu)
        out["cpu_tokens_per_s"] = statistics.median(s["tokens"] / s["cpu_seconds"] for s in steps)
    if flops_per_step is not None:
        achieved = statistics.median(flops_per_step(s) / s["seconds"] for s in steps)
        out["model_flops_per_s"] = achieved
        if peak_flops:
            out["mfu"] = achieved / peak_flops
            if "cpu_tokens_per_s" in out:
                out["cpu_mfu"] = statistics.median(flops_per_step(s) / s["cpu_seconds"] for s in steps) / peak_flops
            if useful_flops_per_step is not None:
                useful = statistics.median(useful_flops_per_step(s) / s["seconds"] for s in steps)
                out["useful_mfu"] = useful / peak_flops
    return out


@dataclass
class Result:
    """One scenario's figures, with what it ran and against which baseline."""

    name: str
    group: str
    baseline: str
    settings: dict[str, Any]
    figures: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None
    steps: list[dict[str, float]] = field(default_factory=list)  # the measured steps the figures come from

    def ratio(self, results: Sequence[Result], key: str = "tokens_per_s") -> float | None:
        """Tokens/s (or another figure) relative to the group's baseline in the same run."""
        base = next((r for r in results if r.group == self.group and r.name == self.baseline), None)
        if base is None or self.skipped or base.skipped or key not in self.figures or key not in base.figures:
            return None
        return self.figures[key] / base.figures[key]


# ------------------------------------------------------------------------------------------------ machine
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, GPU, library versions, threads and the load when it started."""
    import importlib.metadata as metadata

    import torch

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    flags = cpu_flags()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "bf16_native": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {
            name: version(name)
            for name in ("torch", "transformers", "trl", "peft", "accelerate", "liger-kernel", "flash-attn", "vllm")
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# ------------------------------------------------------------------------------------------------- output
def write_json(path: Path, info: Mapping[str, Any], results: Sequence[Result], extra: Mapping[str, Any] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": dict(info),
        **dict(extra),
        "results": [
            {**asdict(r), "ratio": r.ratio(results), "cpu_ratio": r.ratio(results, "cpu_tokens_per_s")} for r in results
        ],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown_table(results: Sequence[Result], cpu_time: bool = False) -> str:
    """One row per scenario, grouped; ratios are to the group's baseline (marked `=`).

    With `cpu_time`, two more columns give tokens per CPU-second and its ratio (see `StepMeter`). `MFU` counts the
    model's nominal flops (every matmul weight on every real token), `MFU useful` only what the loss needs (the output
    head on labelled positions). `RSS +MiB` is the peak resident memory above the process's at the start of the
    scenario (model, optimizer, activations).
    """
    head = "| group | scenario | tokens/s | ratio |"
    rule = "|---|---|---:|---:|"
    if cpu_time:
        head += " tokens/CPU-s | ratio |"
        rule += "---:|---:|"
    head += " step s | tokens/step | padding | MFU | MFU useful | RSS +MiB | GPU peak MiB |"
    rule += "---:|---:|---:|---:|---:|---:|---:|"
    lines = [head, rule]
    for r in results:
        if r.skipped:
            lines.append(f"| {r.group} | {r.name} | skipped: {r.skipped} |" + " |" * (head.count("|") - 4))
            continue
        f, m = r.figures, r.memory
        base = r.name == r.baseline
        row = f"| {r.group} | {r.name} | {f['tokens_per_s']:,.0f} | {'=' if base else _fmt(r.ratio(results), '.2f')} |"
        if cpu_time:
            cpu_ratio = "=" if base else _fmt(r.ratio(results, "cpu_tokens_per_s"), ".2f")
            row += f" {_fmt(f.get('cpu_tokens_per_s'), ',.0f')} | {cpu_ratio} |"
        mfu, useful = f.get("mfu"), f.get("useful_mfu")
        peak = m.get("peak_rss_delta", m.get("peak_rss"))
        cuda = m.get("cuda_peak")
        row += (
            f" {f['median_step_s']:.3f} | {f['tokens_per_step']:,.0f} | {100 * f['padding_fraction']:.0f}% | "
            f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | {'-' if useful is None else f'{100 * useful:.1f}%'} | "
            f"{_fmt(peak and peak / 2**20, ',.0f')} | {_fmt(cuda and cuda / 2**20, ',.0f')} |"
        )
        lines.append(row)
    return "\n".join(lines) + "\n"


def machine_line(info: Mapping[str, Any]) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    gpu = f"; GPU {info['gpu']}" if info.get("gpu") else ""
    end = f", at end {info['load_average_end'][0]}" if info.get("load_average_end") else ""
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['torch_threads']} torch threads), native bf16: "
        f"{'yes' if info['bf16_native'] else 'no'}{gpu}; load average at start {info['load_average'][0]}{end}; "
        f"python {info['python']}, {versions}; {info['date']}"
    )


def read_json(path: Path) -> tuple[dict[str, Any], list[Result]]:
    """The machine and the results of a JSON file written by `write_json`."""
    payload = json.loads(Path(path).read_text())
    fields = set(Result.__dataclass_fields__)
    results = [Result(**{k: v for k, v in r.items() if k in fields}) for r in payload["results"]]
    return payload["machine"], results


if __name__ == "__main__":  # render a results file again: python benchmarks/harness.py results/x.json
    import sys

    for name in sys.argv[1:]:
        machine_info, rows = read_json(Path(name))
        print(machine_line(machine_info) + "\n")
        print(markdown_table(rows, cpu_time=not machine_info.get("gpu")))
