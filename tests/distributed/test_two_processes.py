"""Two processes on CPU (gloo) through `llmft train --nproc 2`: the same training as one process with twice the
batch, the run directory written once, resume, DPO and GRPO, and a failing process stopping the run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.distributed
TRAINING = {"max_steps": 4, "save_steps": 2, "learning_rate": 1e-3, "logging_steps": 1, "seed": 0}


def llmft(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the processes import the tests' reward functions
    return subprocess.run(
        [sys.executable, "-m", "llm_finetuning.cli.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def write_config(tmp: Path, name: str, data_path: Path, batch: int, **sections) -> Path:
    raw = tiny_config(data_path, tmp / name, adapter={"method": "full"}, **sections)
    raw["training"] = {**raw["training"], **TRAINING, "per_device_batch_size": batch, **sections.get("training", {})}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def grpo_config(tmp: Path, reward: str, name: str = "digits", **sections) -> Path:
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Count to {i}", "answer": str(i)}) + "\n" for i in range(8)))
    return write_config(
        tmp,
        "grpo",
        prompts,
        batch=4,
        method={
            "name": "grpo",
            "num_generations": 4,
            "max_completion_length": 8,
            "rewards": [{"name": name, "function": reward}],
        },
        data={"train": {"path": str(prompts), "format": "prompt_only"}, "max_length": 64},
        **sections,
    )


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    data = tmp / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"Spell {w}", "completion": " ".join(w.upper())}) + "\n" for w in words * 2)
    )
    two = llmft("train", str(write_config(tmp, "two", data, batch=2)), "--nproc", "2", cwd=tmp)
    assert two.returncode == 0, two.stdout + two.stderr
    one = llmft("train", str(write_config(tmp, "one", data, batch=4)), cwd=tmp)
    assert one.returncode == 0, one.stdout + one.stderr
    return {"tmp": tmp, "data": data, "two": tmp / "two", "one": tmp / "one", "log": two.stdout + two.stderr}


def test_two_processes_with_batch_b_train_like_one_with_batch_2b(runs):
    two, one = (
        load_file(runs["two"] / "final" / "model.safetensors"),
        load_file(runs["one"] / "final" / "model.safetensors"),
    )
    base = load_file(runs["one"] / "base" / "model.safetensors")
    moved = max((one[k] - base[k]).abs().max().item() for k in one)
    assert moved > 1e-3  # training changed the weights...
    for key in one:  # ...and both runs changed them alike (float32 reduction order differs slightly)
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5)
    assert losses(runs["two"]) == pytest.approx(losses(runs["one"]), abs=1e-5)


def test_the_run_directory_is_written_once_by_the_main_process(runs):
    run = runs["two"]
    assert len(losses(run)) == 4  # one record per step, not one per process
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert runs["log"].count("train data: 20 rows") == 1  # logs come from the main process only


def test_resume_with_two_processes_ends_where_the_uninterrupted_run_ends(runs):
    resumed = runs["tmp"] / "resumed"
    shutil.copytree(runs["two"], resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "checkpoint-4")
    config = yaml.safe_load((runs["tmp"] / "two.yaml").read_text())
    config["output_dir"] = str(resumed)
    path = runs["tmp"] / "resumed.yaml"
    path.write_text(yaml.safe_dump(config))
    result = llmft("train", str(path), "--nproc", "2", "--resume", cwd=runs["tmp"])
    assert result.returncode == 0, result.stdout + result.stderr
    expected = load_file(runs["two"] / "final" / "model.safetensors")
    actual = load_file(resumed / "final" / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6)


def test_dpo_and_grpo_run_with_two_processes(runs, tmp_path):
    pairs = [{"prompt": f"Say {w}", "chosen": w, "rejected": w[::-1]} for w in ["yes", "cat", "dog", "sun"] * 2]
    dpo_data = tmp_path / "pairs.jsonl"
    dpo_data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    dpo = write_config(
        tmp_path,
        "dpo",
        dpo_data,
        batch=2,
        method={"name": "dpo"},
        data={"train": {"path": str(dpo_data), "format": "preference"}, "max_length": 64},
        training={"max_steps": 2},
    )
    grpo = grpo_config(tmp_path, "tests.e2e.grpo_rewards:digit_share", training={"max_steps": 2})
    for config, run in ((dpo, tmp_path / "dpo"), (grpo, tmp_path / "grpo")):
        result = llmft("train", str(config), "--nproc", "2", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads((run / "manifest.json").read_text())["status"] == "completed"
        assert (run / "final" / "model.safetensors").is_file() and len(losses(run)) == 2


def test_a_failing_process_stops_the_run_with_a_clear_message(tmp_path):
    config = grpo_config(tmp_path, "tests.e2e.grpo_rewards:fails_on_rank_1", name="flaky")
    result = llmft("train", str(config), "--nproc", "2", cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "reward `flaky`: raised RuntimeError: reward service unreachable from rank 1" in output
    assert "a training process exited with code" in output


def test_fsdp_shards_the_model_and_ends_like_ddp(runs):
    config = yaml.safe_load((runs["tmp"] / "two.yaml").read_text())
    config["output_dir"] = str(runs["tmp"] / "fsdp")
    config["distributed"] = {"strategy": "fsdp"}
    path = runs["tmp"] / "fsdp.yaml"
    path.write_text(yaml.safe_dump(config))
    result = llmft("train", str(path), "--nproc", "2", cwd=runs["tmp"])
    assert result.returncode == 0, result.stdout + result.stderr
    final = runs["tmp"] / "fsdp" / "final"
    assert not (final / "training_args.bin").exists()  # no pickle in final/
    expected = load_file(runs["two"] / "final" / "model.safetensors")
    actual = load_file(final / "model.safetensors")
    assert sorted(actual) == sorted(expected)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-5)
