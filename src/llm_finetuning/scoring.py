"""Score (prompt, response) pairs with a trained reward model from its run directory."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from llm_finetuning.errors import RunDirError


def load_reward_model(run_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The reward model in `run_dir/final` (full weights, or a LoRA adapter on its base), in eval mode."""
    final = Path(run_dir) / "final"
    if not final.is_dir():
        raise RunDirError(f"{run_dir}: no final/ directory; is it a finished reward-model run?")
    tokenizer = AutoTokenizer.from_pretrained(final)
    adapter = final / "adapter_config.json"
    if adapter.is_file():
        base_path = json.loads(adapter.read_text())["base_model_name_or_path"]
        base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
        base.config.pad_token_id = tokenizer.pad_token_id
        model = PeftModel.from_pretrained(base, final)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(final)
    return model.eval(), tokenizer


@torch.no_grad()
def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    responses: list[str],
    batch_size: int = 8,
) -> list[float]:
    """The reward of each response to its prompt, rendered with the chat template as in training."""
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
        )
        for p, r in zip(prompts, responses, strict=True)
    ]
    scores: list[float] = []
    tokenizer.padding_side = "right"
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        )
        scores.extend(model(**batch).logits[:, 0].float().tolist())
    return scores
