"""Where the toolkit keeps what it computes once and reuses across runs (e.g. reference log-probabilities)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`LLMFT_CACHE_DIR`, or `~/.cache/llm_finetuning`."""
    return Path(os.environ.get("LLMFT_CACHE_DIR", Path.home() / ".cache" / "llm_finetuning"))
