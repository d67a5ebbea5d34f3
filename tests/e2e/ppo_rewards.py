"""Programmatic rewards for the PPO tests (imported by `method.reward_function`)."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np


def digits(prompts: list[str], completions: list[str], **extras: object) -> list[float]:
    """The fraction of completion characters that are ASCII digits (about 4% for a random byte-level model)."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def _hook_from_environment() -> dict[str, Any]:
    """`PPO_TEST_HOOK=<call>:<action>[:<file>]` sets the hook of a training subprocess."""
    at, action, *file = os.environ.get("PPO_TEST_HOOK", "0:none").split(":", 2)
    return {"calls": 0, "at": int(at), "action": action, "file": file[0] if file else None}


HOOK = _hook_from_environment()
"""What `noisy_digits` does at its `at`-th call (one call per PPO step): `raise` (a crash), `sigterm` (a graceful
stop: the step completes, a checkpoint is saved), `hang` (write `file`, then wait to be killed) or `none`."""


def noisy_digits(prompts: list[str], completions: list[str], **extras: object) -> list[float]:
    """`digits` plus a little noise from Python's and NumPy's global generators, so a resumed run repeats an
    uninterrupted one only if their states were restored too; runs `HOOK` first."""
    HOOK["calls"] += 1
    if HOOK["calls"] == HOOK["at"]:
        if HOOK["action"] == "raise":
            raise RuntimeError(f"simulated crash in PPO step {HOOK['calls']}")
        if HOOK["action"] == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        if HOOK["action"] == "hang":
            Path(HOOK["file"]).write_text(str(HOOK["calls"]))
            time.sleep(600)
    noise = [0.01 * random.random() + 0.01 * float(np.random.rand()) for _ in completions]
    return [score + extra for score, extra in zip(digits(prompts, completions), noise, strict=True)]
