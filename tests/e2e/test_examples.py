"""Every example config validates, and trains for a couple of steps on its real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_finetuning.config import load_config
from llm_finetuning.train import train
from tests.conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.e2e

EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*.yaml") if not p.name.startswith("_"))
ADAPTER_METHODS = {"full", "freeze", "lora", "dora", "ia3", "prefix", "prompt", "p_tuning"}


def test_there_is_an_example_for_every_adapter_method():
    methods = {load_config(p).adapter.method for p in EXAMPLES}
    assert ADAPTER_METHODS <= methods


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_example_validates_and_smoke_runs(path: Path, tmp_path):
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not found")
    config = load_config(path, [f"output_dir={tmp_path / 'run'}", "training.max_steps=2", "training.logging_steps=1"])
    result = train(config)
    assert result.status == "completed"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["data"]["stats"]["train"]["examples"] > 0
    assert any((tmp_path / "run" / "final").iterdir())
