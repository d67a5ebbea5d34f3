"""Where this process stands in a multi-process run, and the few synchronisation points the run needs.

A run started by `llmft train --nproc N` has N copies of the training path. Only the main process (rank 0)
writes the run directory (config, manifest, metrics, plots, `final/`); the trainer writes checkpoints from the
main process too. The others wait for it where they need what it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True in a single-process run and in the main process (rank 0) of a multi-process one."""
    return rank() == 0


def init(timeout_minutes: int = 30) -> None:
    """Join the process group early (the trainer would join it later), so the run directory can be written
    by the main process before the others read it. Nothing happens in a single-process run."""
    if world_size() <= 1 or torch.distributed.is_initialized():
        return
    from accelerate import PartialState

    # The same state transformers' TrainingArguments creates: gloo on CPU, nccl on CUDA devices.
    PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(minutes=timeout_minutes))


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block in the main process first (it writes caches and the run directory), then in the others."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
