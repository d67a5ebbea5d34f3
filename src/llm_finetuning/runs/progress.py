"""Training progress: transformers' progress bar on stderr, with its log records sent to the logger.

transformers' own progress callback writes every log record (`{'loss': ...}`) to stdout with `print`-like calls; the
library logs and never prints, so the records go to the `llm_finetuning` logger instead (and to `metrics.jsonl`
through `MetricsLogger`).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import ProgressCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

# Summaries transformers adds at the end of training that say nothing a user reads the log for.
_SKIPPED = {"total_flos"}


class LoggedProgress(ProgressCallback):
    """transformers' progress bars, with each log record logged as one line instead of printed."""

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
        logger.info("step %d/%d: %s", state.global_step, state.max_steps, format_record(logs))


def format_record(logs: dict[str, Any]) -> str:
    """`loss 1.234 · learning_rate 2e-05 · ...`: four significant digits, in the trainer's order."""
    parts = []
    for key, value in logs.items():
        if key in _SKIPPED:
            continue
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{key} {shown}")
    return " · ".join(parts)


def use_logged_progress(trainer: Any) -> None:
    """Swap transformers' progress callback on `trainer` for `LoggedProgress` (a no-op for trainers without one)."""
    handler = getattr(trainer, "callback_handler", None)
    if handler is None:
        return
    if any(type(callback) is ProgressCallback for callback in handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LoggedProgress)
