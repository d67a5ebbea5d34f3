"""One module per training method; each turns the config into a trainer and nothing else."""

from __future__ import annotations

from collections.abc import Callable

from llm_finetuning.methods import sft

TRAINER_BUILDERS: dict[str, Callable] = {"sft": sft.build_trainer}
