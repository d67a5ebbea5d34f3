"""PPO as a `method`: config -> prompt records, a reward (model or function) and our own `PPOTrainer`.

`PPORun` gives the PPO trainer the small surface the training path expects of a trainer (`train`, `evaluate`,
`model`), writes every step's statistics to `metrics.jsonl`, and stops at SIGINT/SIGTERM like the others.
"""

from __future__ import annotations

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
from llm_finetuning.methods.ppo import PPOOptions, PPOTrainer, RewardModelScorer, frozen_copy, save_value_head
from llm_finetuning.runs.rundir import RunDir
from llm_finetuning.runs.signals import GracefulStop


def prepare(config: Config, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    return prepare_records(config.data, "prompt_only", config.training.seed)


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
        reference = None if isinstance(model, PeftModel) else frozen_copy(model)
        self.trainer = PPOTrainer(
            model, tokenizer, options, reward_function(config), ref_model=reference, log_fn=self._log
        )
        self.model = model

    def _log(self, stats: dict[str, Any]) -> None:
        record = {"step": self.trainer.global_step, **stats}
        with self.run.metrics.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def train(self, resume_from_checkpoint: str | None = None) -> SimpleNamespace:
        if resume_from_checkpoint is not None:
            raise ConfigError("PPO runs cannot be resumed yet; start a new run (--overwrite).")
        rows = list(self.data.train)
        history = self.trainer.train(rows, should_stop=(lambda: self.stop.requested) if self.stop else None)
        last = history[-5:]
        metrics = {f"final_{k}": sum(h[k] for h in last) / len(last) for k in ("reward", "kl") if last}
        return SimpleNamespace(metrics=metrics)

    def evaluate(self) -> dict[str, float]:
        return {}

    def save_extras(self, directory: Path) -> None:
        save_value_head(self.trainer.model.value_head, directory)


def build_trainer(*args: Any) -> PPORun:
    return PPORun(*args)
