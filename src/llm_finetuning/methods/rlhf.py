"""PPO as a `method`: config -> prompt records, a reward (model or function) and our own `PPOTrainer`.

`PPORun` gives the PPO trainer the small surface the training path expects of a trainer (`train`, `evaluate`,
`model`), writes every step's statistics to `metrics.jsonl`, checkpoints to `checkpoints/checkpoint-N` every
`training.save_steps` steps (at the last step, and when a SIGINT/SIGTERM stops it), and resumes from one exactly.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_finetuning.config.schema import PPO_FROM_TRAINING, Config
from llm_finetuning.data.pipeline import PreparedData, prepare_records
from llm_finetuning.errors import ConfigError, UserError
from llm_finetuning.methods.ppo import (
    CheckpointMismatch,
    PPOOptions,
    PPOTrainer,
    RewardModelScorer,
    frozen_copy,
    read_state,
    save_value_head,
    write_checkpoint,
)
from llm_finetuning.methods.ppo.checkpoint import differences
from llm_finetuning.models.merged_generation import use_merged_weights
from llm_finetuning.runs import distributed
from llm_finetuning.runs.rundir import RunDir
from llm_finetuning.runs.signals import GracefulStop


def prepare(config: Config, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    # PPO cuts long prompts itself: the tokenizer only checks that the template renders every turn.
    return prepare_records(config.data, "prompt_only", config.training.seed, tokenizer, fit=False)


def reward_function(config: Config) -> Any:
    method = config.method
    if method.reward_function is not None:
        module_name, _, name = method.reward_function.partition(":")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"method.reward_function: cannot import `{method.reward_function}` ({exc})") from None
    path = Path(method.reward_model)
    if (path / "final").is_dir():  # a reward-model run directory
        from llm_finetuning.scoring import load_reward_model

        model, tokenizer = load_reward_model(path)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(method.reward_model)
            model = AutoModelForSequenceClassification.from_pretrained(method.reward_model, num_labels=1).eval()
        except OSError as exc:
            raise UserError(f"method.reward_model: cannot load `{method.reward_model}` ({exc})") from None
    return RewardModelScorer(model, tokenizer)


def ppo_options(config: Config, train_rows: int) -> PPOOptions:
    t = config.training
    fields = {k: v for k, v in config.method.model_dump().items() if k in PPOOptions.model_fields}
    steps = t.max_steps or max(1, math.ceil(t.epochs * train_rows / t.per_device_batch_size))
    from_training = {
        "learning_rate": t.learning_rate,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm or None,
        "seed": t.seed,
        "total_steps": steps,
        "batch_size": t.per_device_batch_size,
    }
    assert set(from_training) == set(PPO_FROM_TRAINING)
    try:
        return PPOOptions(**{**fields, **from_training})
    except ValueError as exc:  # a constraint across method.* and training.* keys
        names = {v: f"training.{PPO_FROM_TRAINING[v]}" for v in PPO_FROM_TRAINING}
        message = str(exc).split("\n")[1].strip().removeprefix("Value error, ")
        for option, key in names.items():
            message = message.replace(f"`{option}`", f"`{key}`").replace(f" {option} ", f" {key} ")
        raise ConfigError(f"method: {message.split(' [type=')[0]}") from None


def resume_fingerprint(config: Config, rows: list[Any]) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it: every setting that shapes the training, and the
    prompts themselves (the saved data position indexes them). Not the run's length (`training.max_steps` or
    `epochs` may change, to extend a run) nor bookkeeping (saving, logging)."""
    model_keys = {"name", "revision", "tokenizer", "dtype", "quantization", "double_quantization", "tiny"}
    prompts = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return {
        "model": config.model.model_dump(mode="json", include=model_keys),
        "adapter": config.adapter.model_dump(mode="json"),
        # The shared options come from `training.*` (their `method.*` twins are unused defaults).
        "method": config.method.model_dump(mode="json", exclude=set(PPO_FROM_TRAINING)),
        "training": {key: getattr(config.training, key) for key in PPO_FROM_TRAINING.values() if key != "max_steps"},
        "data": {"prompts_sha256": hashlib.sha256(prompts).hexdigest()[:16]},
    }


class PPORun:
    """The PPO trainer behind the interface of the other methods' trainers."""

    def __init__(
        self,
        config: Config,
        run: RunDir,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        data: PreparedData,
        callbacks: list[Any],
    ) -> None:
        self.run = run
        self.data = data
        self.stop = next((c for c in callbacks if isinstance(c, GracefulStop)), None)
        options = ppo_options(config, len(data.train))
        # Without `training.save_steps`, one checkpoint per pass over the prompts, as the other methods save one
        # per epoch.
        self.save_every = config.training.save_steps or max(1, math.ceil(len(data.train) / options.batch_size))
        self.save_total_limit = config.training.save_total_limit
        self.rows = list(data.train)
        self.fingerprint = resume_fingerprint(config, self.rows)
        # The reference is copied from the model as loaded, before any checkpoint is restored: the starting policy.
        reference = None if isinstance(model, PeftModel) else frozen_copy(model)
        self.trainer = PPOTrainer(
            model, tokenizer, options, reward_function(config), ref_model=reference, log_fn=self._log
        )
        self.model = model
        use_merged_weights(self.trainer.policy, config)

    def _log(self, stats: dict[str, Any]) -> None:
        record = {"step": self.trainer.global_step, **stats}
        with self.run.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.requested is not None

    def _after_step(self, stats: dict[str, float]) -> None:
        step = self.trainer.global_step
        due = step % self.save_every == 0 or step >= self.trainer.options.total_steps or self._stopping()
        if due and distributed.is_main():
            extra = {"config": self.fingerprint}
            write_checkpoint(self.trainer, self.run.checkpoints, self.save_total_limit, extra)

    def _resume(self, checkpoint: Path) -> None:
        saved = read_state(checkpoint)["extra"].get("config", {})
        changed = differences(saved, self.fingerprint)
        if changed:
            raise CheckpointMismatch(checkpoint, changed)
        self.trainer.load_checkpoint(checkpoint, dataset_size=len(self.rows))

    def train(self, resume_from_checkpoint: str | None = None) -> SimpleNamespace:
        if resume_from_checkpoint is not None:
            self._resume(Path(resume_from_checkpoint))
        self.trainer.train(self.rows, should_stop=self._stopping, on_step=self._after_step)
        last = self.trainer.history[-5:]  # restored with a checkpoint: the same figures as an uninterrupted run
        metrics = {f"final_{k}": sum(h[k] for h in last) / len(last) for k in ("reward", "kl") if last}
        return SimpleNamespace(metrics=metrics)

    def evaluate(self) -> dict[str, float]:
        return {}

    def save_extras(self, directory: Path) -> None:
        save_value_head(self.trainer.model.value_head, directory)


def build_trainer(*args: Any) -> PPORun:
    return PPORun(*args)
