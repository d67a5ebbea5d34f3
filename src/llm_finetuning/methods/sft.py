"""Supervised fine-tuning: config -> TRL `SFTTrainer`, nothing else.

The data arrives tokenized, with labels that are -100 outside completions (see `data/tokenize.py`), so TRL
uses them as they are; truncation has already happened and been counted.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import SFTConfig, SFTTrainer

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import PreparedData
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.runs.rundir import RunDir


def build_trainer(
    config: Config,
    run: RunDir,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    callbacks: list[TrainerCallback],
) -> SFTTrainer:
    arguments: dict[str, Any] = training_arguments(config, run, has_eval=data.eval is not None)
    arguments.update(
        max_length=None,  # examples are already cut to data.max_length, and the cuts were counted
        packing=False,
        dataset_num_proc=None,
        shuffle_dataset=False,  # the trainer's sampler shuffles every epoch with training.seed
    )
    args = SFTConfig(**apply_extra(arguments, config.training.extra, SFTConfig))
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
