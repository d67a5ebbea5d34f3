"""One module per training method family; each turns the config into data and a trainer, nothing else.

A method module provides `prepare(config, tokenizer) -> PreparedData` and `build_trainer(...)`; `Method` adds
whether it needs a chat template and which head it trains (a causal LM, or a sequence classifier for rewards).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from llm_finetuning.methods import grpo, preference, pretrain, rlhf, sft


@dataclass(frozen=True)
class Method:
    module: ModuleType
    needs_chat_template: bool = True
    head: str = "causal_lm"

    def prepare(self, *args):  # noqa: ANN002, ANN201 - forwarded as is
        return self.module.prepare(*args)

    def build_trainer(self, *args):  # noqa: ANN002, ANN201
        return self.module.build_trainer(*args)


METHODS: dict[str, Method] = {
    "sft": Method(sft),
    "pretrain": Method(pretrain, needs_chat_template=False),
    "reward": Method(preference, head="sequence_classification"),
    "dpo": Method(preference),
    "orpo": Method(preference),
    "kto": Method(preference),
    "ppo": Method(rlhf),
    "grpo": Method(grpo),
}
