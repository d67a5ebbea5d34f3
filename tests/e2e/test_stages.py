"""Chained stages: each starts from an earlier stage's run; a failure stops the chain and keeps every run."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoModelForCausalLM

from llm_finetuning.errors import UserError
from llm_finetuning.stages import run_stages
from tests.conftest import shared

pytestmark = pytest.mark.e2e

TINY = {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}}
TRAINING = {"max_steps": 2, "per_device_batch_size": 2, "logging_steps": 1, "learning_rate": 1e-2}


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def sft_config(tmp_path):
    return write(
        tmp_path,
        "sft.yaml",
        {
            "model": TINY,
            "adapter": {"method": "lora", "r": 4, "dropout": 0.0},
            "data": {
                "train": {
                    "path": str(shared("alpaca/alpaca_first100.torchtune_alpaca_tiny.json")),
                    "format": "alpaca",
                    "max_samples": 16,
                },
                "max_length": 256,
            },
            "training": TRAINING,
        },
    )


def dpo_config(tmp_path, path):
    return write(
        tmp_path,
        "dpo.yaml",
        {
            "model": TINY,
            "adapter": {"method": "lora", "r": 4, "dropout": 0.0},
            "method": {"name": "dpo"},
            "data": {
                "train": {
                    "path": path,
                    "format": "preference",
                    "columns": {"prompt": "conversations"},
                    "max_samples": 8,
                },
                "max_length": 512,
            },
            "training": TRAINING,
        },
    )


def test_sft_then_dpo_starts_from_the_merged_sft_model(tmp_path):
    sft_config(tmp_path)
    dpo_config(tmp_path, str(shared("llamafactory_demo/dpo_en_demo.json")))
    stages = write(
        tmp_path,
        "chain.yaml",
        {
            "output_dir": str(tmp_path / "out"),
            "stages": [{"name": "sft", "config": "sft.yaml"}, {"name": "dpo", "config": "dpo.yaml"}],
        },
    )
    results = run_stages(stages)
    assert [(r.name, r.status) for r in results] == [("sft", "completed"), ("dpo", "completed")]
    merged = tmp_path / "out" / "sft" / "merged"
    dpo_model = yaml.safe_load((tmp_path / "out" / "dpo" / "config.yaml").read_text())["model"]
    assert dpo_model["name"] == str(merged) and dpo_model["tokenizer"] == str(merged)
    # The merged model is the SFT result: same logits as base + adapter.
    final = tmp_path / "out" / "sft" / "final"
    base = AutoModelForCausalLM.from_pretrained(
        json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    )
    ids = torch.tensor([[5, 9, 40, 41, 42]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, final).eval()(ids).logits
        torch.testing.assert_close(
            AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits, expected, rtol=1e-5, atol=1e-5
        )
    summary = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["completed", "completed"]


def test_a_failing_stage_stops_the_chain_and_keeps_every_run(tmp_path):
    sft_config(tmp_path)
    dpo_config(tmp_path, str(tmp_path / "missing.json"))
    stages = write(
        tmp_path,
        "chain.yaml",
        {
            "output_dir": str(tmp_path / "out"),
            "stages": [
                {"name": "sft", "config": "sft.yaml"},
                {"name": "dpo", "config": "dpo.yaml"},
                {"name": "again", "config": "sft.yaml", "from": "dpo"},
            ],
        },
    )
    with pytest.raises(Exception, match="Data file not found"):
        run_stages(stages)
    summary = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [("sft", "completed"), ("dpo", "failed")]
    assert (tmp_path / "out" / "sft" / "final").is_dir()
    assert json.loads((tmp_path / "out" / "dpo" / "manifest.json").read_text())["status"] == "failed"
    assert not (tmp_path / "out" / "again").exists()


def test_bad_stage_references_are_config_errors(tmp_path):
    sft_config(tmp_path)
    stages = write(tmp_path, "chain.yaml", {"stages": [{"name": "sft", "config": "sft.yaml", "from": "nowhere"}]})
    with pytest.raises(UserError, match="`nowhere` is not an earlier stage"):
        run_stages(stages)
