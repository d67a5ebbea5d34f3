"""One module per training method; each turns the config into data and a trainer, nothing else.

A method module provides `prepare(config, tokenizer) -> PreparedData`, `build_trainer(...)` and
`NEEDS_CHAT_TEMPLATE`.
"""

from __future__ import annotations

from types import ModuleType

from llm_finetuning.methods import pretrain, sft

METHODS: dict[str, ModuleType] = {"sft": sft, "pretrain": pretrain}
