"""Supervised fine-tuning: config -> tokenized chat data -> TRL `SFTTrainer`, nothing else.

The data arrives tokenized, with labels that are -100 outside completions (see `data/tokenize.py`), so TRL
uses them as they are; truncation has already happened and been counted. With `data.packing`, TRL packs the
examples (best-fit decreasing) and its padding-free collator restarts positions per example, which the model's
attention turns into a block-diagonal mask. Without packing, `data.padding_free` puts each batch in one row the
same way. Either way, with `model.attn_implementation: auto` the attention is the fast path's kernel for such rows
(`models/fast_path.py`: a varlen flash kernel on CUDA, sdpa per example on CPU), checked on the model first.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import SFTConfig, SFTTrainer

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import PreparedData, prepare_data
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.models import fast_path
from llm_finetuning.models.lm_head import use_plain_lm_head
from llm_finetuning.models.row_attention import rows_isolated
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
    path = fast_path.for_config(config)
    packing = config.data.packing
    private = config.training.privacy
    # DP-SGD needs each example in its own row: its gradient must be that example's alone.
    padding_free = not packing and private is None and removes_padding(config, model, path)
    if packing:
        rows_isolated(model, path)  # the plan's attention for packed rows, where it keeps them apart
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
    if private is not None:
        arguments["max_grad_norm"] = 0.0  # DP-SGD clips each example's gradient; clipping the sum would be wrong
    args = SFTConfig(**apply_extra(arguments, config.training.extra, SFTConfig))
    parts: dict[str, Any] = dict(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    if private is not None:
        from llm_finetuning.methods.private import PrivateSFTTrainer

        trainer: SFTTrainer = PrivateSFTTrainer(**parts, privacy=private)
    else:
        trainer = SFTTrainer(**parts)
    if path.lm_head.value == "plain":
        use_plain_lm_head(trainer)  # TRL's fused head is slow without Triton (CPU); same loss, computed plainly
    return trainer


def removes_padding(config: Config, model: PreTrainedModel, path: fast_path.FastPath | None = None) -> bool:
    """Whether unpacked batches go padding-free: the same examples in one row, each attended to on its own.

    Where the fast path allows it (`fast_path.padding_free_choice`: an attention that runs per example, a batch of
    more than one, no prompt-learning adapter, ...) and the model shows that its attention keeps the examples apart.
    """
    path = path or fast_path.for_config(config)
    return path.padding_free.value == "on" and rows_isolated(model, path)
