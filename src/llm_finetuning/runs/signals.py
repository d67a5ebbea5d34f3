"""SIGINT/SIGTERM during training: save a checkpoint, stop cleanly, mark the run interrupted."""

from __future__ import annotations

import logging
import signal
from types import FrameType
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)


class GracefulStop(TrainerCallback):
    """First signal: finish the current step, checkpoint, stop. Second signal: stop at once."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> GracefulStop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum
        logger.warning(
            "Received %s: saving a checkpoint after this step, then stopping. Signal again to stop at once.",
            signal.Signals(signum).name,
        )

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self.requested is not None:
            control.should_save = True
            control.should_training_stop = True
        return control
