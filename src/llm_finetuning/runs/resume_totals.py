"""Whole-run figures for a resumed run.

The trainer's final `train_loss` and `train_runtime` cover only the steps of the `train()` call that ended the
run, and TRL's `num_tokens` counter starts again at 0: after a resume they describe the last session, not the run.
The pieces for the whole run come from the checkpoint it resumed from: its `trainer_state.json` holds the loss
logged for every window before it and TRL's token count at its last log, and `llmft_elapsed.json` (written into
every checkpoint by `ElapsedTime`) the training seconds of the sessions before.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

ELAPSED_FILE = "llmft_elapsed.json"


class ElapsedTime(TrainerCallback):
    """Writes the training seconds up to each checkpoint, over every session of the run, into the checkpoint."""

    def __init__(self, prior_seconds: float = 0.0) -> None:
        self.prior = prior_seconds
        self.started: float | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return self.prior + (time.perf_counter() - self.started if self.started is not None else 0.0)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            (folder / ELAPSED_FILE).write_text(json.dumps({"train_seconds": self.elapsed()}), encoding="utf-8")


@dataclass(frozen=True)
class Prior:
    """What the sessions before the resume did, read from the checkpoint."""

    step: int
    loss_sum: float
    """Sum of the per-step losses over the logged windows (window mean x window length)."""
    loss_steps: int
    """Steps those windows cover (the checkpoint's step when logging lines up with saving)."""
    num_tokens: float | None
    seconds: float | None


def read_prior(checkpoint: str | Path) -> Prior:
    folder = Path(checkpoint)
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    step = int(state.get("global_step", 0))
    loss_sum, covered, tokens = 0.0, 0, None
    for entry in state.get("log_history", []):
        at = entry.get("step")
        if not isinstance(at, int) or at > step:
            continue
        if isinstance(entry.get("loss"), int | float) and at > covered:
            loss_sum += float(entry["loss"]) * (at - covered)
            covered = at
        if isinstance(entry.get("num_tokens"), int | float):
            tokens = float(entry["num_tokens"])
    try:
        seconds = float(json.loads((folder / ELAPSED_FILE).read_text(encoding="utf-8"))["train_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        seconds = None  # a checkpoint from before this file existed
    return Prior(step, loss_sum, covered, tokens, seconds)


def restore_token_count(trainer: Any, prior: Prior) -> None:
    """Continue TRL's token counter from the checkpoint, so logged and final `num_tokens` cover the whole run."""
    if prior.num_tokens is not None and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = prior.num_tokens


def whole_run(metrics: dict[str, Any], prior: Prior, global_step: int) -> dict[str, Any]:
    """The final metrics of a resumed run with `train_loss` and `train_runtime` over the whole run; the last
    session's own values are kept as `session_train_loss` and `session_train_runtime`."""
    out = dict(metrics)
    out["resumed_from_step"] = prior.step
    session_steps = global_step - prior.step
    if isinstance(metrics.get("train_loss"), int | float) and session_steps > 0 and global_step > 0:
        prior_sum = prior.loss_sum
        if prior.loss_steps < prior.step:
            # Steps after the last log before the checkpoint: their losses were never logged; take the mean.
            mean = prior.loss_sum / prior.loss_steps if prior.loss_steps else float(metrics["train_loss"])
            prior_sum += mean * (prior.step - prior.loss_steps)
            out["train_loss_estimated_steps"] = prior.step - prior.loss_steps
        out["session_train_loss"] = metrics["train_loss"]
        out["train_loss"] = (prior_sum + float(metrics["train_loss"]) * session_steps) / global_step
    if isinstance(metrics.get("train_runtime"), int | float):
        out["session_train_runtime"] = metrics["train_runtime"]
        if prior.seconds is not None:
            out["train_runtime"] = round(prior.seconds + float(metrics["train_runtime"]), 4)
        else:
            logger.warning("The checkpoint has no %s: train_runtime covers the resumed session only", ELAPSED_FILE)
    return out
