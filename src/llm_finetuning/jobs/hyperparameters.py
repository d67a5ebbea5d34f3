"""OpenAI's fine-tuning request -> an llmft config, key by key (docs/fine-tuning-api.md has the same table).

| OpenAI                                    | llmft                                                             |
|-------------------------------------------|-------------------------------------------------------------------|
| `model`                                   | `model.name`: the path the server's `--model NAME=PATH` gave NAME |
| `training_file`                           | `data.train`: the file converted to `messages` / `preference` rows|
| `validation_file`                         | `data.eval` (its loss is `valid_loss` in events and checkpoints)  |
| `method.type: supervised`                 | `method.name: sft` (loss on assistant turns of weight 1)          |
| `method.type: dpo`                        | `method.name: dpo`                                                |
| `n_epochs` (int)                          | `training.epochs`                                                 |
| `n_epochs: auto`                          | 3; under 100 examples, enough to see ~300 examples (at most 10)   |
| `batch_size` (int)                        | `per_device_batch_size` x `gradient_accumulation_steps` = it      |
| `batch_size: auto`                        | about 0.2% of the examples, between 1 and 256 (OpenAI's rule)     |
| `learning_rate_multiplier`                | x the template's `training.learning_rate` (default 2e-4 for LoRA) |
| `learning_rate_multiplier: auto`          | 1.0                                                               |
| `beta` (dpo)                              | `method.beta`; `auto`: 0.1                                        |
| `seed`                                    | `training.seed`; unset: a random seed, reported in the job        |
| `suffix`                                  | part of `fine_tuned_model`: `ft:{model}:{owner}:{suffix}:{id}`    |

Everything else (adapter, precision, max_length...) comes from the server's template (`--template`), else the
config defaults; a request cannot reach any other key, so it cannot name a path on the server.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from llm_finetuning.serve.protocol import ApiError, bad

MAX_PER_DEVICE = 8  # rows per device per step before the rest of `batch_size` goes to gradient accumulation
AUTO_EPOCHS = 3


@dataclass(frozen=True)
class Resolved:
    """The request's hyperparameters with every `auto` resolved (what the job object reports)."""

    method: str  # supervised | dpo
    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    beta: float | None

    def as_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.beta is not None:
            out["beta"] = self.beta
        return out


def _number(value: Any, name: str, kind: type, low: float, high: float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad(f"`{name}` must be 'auto' or a number", name)
    if kind is int and value != int(value):
        raise bad(f"`{name}` must be a whole number, got {value}", name)
    if not low <= value <= high:
        raise bad(f"`{name}` must be between {low:g} and {high:g}, got {value}", name)
    return kind(value)


def request_method(body: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """(method type, its hyperparameters, the param path they came from) from `method` or the legacy top-level
    `hyperparameters`."""
    method = body.get("method")
    legacy = body.get("hyperparameters")
    if method is None:
        if legacy is not None and not isinstance(legacy, dict):
            raise bad("`hyperparameters` must be an object", "hyperparameters")
        return "supervised", dict(legacy or {}), "hyperparameters"
    if not isinstance(method, dict) or not isinstance(method.get("type"), str):
        raise bad("`method` must be an object with `type`: supervised or dpo", "method")
    kind = method["type"]
    if kind == "reinforcement":
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "method `reinforcement` is not offered by this server; train with llmft's GRPO recipes instead",
            "method.type",
            "unsupported_method",
        )
    if kind not in ("supervised", "dpo"):
        raise bad(f"`method.type` must be supervised or dpo, got {kind!r}", "method.type")
    section = method.get(kind) or {}
    if not isinstance(section, dict):
        raise bad(f"`method.{kind}` must be an object", f"method.{kind}")
    params = section.get("hyperparameters") or {}
    if not isinstance(params, dict):
        raise bad(f"`method.{kind}.hyperparameters` must be an object", f"method.{kind}.hyperparameters")
    if legacy:
        raise bad("give hyperparameters in `method`, not also at the top level", "hyperparameters")
    return kind, dict(params), f"method.{kind}.hyperparameters"


def resolve(kind: str, params: dict[str, Any], where: str, examples: int) -> Resolved:
    allowed = {"n_epochs", "batch_size", "learning_rate_multiplier"} | ({"beta"} if kind == "dpo" else set())
    for key in params:
        if key not in allowed:
            raise bad(f"unknown hyperparameter `{key}` for {kind}; allowed: {', '.join(sorted(allowed))}", where)

    def given(name: str) -> Any:
        value = params.get(name, "auto")
        return None if value in ("auto", None) else value

    epochs = given("n_epochs")
    if epochs is None:
        epochs = AUTO_EPOCHS if examples >= 100 else min(10, max(AUTO_EPOCHS, math.ceil(300 / max(examples, 1))))
    else:
        epochs = _number(epochs, f"{where}.n_epochs", int, 1, 50)
    batch = given("batch_size")
    batch = (
        max(1, min(256, round(0.002 * examples)))
        if batch is None
        else _number(batch, f"{where}.batch_size", int, 1, 256)
    )
    multiplier = given("learning_rate_multiplier")
    multiplier = (
        1.0 if multiplier is None else _number(multiplier, f"{where}.learning_rate_multiplier", float, 1e-6, 100)
    )
    beta = None
    if kind == "dpo":
        beta = given("beta")
        beta = 0.1 if beta is None else _number(beta, f"{where}.beta", float, 1e-6, 2)
    return Resolved(kind, epochs, batch, multiplier, beta)


def build_config(
    template: dict[str, Any],
    model_path: str,
    resolved: Resolved,
    seed: int,
    train_path: str,
    eval_path: str | None,
    output_dir: str,
) -> dict[str, Any]:
    """The llmft config (a mapping `Config.model_validate` reads) for one job."""
    config = copy.deepcopy(template)
    config["model"] = {**config.get("model", {}), "name": model_path}
    fmt = "preference" if resolved.method == "dpo" else "messages"
    method = dict(config.get("method") or {})
    if isinstance(config.get("method"), str):
        method = {}
    if resolved.method == "dpo":
        method = {**(method if method.get("name") == "dpo" else {}), "name": "dpo", "beta": resolved.beta}
    else:
        method = {**(method if method.get("name") in (None, "sft") else {}), "name": "sft"}
    config["method"] = method
    data = dict(config.get("data") or {})
    data["train"] = {"path": train_path, "format": fmt}
    data.pop("eval_split", None)
    if eval_path:
        data["eval"] = {"path": eval_path, "format": fmt}
    else:
        data.pop("eval", None)
    config["data"] = data
    training = dict(config.get("training") or {})
    cap = training.get("per_device_batch_size", MAX_PER_DEVICE)
    if isinstance(cap, int) and cap >= 1:  # else the template's own value stays, for the config check to refuse
        # The largest per-device batch that divides `batch_size`: the effective batch is exactly the one asked for.
        per_device = max(d for d in range(1, min(cap, resolved.batch_size) + 1) if resolved.batch_size % d == 0)
        training.update(per_device_batch_size=per_device, gradient_accumulation_steps=resolved.batch_size // per_device)
    base_lr = float(training.get("learning_rate", 2.0e-4))
    training.update(epochs=resolved.n_epochs, learning_rate=base_lr * resolved.learning_rate_multiplier, seed=seed)
    training.pop("max_steps", None)
    config["training"] = training
    config["output_dir"] = output_dir
    return config
