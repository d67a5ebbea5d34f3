"""`llmft quickstart`: a whole fine-tuning run, offline, on a laptop CPU, in a couple of minutes.

It builds a tiny random model, writes a small synthetic task (spell a made-up word in capitals), measures
exact-match accuracy on held-out words, trains through the same `train()` path as any config, loads `final/`
with plain transformers and measures again.
"""

from __future__ import annotations

import json
import logging
import random
import string
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_finetuning.config.schema import Config
from llm_finetuning.models.loading import load_model, load_tokenizer, prepare_tokenizer
from llm_finetuning.serve.generation import generate
from llm_finetuning.train import TrainResult, train

logger = logging.getLogger(__name__)

INSTRUCTION = "Spell in capitals:"


@dataclass
class QuickstartResult:
    before: float
    after: float
    eval_examples: int
    result: TrainResult
    data_dir: Path


def make_task(rng: random.Random, count: int, exclude: set[str] = frozenset()) -> list[dict[str, str]]:
    """Distinct made-up lowercase words of five letters, each with its capitalised spelling.

    A fixed length puts every output letter at a fixed distance from its input letter, which a two-layer model
    learns reliably within a few hundred steps; varying lengths need induction heads, which emerge late and at
    an unpredictable step.
    """
    rows, seen = [], set(exclude)
    while len(rows) < count:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(5))
        if word in seen:
            continue
        seen.add(word)
        rows.append({"prompt": f"{INSTRUCTION} {word}", "completion": word.upper()})
    return rows


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def quickstart_config(data_dir: Path, output_dir: str, max_steps: int) -> Config:
    return Config.model_validate(
        {
            "model": {
                "name": "tiny",
                "tiny": {"architecture": "llama", "hidden_size": 128, "num_layers": 2, "num_heads": 4},
            },
            # A random model has nothing for a low-rank update to adapt, so train it in full.
            "adapter": {"method": "full"},
            "data": {
                "train": {"path": str(data_dir / "train.jsonl"), "format": "prompt_completion"},
                "eval": {"path": str(data_dir / "eval.jsonl"), "format": "prompt_completion"},
                "max_length": 64,
            },
            "method": {"name": "sft"},
            "training": {
                "learning_rate": 1.0e-3,
                "max_steps": max_steps,
                "per_device_batch_size": 32,
                "warmup_ratio": 0.05,
                "lr_scheduler": "cosine",
                "weight_decay": 0.01,
                "logging_steps": 20,
                "save_steps": max_steps,
                "seed": 0,
            },
            "eval": {"every_steps": max(1, max_steps // 4)},
            "output_dir": output_dir,
        }
    )


def exact_match(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict[str, str]],
    batch_size: int = 64,
) -> float:
    """Percentage of prompts whose greedy completion equals the reference exactly."""
    texts = generate(model.eval(), tokenizer, [r["prompt"] for r in rows], max_new_tokens=12, batch_size=batch_size)
    correct = sum(text.strip() == r["completion"] for text, r in zip(texts, rows, strict=True))
    return 100.0 * correct / max(len(rows), 1)


def run_quickstart(
    output_dir: str = "runs/quickstart",
    overwrite: bool = False,
    max_steps: int = 400,
    train_size: int = 2000,
    eval_size: int = 200,
) -> QuickstartResult:
    rng = random.Random(0)
    train_rows = make_task(rng, train_size)
    eval_rows = make_task(rng, eval_size, exclude={r["completion"].lower() for r in train_rows})
    # Absolute, so the run's config.yaml still finds the data when reused from anywhere.
    data_dir = Path(f"{output_dir.rstrip('/')}-data").resolve()
    write_jsonl(train_rows, data_dir / "train.jsonl")
    write_jsonl(eval_rows, data_dir / "eval.jsonl")
    config = quickstart_config(data_dir, output_dir, max_steps)

    # The same seed and shape build the same initial model that training starts from.
    tokenizer = load_tokenizer(config.model)
    prepare_tokenizer(tokenizer, config.data.chat_template)
    before = exact_match(load_model(config.model, tokenizer), tokenizer, eval_rows)
    logger.info("held-out exact match before training: %.1f%%", before)

    result = train(config, overwrite=overwrite)
    if result.status != "completed":
        return QuickstartResult(before, float("nan"), len(eval_rows), result, data_dir)
    # Measure the saved artefact, loaded with plain transformers, not the object still in memory.
    trained = AutoModelForCausalLM.from_pretrained(result.run.final)
    after = exact_match(trained, AutoTokenizer.from_pretrained(result.run.final), eval_rows)
    logger.info("held-out exact match after training: %.1f%%", after)
    return QuickstartResult(before, after, len(eval_rows), result, data_dir)
