"""What the fine-tuning API tests share: keys, the server template, rows in OpenAI's formats, a tiny chat model
saved as a base model folder, and polling helpers."""

from __future__ import annotations

import json
import time
from pathlib import Path

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.models import tiny

ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"
TEMPLATE = {
    "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
    "data": {"max_length": 128},
    "training": {"learning_rate": 1.0e-2, "logging_steps": 1, "per_device_batch_size": 4},
}
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]


def chat_rows() -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Spell {w}"}, {"role": "assistant", "content": " ".join(w.upper())}]}
        for w in WORDS
    ]


def dpo_rows() -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": f"Spell {w}"}]},
            "preferred_output": [{"role": "assistant", "content": " ".join(w.upper())}],
            "non_preferred_output": [{"role": "assistant", "content": w[::-1]}],
        }
        for w in WORDS
    ]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def wait_for(check, timeout: float = 180.0, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s")


def save_tiny_chat_model(folder: Path) -> Path:
    """A tiny random chat model (ChatML template) saved as a folder, the way a base model is given to a server."""
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2), tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def upload(api, rows: list[dict], name: str = "train.jsonl"):
    return api.files.create(file=(name, jsonl(rows)), purpose="fine-tune")


def finished(api, job_id: str, timeout: float = 180.0):
    return wait_for(
        lambda: (j := api.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled") and j,
        timeout,
    )


def all_events(api, job_id: str) -> list:
    """Every event of the job, oldest first (the API pages them newest first)."""
    found, after = [], None
    while True:
        page = api.fine_tuning.jobs.list_events(job_id, limit=100, **({"after": after} if after else {}))
        found += page.data
        if not page.has_more:
            return found[::-1]
        after = page.data[-1].id
