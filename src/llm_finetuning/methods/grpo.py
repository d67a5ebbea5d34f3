"""GRPO as a `method`: config -> prompt records, checked rewards and TRL's GRPOTrainer.

The rewards come from the library by name (or a user's `module:function`), are checked on a sample batch before
the trainer is built, and are passed to TRL with their weights. With an adapter, TRL's reference model is the base
with the adapter disabled; with full weights and `beta > 0`, a frozen copy of the starting model.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from peft import PeftModel
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from llm_finetuning.config.schema import Config
from llm_finetuning.data.pipeline import PreparedData, prepare_records
from llm_finetuning.env import is_installed
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.methods.common import apply_extra, training_arguments
from llm_finetuning.models import fast_path
from llm_finetuning.models.lm_head import use_plain_lm_head
from llm_finetuning.models.merged_generation import use_merged_weights
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
    """GRPO whose logs carry where each optimizer step's time went and the judge's counters (calls, cache hits,
    failures, fallbacks).

    Time per optimizer step, averaged over the logging interval: `time/generation` (sampling the completions),
    `time/rewards` (scoring them, judges included), `time/log_probs` (the no-gradient old-policy and reference
    log-probabilities, and the rest of preparing the batch) and `time/train` (forward and backward); TRL's
    `step_time` is their sum. What they say decides what to speed up (generation: `generation_backend: vllm`).
    """

    judge: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase_seconds: dict[str, float] = {}
        self._timing = False  # only training steps are timed, not evaluation's generation

    def _add_time(self, phase: str, started: float) -> None:
        if self._timing:
            self._phase_seconds[phase] = self._phase_seconds.get(phase, 0.0) + time.perf_counter() - started

    def _generate(self, prompts: list) -> Any:
        started = time.perf_counter()
        try:
            return super()._generate(prompts)
        finally:
            self._add_time("generation", started)

    def _calculate_rewards(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return super()._calculate_rewards(*args, **kwargs)
        finally:
            self._add_time("rewards", started)

    def _prepare_inputs(self, generation_batch: Any) -> Any:
        self._timing = self.model.training
        started = time.perf_counter()
        try:
            return super()._prepare_inputs(generation_batch)
        finally:
            self._add_time("prepare", started)

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        output = super().training_step(model, inputs, num_items_in_batch)
        if self._step % self.current_gradient_accumulation_steps == 0:  # TRL just recorded this step's step_time
            seconds = self._phase_seconds
            generation, rewards = seconds.get("generation", 0.0), seconds.get("rewards", 0.0)
            prepare = seconds.get("prepare", 0.0)
            train = self._metrics["train"]
            train["time/generation"].append(generation)
            train["time/rewards"].append(rewards)
            train["time/log_probs"].append(max(prepare - generation - rewards, 0.0))
            train["time/train"].append(max(train["step_time"][-1] - prepare, 0.0))
            self._phase_seconds = {}
        return output

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
    use_generation_cache(trainer, config)
    use_merged_weights(trainer.model, config)
    if fast_path.for_config(config).lm_head.value == "plain":
        # TRL's fused head is slow without Triton (CPU): same log-probabilities and entropy, computed plainly
        use_plain_lm_head(trainer, temperature=method.temperature, entropy_grad=True)
    return trainer


def use_generation_cache(trainer: GRPOTrainer, config: Config) -> None:
    """`method.generation_cache: static`: one static KV cache sized for the longest prompt plus completion, reused by
    every step, and transformers' compiled decoding on it (TRL builds its generation config with compilation off)."""
    method = config.method
    if method.generation_cache != "static" or method.generation_backend != "transformers":
        return
    longest = (method.max_prompt_length or config.data.max_length) + method.max_completion_length
    settings = {"cache_implementation": "static", "max_cache_len": longest, "disable_compile": False}
    for key, value in settings.items():
        setattr(trainer.generation_config, key, value)
    trainer.generation_kwargs.update(settings)  # TRL applies these to the model's own generation config too
    logger.info("GRPO generation: static KV cache of %d positions, compiled decoding where the device allows", longest)


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
    if fast_path.capabilities().device != "cuda":
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
