"""One module per training method family; each turns the config into data and a trainer, nothing else.

A method module provides `prepare(config, tokenizer) -> PreparedData` and `build_trainer(...)`; `Method` adds
whether it needs a chat template and which head it trains (a causal LM, or a sequence classifier for rewards).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from llm_finetuning.methods import classify, embedding, grpo, multihead, preference, pretrain, reranker, rlhf, sft


@dataclass(frozen=True)
class Method:
    module: ModuleType
    needs_chat_template: bool = True
    head: str = "causal_lm"
    runs_itself: bool = False
    """Models that read text (embedding, reranker, classify, multi-head): the module's `train_run` drives its own
    trainer inside the run directory, instead of the causal-LM path's `prepare` and `build_trainer`."""

    def train_run(self, *args):  # noqa: ANN002, ANN201
        return self.module.train_run(*args)

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
    "embedding": Method(embedding, needs_chat_template=False, head="embedding", runs_itself=True),
    "reranker": Method(reranker, needs_chat_template=False, head="cross_encoder", runs_itself=True),
    "classify": Method(classify, needs_chat_template=False, head="sequence_classification", runs_itself=True),
    "multi_head": Method(multihead, needs_chat_template=False, head="multi_head", runs_itself=True),
}
