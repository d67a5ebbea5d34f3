"""Likely mistakes in the config itself: settings that validate but rarely work."""

from __future__ import annotations

from llm_finetuning.check.report import CheckReport
from llm_finetuning.config.schema import Config

# Usual learning rates by method family and adapter family: generous bounds around what published recipes and
# the libraries' defaults use. Outside them a run most often either does not move or diverges.
FAMILY = {
    "sft": "sft",
    "pretrain": "sft",
    "reward": "reward",
    "dpo": "preference",
    "orpo": "preference",
    "kto": "preference",
    "ppo": "rl",
    "grpo": "rl",
    "embedding": "encoder",
    "reranker": "encoder",
    "classify": "encoder",
    "multi_head": "encoder",
}
ADAPTER_FAMILY = {
    "full": "full",
    "freeze": "full",
    "lora": "lora",
    "dora": "lora",
    "ia3": "ia3",
    "prefix": "prompt",
    "prompt": "prompt",
    "p_tuning": "prompt",
}
USUAL_LR: dict[tuple[str, str], tuple[float, float]] = {
    ("sft", "full"): (1e-6, 1e-4),
    ("sft", "lora"): (1e-5, 1e-3),
    ("sft", "ia3"): (1e-4, 1e-2),
    ("sft", "prompt"): (1e-4, 0.5),
    ("reward", "full"): (1e-6, 5e-5),
    ("reward", "lora"): (1e-5, 1e-3),
    ("preference", "full"): (1e-7, 2e-5),
    ("preference", "lora"): (1e-6, 5e-4),
    ("preference", "ia3"): (1e-5, 1e-2),
    ("preference", "prompt"): (1e-5, 0.1),
    ("rl", "full"): (1e-7, 1e-5),
    ("rl", "lora"): (1e-6, 2e-4),
    ("rl", "ia3"): (1e-5, 5e-3),
    ("rl", "prompt"): (1e-5, 0.05),
    # sentence-transformers' and text-classification recipes: 2e-5 full, ~1e-4 with LoRA.
    ("encoder", "full"): (1e-6, 2e-4),
    ("encoder", "lora"): (1e-5, 2e-3),
}


def check_learning_rate(config: Config, report: CheckReport) -> None:
    method, adapter = FAMILY[config.method.name], ADAPTER_FAMILY[config.adapter.method]
    bounds = USUAL_LR.get((method, adapter)) or USUAL_LR.get((method, "lora"))
    rate = config.training.learning_rate
    low, high = bounds
    if not low <= rate <= high:
        direction = "above" if rate > high else "below"
        report.add(
            "warning",
            "training.learning_rate",
            f"{rate:g} is {direction} the usual range for `{config.method.name}` with `{config.adapter.method}` "
            f"({low:g} to {high:g}): "
            + (
                "the run may diverge or forget what the model knew."
                if rate > high
                else "the weights may barely move. Check the value (prompt-learning methods need far larger rates "
                "than LoRA, full fine-tuning far smaller)."
            ),
        )


def check_backend(config: Config, report: CheckReport) -> None:
    """`model.backend: unsloth` needs its package and a CUDA GPU: refused here as `llmft train` would refuse it.

    What the backend cannot do with the config itself (adapters, methods) is a config error, reported before this runs.
    """
    if config.model.backend != "unsloth":
        return
    from llm_finetuning.models.unsloth_backend import environment_problems

    for problem in environment_problems():
        report.add("error", "model.backend", problem)


def check_fast_path(config: Config, report: CheckReport) -> None:
    """The fast path `llmft train` would take on this machine (`models/fast_path.py`), one finding per choice; a
    setting that cannot run here (Liger without a GPU, fp16 autocast on CPU, a missing kernel) is an error, as
    `llmft train` would refuse it."""
    from llm_finetuning.errors import ConfigError
    from llm_finetuning.models import fast_path

    try:
        path = fast_path.for_config(config)
    except ConfigError as exc:
        message = str(exc)
        key, _, rest = message.partition(": ")
        report.add("error", key if key.count(".") == 1 and " " not in key else "fast path", rest or message)
        return
    for what, choice in path.lines():
        report.add("info", f"fast path: {what}", choice)
