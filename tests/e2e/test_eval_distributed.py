"""The `eval:` section in a two-process FSDP run (CPU, gloo): the weights are sharded, so tasks during training
are skipped with a warning, and after training the main process evaluates the saved full model, with the
same perplexity as the final model evaluated on its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.runner import evaluate_task
from llm_finetuning.serve.generation import load_for_inference
from tests.conftest import tiny_config

pytestmark = [pytest.mark.distributed, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]


def test_fsdp_run_evaluates_the_saved_model_after_training(tmp_path):
    words = ["alpha", "bravo", "charlie", "delta"]
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Spell {w}", "completion": " ".join(w.upper())}) + "\n" for w in words * 3)
    )
    document = tmp_path / "doc.txt"
    document.write_text("Spell alpha: A L P H A. " * 4)
    section = {"tasks": [{"name": "perplexity", "path": str(document), "window": 16}], "tasks_every_steps": 1}
    raw = tiny_config(data, tmp_path / "run", adapter={"method": "full"}, eval=section)
    raw["training"].update(max_steps=2, per_device_batch_size=2)
    raw["distributed"] = {"strategy": "fsdp"}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    result = subprocess.run(
        [sys.executable, "-m", "llm_finetuning.cli.main", "train", "run.yaml", "--nproc", "2"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tasks_every_steps is skipped with sharded" in result.stdout + result.stderr
    run = tmp_path / "run"
    assert not (run / "eval" / "step-1").exists()
    saved = json.loads((run / "eval" / "perplexity.json").read_text())
    model, tokenizer = load_for_inference(run)
    alone = evaluate_task(model, tokenizer, EvalTaskConfig(name="perplexity", path=str(document), window=16))
    assert saved["metrics"]["perplexity"] == pytest.approx(alone.metrics["perplexity"], rel=1e-5)
    assert json.loads((run / "manifest.json").read_text())["eval"]["tasks"]["perplexity"]["tokens"] > 0
