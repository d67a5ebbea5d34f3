"""GRPO as a `method`: config -> prompt records, checked rewards and TRL's GRPOTrainer.

The rewards come from the library by name (or a user's `module:function`), are checked on a sample batch before
the trainer is built, and are passed to TRL with their weights. With an adapter, TRL's reference model is the base
with the adapter disabled; with full weights and `beta > 0`, a frozen copy of the starting model.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import PreparedData, prepare_records
from llm_finetuning.env import is_installed
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.models.lm_head import use_plain_lm_head
from llm_finetuning.rewards.contracts import Reward, check_rewards, resolve_rewards
from llm_finetuning.runs import distributed
from llm_finetuning.runs.rundir import RunDir

logger = logging.getLogger(__name__)
SAMPLE_ROWS = 4  # rows of the training data every reward is called on before training


def prepare(config: Config, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    # Prompts that do not fit are dropped and counted: cutting a question leaves a reward with no right answer.
    limit = config.method.max_prompt_length or config.data.max_length
    data_config = config.data.model_copy(update={"max_length": limit})
    return prepare_records(data_config, "prompt_only", config.training.seed, tokenizer, drop_long=True)


def judge_client(config: Config, run: RunDir | None = None) -> Any:
    """The judge client of `method.judge`, or None when no judge is configured."""
    settings = getattr(config.method, "judge", None)
    if settings is None:
        return None
    from llm_finetuning.judge.client import JudgeClient

    # The judgements are cached in the run, so a resumed run does not pay for them twice.
    return JudgeClient(settings, cache_dir=run.root / "judge_cache" if run is not None else None)


def rewards(config: Config, rows: list[dict[str, Any]], run: RunDir | None = None) -> tuple[list[Reward], Any]:
    """The configured rewards and the judge client (or None), resolved and checked on `rows`: a UserError names
    each broken reward, or the judge when it answered none of the sample."""
    judge = judge_client(config, run)
    resolved = resolve_rewards(config.method.rewards, judge)
    check_rewards(resolved, rows)
    if judge is not None and judge.stats.requests and judge.stats.fallbacks == judge.stats.requests:
        settings = config.method.judge
        raise UserError(
            f"method.judge: the judge `{settings.model}` at {settings.base_url} gave no usable score for any of the "
            f"{judge.stats.requests} sample completions (the warnings above say why). Check `base_url`, `model` and "
            f"the key{f' in `${settings.api_key_env}`' if settings.api_key_env else ''}, or whether the model answers "
            "in the rubric's format."
        )
    return resolved, judge


class JudgedGRPOTrainer(GRPOTrainer):
    """GRPO whose logs carry the judge's counters (calls, cache hits, failures, fallbacks)."""

    judge: Any = None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.judge is not None:
            from llm_finetuning.judge.stats import judge_metrics

            logs = {**logs, **judge_metrics(self.judge)}
        super().log(logs, start_time)


def build_trainer(
    config: Config,
    run: RunDir,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    callbacks: list[TrainerCallback],
) -> Any:
    method = config.method
    sample = [data.train[i] for i in range(min(SAMPLE_ROWS, len(data.train)))]
    checked, judge = rewards(config, sample, run)
    arguments = training_arguments(config, run, has_eval=data.eval is not None)
    arguments.update(
        num_generations=method.num_generations,
        max_completion_length=method.max_completion_length,
        temperature=method.temperature,
        top_p=method.top_p,
        beta=method.beta,
        loss_type=method.loss_type,
        scale_rewards=method.scale_rewards,
        num_iterations=method.num_iterations,
        epsilon=method.epsilon,
        mask_truncated_completions=method.mask_truncated_completions,
        log_completions=method.log_completions,
        reward_weights=[r.weight for r in checked],
        # Evaluation generates a group per prompt too; a smaller eval batch must still hold whole groups.
        num_generations_eval=method.num_generations,
    )
    arguments.update(generation_arguments(config))
    args = GRPOConfig(**apply_extra(arguments, config.training.extra, GRPOConfig))
    if method.beta > 0 and not isinstance(model, PeftModel):
        _reference_on_disk(model, run)
    trainer = JudgedGRPOTrainer(
        model=model,
        reward_funcs=[r.fn for r in checked],
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.judge = judge
    # TRL's fused head is slow without Triton (CPU): same log-probabilities and entropy, computed plainly
    use_plain_lm_head(trainer, temperature=method.temperature, entropy_grad=True)
    return trainer


def generation_arguments(config: Config) -> dict[str, Any]:
    """GRPOConfig options of `method.generation_backend`: nothing for `transformers`, colocated vLLM otherwise."""
    method = config.method
    if method.generation_backend != "vllm":
        return {}
    if not is_installed("vllm"):
        raise ConfigError(
            "method.generation_backend: vllm is not installed. `pip install 'llm-finetuning[vllm]'` (CUDA only), or "
            "set `generation_backend: transformers`."
        )
    if not torch.cuda.is_available():
        raise ConfigError("method.generation_backend: vllm needs a CUDA GPU; use `transformers` on this machine.")
    return {
        "use_vllm": True,
        "vllm_mode": "colocate",
        "vllm_gpu_memory_utilization": method.vllm_gpu_memory_utilization,
    }


def _reference_on_disk(model: PreTrainedModel, run: RunDir) -> None:
    """TRL loads GRPO's full-weight reference model from `model.config._name_or_path`. That is the starting model
    unless tokens were added since (the embeddings grew): then save the starting model in the run and point there."""
    source = model.config._name_or_path
    vocab = model.get_input_embeddings().weight.shape[0]
    try:
        same = bool(source) and AutoConfig.from_pretrained(source).vocab_size == vocab
    except OSError:
        same = False
    if not same:
        source = str(run.root / "reference")
        if distributed.is_main():
            model.save_pretrained(source)
        distributed.barrier()  # every process loads the reference from there
        model.config._name_or_path = source
    logger.info("GRPO reference model (beta > 0, full weights): %s", source)
