"""UltraFeedback (binarized): prompts with the best-rated response as chosen and a lower-rated one rejected."""

from __future__ import annotations

from typing import Any

from llm_finetuning.data.datasets._common import pick, text
from llm_finetuning.data.datasets.base import NamedDataset
from llm_finetuning.data.formats import Record, RowError, as_messages, split_shared_prefix


def to_preference(row: dict[str, Any]) -> Record:
    """`chosen`/`rejected` are whole conversations (user prompt + assistant reply); the prompt is the part
    they share, or the `prompt` column where they share nothing."""
    chosen = as_messages(pick(row, "chosen"), "chosen", "assistant")
    rejected = as_messages(pick(row, "rejected"), "rejected", "assistant")
    prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
    if not prompt:
        prompt = [{"role": "user", "content": text(row, "prompt")}]
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side or side[-1]["role"] != "assistant" or not side[-1]["content"].strip():
            raise RowError(f"field `{name}` must end with a non-empty assistant response")
    if chosen == rejected:
        raise RowError("chosen and rejected are identical, so there is no preference to learn")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def to_prompt_only(row: dict[str, Any]) -> Record:
    """The prompt alone, for PPO/GRPO with a reward model."""
    return {
        "prompt": [{"role": "user", "content": text(row, "prompt")}],
        "prompt_id": text(row, "prompt_id", required=False),
    }


DATASET = NamedDataset(
    name="ultrafeedback",
    hub_id="HuggingFaceH4/ultrafeedback_binarized",
    subset=None,
    splits={"train": "train_prefs", "test": "test_prefs"},
    converters={"preference": to_preference, "prompt_only": to_prompt_only},
    description="UltraFeedback binarized: prompt, best-rated response (chosen), a lower-rated one (rejected).",
    test_splits=("test_prefs", "test_sft", "test_gen"),
)
