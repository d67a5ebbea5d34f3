"""Continual pretraining: raw documents -> fixed-length token blocks with loss on every token -> trainer."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import PreparedData
from llm_finetuning.data.text import prepare_text
from llm_finetuning.methods.sft import build_trainer

__all__ = ["build_trainer", "prepare"]


def prepare(config: Config, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    return prepare_text(config.data, tokenizer, config.method.add_eos, config.training.seed)
