"""A function-calling data file and a tiny model trained on it to call a tool (serving, evaluation, recipes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
}
TOOLS = [{"type": "function", "function": WEATHER}]
CITIES = ("Paris", "Berlin", "Lima")


def sharegpt_rows(repeat: int = 4) -> list[dict[str, Any]]:
    """ShareGPT function-calling rows: a call, the tool's answer and the final answer per city, and greetings that
    need no call. `tools` is a JSON string, as in the common function-calling files."""
    rows = []
    for _ in range(repeat):
        for city in CITIES:
            call = {"name": "get_weather", "arguments": {"city": city}}
            rows.append(
                {
                    "conversations": [
                        {"from": "human", "value": f"Weather in {city}?"},
                        {"from": "function_call", "value": json.dumps(call)},
                        {"from": "observation", "value": json.dumps({"temp": len(city)})},
                        {"from": "gpt", "value": f"It is {len(city)} C."},
                    ],
                    "tools": json.dumps([WEATHER]),
                }
            )
        rows.append(
            {
                "conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "Hi!"}],
                "tools": json.dumps([WEATHER]),
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tool_config(data: Path, output_dir: Path, steps: int = 200) -> dict[str, Any]:
    """A full fine-tune of a tiny model with the `hermes` tool template, long enough to learn the calls."""
    return {
        "model": {"name": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2}},
        "adapter": {"method": "full"},
        "data": {
            "train": {"path": str(data), "format": "sharegpt"},
            "max_length": 1024,
            "chat_template": "hermes",
        },
        "training": {
            "max_steps": steps,
            "per_device_batch_size": 8,
            "learning_rate": 3.0e-3,
            "logging_steps": 20,
            "seed": 0,
        },
        "output_dir": str(output_dir),
    }


def train_tool_model(root: Path, steps: int = 200) -> Path:
    """Train the tiny tool-calling model under `root`; returns its run directory."""
    from llm_finetuning.config import Config
    from llm_finetuning.train import train

    data = write_rows(root / "tools.jsonl", sharegpt_rows())
    train(Config.model_validate(tool_config(data, root / "run", steps)))
    return root / "run"
