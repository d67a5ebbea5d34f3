"""Shared fixtures: the shared data folder, tiny models, config files written in the test."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

# No test reaches the network: hub code paths are exercised with local files of the same layout.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models do microsecond matmuls: a second thread only adds synchronisation, and on a busy 2-core
    machine it multiplies their time (measured 3 ms vs 32 ms per step)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMFT_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared(relative: str) -> Path:
    """A file or folder of ../shared/data; the test is skipped where that folder is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"{path} not found (set LLMFT_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    def write(data: dict[str, Any] | str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    def write(rows: list[Any], name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
        return path

    return write


@pytest.fixture
def qa_rows() -> list[dict[str, str]]:
    """A small prompt/completion task with varied lengths."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return [{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in words * 2]


def tiny_config(data_path: Path, output_dir: Path, **sections: Any) -> dict[str, Any]:
    """A config dict for a fast run of a tiny model on `data_path` (prompt_completion rows)."""
    config: dict[str, Any] = {
        "model": {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}},
        "adapter": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": {"path": str(data_path), "format": "prompt_completion"}, "max_length": 128},
        "training": {
            "max_steps": 4,
            "per_device_batch_size": 4,
            "learning_rate": 1.0e-2,
            "logging_steps": 1,
            "seed": 0,
        },
        "output_dir": str(output_dir),
    }
    for key, value in sections.items():
        merge = isinstance(value, dict) and key != "adapter"  # another adapter method has other options
        config[key] = {**config.get(key, {}), **value} if merge else value
    return config


@pytest.fixture
def fake_device(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """Make the fast path see a device with the given capabilities (`fast_path.Capabilities` fields)."""
    from llm_finetuning.models import fast_path

    def install(**fields: Any) -> Any:
        caps = fast_path.Capabilities(**fields)
        monkeypatch.setattr(fast_path, "_DETECTED", [caps])
        return caps

    return install


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained to call get_weather (tests/tool_fixtures.py), trained once for the whole session.
    Tests read it and write elsewhere."""
    from tests.tool_fixtures import train_tool_model

    return train_tool_model(tmp_path_factory.mktemp("tool-run"))
