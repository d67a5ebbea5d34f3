"""`metrics.jsonl`: one JSON line per logged step, written as training goes."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


class MetricsLogger(TrainerCallback):
    """Append every log event of the trainer (train loss, eval loss, learning rate...) to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not logs or not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": state.epoch}
        record.update({k: _clean(v) for k, v in logs.items()})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line cut off by a process killed while writing it is skipped."""
    if not path.is_file():
        return []
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class ProgressFile(TrainerCallback):
    """`progress.json`: where the run is (step of max_steps, seconds so far, device memory), rewritten after every
    optimizer step; what `llmft ui` reads for progress and the time left. Kept out of metrics.jsonl, whose records
    compare equal between a resumed and an uninterrupted run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._started = time.monotonic()
        self._first_step: int | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        if self._first_step is None:  # a resumed run starts at its checkpoint's step
            self._first_step, self._started = state.global_step - 1, time.monotonic()
        elapsed = time.monotonic() - self._started
        done = state.global_step - self._first_step
        rate = done / elapsed if elapsed > 0 else None
        left = (state.max_steps - state.global_step) / rate if rate and state.max_steps else None
        record = {
            "step": state.global_step,
            "max_steps": state.max_steps,
            "epoch": state.epoch,
            "seconds_per_step": 1 / rate if rate else None,
            "eta_s": left,
            "updated_at": time.time(),
            **device_memory(kwargs.get("model")),
        }
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


def device_memory(model: Any = None) -> dict[str, Any]:
    """Peak memory of the device the model trains on: CUDA's allocator peak, else this process's peak resident
    memory. Never raises: progress reporting must not stop a run."""
    try:
        parameter = next(model.parameters()) if model is not None else None
        if parameter is not None and parameter.device.type == "cuda":
            import torch

            return {
                "memory_gib": torch.cuda.max_memory_allocated(parameter.device) / 2**30,
                "memory_of": torch.cuda.get_device_name(parameter.device),
            }
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    except Exception:  # no parameters, no resource module (Windows), a device that cannot say
        return {}
    return {"memory_gib": peak / 2**30, "memory_of": "process (CPU)"}
