"""Supervised fine-tuning: config -> tokenized chat data -> TRL `SFTTrainer`, nothing else.

The data arrives tokenized, with labels that are -100 outside completions (see `data/tokenize.py`), so TRL
uses them as they are; truncation has already happened and been counted. With `data.packing`, TRL packs the
examples (best-fit decreasing) and its padding-free collator restarts positions per example, which the model's
attention turns into a block-diagonal mask. Without packing, `data.padding_free` puts each batch in one row the
same way. Either way, with `model.attn_implementation: auto` the attention runs per example (`varlen_attention`).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import SFTConfig, SFTTrainer

from llm_finetuning.config.schema import PROMPT_LEARNING, Config
from llm_finetuning.data.pipeline import PreparedData, prepare_data
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.models.lm_head import use_plain_lm_head
from llm_finetuning.models.packing import packed_attention_is_isolated
from llm_finetuning.models.varlen_attention import use_varlen_attention
from llm_finetuning.runs.rundir import RunDir


def prepare(config: Config, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    return prepare_data(config.data, tokenizer, config.method.train_on_prompt, config.training.seed)


def build_trainer(
    config: Config,
    run: RunDir,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    callbacks: list[TrainerCallback],
) -> SFTTrainer:
    arguments: dict[str, Any] = training_arguments(config, run, has_eval=data.eval is not None)
    packing = config.data.packing
    padding_free = not packing and removes_padding(config, model)
    if packing and config.model.attn_implementation == "auto" and config.model.backend != "unsloth":
        use_varlen_attention(model)
    arguments.update(
        # Unpacked examples are already cut to data.max_length (and counted); packing fills rows up to it.
        max_length=config.data.max_length if packing else None,
        packing=packing,
        packing_strategy="bfd",
        padding_free=padding_free,
        eval_packing=packing,
        dataset_num_proc=None,
        shuffle_dataset=False,  # the trainer's sampler shuffles every epoch with training.seed
    )
    args = SFTConfig(**apply_extra(arguments, config.training.extra, SFTConfig))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    use_plain_lm_head(trainer)  # TRL's fused head is slow without Triton (CPU); same loss, computed plainly
    return trainer


def removes_padding(config: Config, model: PreTrainedModel) -> bool:
    """Whether unpacked batches go padding-free: the same examples in one row, each attended to on its own.

    Only where the attention runs per example (otherwise one long row costs more attention than the padding saves)
    and keeps examples apart; prompt-learning adapters prepend their tokens once per row, so they keep padding, and
    pretraining blocks all have the same length (nothing to remove).
    """
    if not config.data.padding_free or config.adapter.method in PROMPT_LEARNING or config.method.name == "pretrain":
        return False
    if config.training.per_device_batch_size < 2:  # nothing to pad
        return False
    if config.model.quantization != "none" and not torch.cuda.is_available():
        # bitsandbytes repacks 4-bit weights in place at an inference forward on CPU, which the isolation check is
        return False
    if config.model.backend == "unsloth":  # Unsloth's attention keeps packed examples apart itself (checked)
        return packed_attention_is_isolated(model)
    attention = config.model.attn_implementation
    if attention == "auto":
        return use_varlen_attention(model)
    return attention.startswith("flash_attention") and packed_attention_is_isolated(model)
