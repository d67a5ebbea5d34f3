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
from tests.synth_fixtures import ScriptedTeacher

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
    with pytest.raises(UserError, match="`nowhere` is not an earlier training stage"):
        run_stages(stages)


def constitutional_policy(messages, count):
    """The model answers badly, critiques itself, and revises into a safe answer naming the request."""
    text = messages[-1]["content"]
    request = messages[0]["content"]
    if text.startswith("CRITIQUE"):
        return "That reply helps with something harmful."
    if text.startswith("REVISE"):
        return f"I will not help with that ({request}); here is a safe way to get what you need instead."
    return f"Sure, here is how: {request} step by step."


def test_generate_then_sft_then_dpo_in_one_file(tmp_path):
    prompts = [f"How do I pick lock number {i}?" for i in range(6)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    write(
        tmp_path, "constitution.yaml", {"principles": [{"name": "harm", "critique": "CRITIQUE", "revision": "REVISE"}]}
    )
    preference = {"model": TINY, "adapter": {"method": "lora", "r": 4, "dropout": 0.0}, "method": {"name": "dpo"},
                  "data": {"max_length": 256}, "training": TRAINING}  # fmt: skip
    write(tmp_path, "dpo.yaml", preference)
    with ScriptedTeacher(constitutional_policy) as teacher:
        stages = write(
            tmp_path,
            "cai.yaml",
            {
                "output_dir": str(tmp_path / "out"),
                "stages": [
                    {
                        "name": "data",
                        "generate": {  # inline: the whole chain in one file
                            "teacher": teacher.teacher(),
                            "task": {
                                "name": "constitutional",
                                "prompts": "prompts.jsonl",
                                "constitution": "constitution.yaml",
                            },  # fmt: skip
                            "output": "cai.jsonl",
                            "clean": {"near_dedup": {"enabled": False}},
                        },
                    },
                    {
                        "name": "sft",
                        "data_from": "data",
                        "config": {
                            "model": TINY,
                            "adapter": {"method": "lora", "r": 4, "dropout": 0.0},
                            "data": {"max_length": 256},
                            "training": TRAINING,
                        },  # fmt: skip
                    },
                    {"name": "dpo", "config": "dpo.yaml", "from": "sft", "data_from": "data"},
                ],
            },
        )
        results = run_stages(stages)
    assert [(r.name, r.status) for r in results] == [("data", "completed"), ("sft", "completed"), ("dpo", "completed")]
    out = tmp_path / "out"
    assert results[0].outputs == {
        "rows": str(out / "data" / "cai.jsonl"),
        "preference": str(out / "data" / "cai.preference.jsonl"),
    }
    sft_rows = [json.loads(line) for line in (out / "data" / "cai.jsonl").read_text().splitlines()]
    assert len(sft_rows) == 6 and sft_rows[0]["messages"][-1]["content"].startswith("I will not help with that")
    sft_data = yaml.safe_load((out / "sft" / "config.yaml").read_text())["data"]["train"]
    assert sft_data[0]["path"] == str(out / "data" / "cai.jsonl") and sft_data[0]["format"] == "messages"
    dpo = yaml.safe_load((out / "dpo" / "config.yaml").read_text())
    assert dpo["data"]["train"][0]["path"] == str(out / "data" / "cai.preference.jsonl")
    assert dpo["model"]["name"] == str(out / "sft" / "merged")
    manifest = json.loads((out / "dpo" / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    summary = json.loads((out / "stages.json").read_text())
    assert summary["stages"][0]["metrics"]["written"] == {"rows": 6, "preference": 6}


def test_data_from_must_name_a_generate_stage_and_generate_stages_train_nothing(tmp_path):
    sft_config(tmp_path)
    bad = write(tmp_path, "a.yaml", {"stages": [{"name": "sft", "config": "sft.yaml"},
                                                {"name": "x", "config": "sft.yaml", "data_from": "sft"}]})  # fmt: skip
    with pytest.raises(UserError, match="data_from: `sft` is not an earlier `generate` stage"):
        run_stages(bad)
    worse = write(tmp_path, "b.yaml", {"stages": [{"name": "g", "generate": "g.yaml", "from": "sft"}]})
    with pytest.raises(UserError, match="a `generate` stage trains nothing; remove from"):
        run_stages(worse)
