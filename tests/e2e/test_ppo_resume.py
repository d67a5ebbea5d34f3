"""Exact resume of PPO runs: a run stopped after a checkpoint (crash, SIGTERM, SIGKILL) and continued with
`resume` ends with the weights, value head and per-step statistics of an uninterrupted run of the same config.

The config exercises what a resume must restore: AdamW moments with weight decay, the adaptive KL coefficient
(it moves every step), the prompt order across passes (10 prompts, 4 per step: passes end inside a step, so the
reshuffles of later passes matter), the mini-batch order, torch's sampling generator, and Python's and NumPy's
generators (the reward adds noise from both, see `ppo_rewards.noisy_digits`). 8 steps with a checkpoint every 3
and at the last step, 2 kept: checkpoint-3, -6, -8. Each interrupted run is stopped during or after step 4.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.optim.lr_scheduler import LambdaLR

from llm_finetuning.config import Config
from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.errors import UserError
from llm_finetuning.methods.ppo import (
    CheckpointMismatch,
    PolicyWithValueHead,
    PPOOptions,
    PPOTrainer,
    frozen_copy,
    read_state,
)
from llm_finetuning.methods.ppo.trainer import WALL_CLOCK_STATS
from llm_finetuning.models.tiny import build_model, build_tokenizer
from llm_finetuning.train import train
from tests.conftest import REPO
from tests.e2e import ppo_rewards

pytestmark = pytest.mark.e2e

STEPS, SAVE_STEPS, KEEP = 8, 3, 2
TOLERANCE = 1e-6
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
ADAPTERS = {"lora": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1}, "full": {"method": "full"}}
WEIGHTS = {"lora": "adapter_model.safetensors", "full": "model.safetensors"}


def ppo_config(prompts: Path, output_dir: Path, kind: str) -> dict[str, Any]:
    return {
        "model": {"name": "tiny", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 2}},
        "adapter": ADAPTERS[kind],
        "method": {
            "name": "ppo",
            "reward_function": "tests.e2e.ppo_rewards:noisy_digits",
            "max_new_tokens": 4,
            "mini_batch_size": 2,
            "ppo_epochs": 2,
            "adaptive_kl": True,
            "target_kl": 0.01,
            "horizon": 50,
        },
        "data": {"train": {"path": str(prompts), "format": "prompt_only"}, "max_length": 64},
        "training": {
            "max_steps": STEPS,
            "per_device_batch_size": 4,
            "learning_rate": 1.0e-2,
            "weight_decay": 0.1,
            "seed": 0,
            "save_steps": SAVE_STEPS,
            "save_total_limit": KEEP,
        },
        "output_dir": str(output_dir),
    }


def set_hook(at: int = 0, action: str = "none") -> None:
    ppo_rewards.HOOK.update(calls=0, at=at, action=action, file=None)


@pytest.fixture(autouse=True)
def _no_hook():
    set_hook()
    yield
    set_hook()


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Say {word}"}) + "\n" for word in WORDS))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prompts):
    """The uninterrupted run of each kind (`lora`, `full`), trained once per module."""
    runs: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in runs:
            out = tmp_path_factory.mktemp(f"reference-{kind}") / "run"
            set_hook()
            assert train(Config.model_validate(ppo_config(prompts, out, kind))).status == "completed"
            assert checkpoint_names(out) == ["checkpoint-6", "checkpoint-8"]  # 3, 6, 8 written, 2 kept
            runs[kind] = out
        return runs[kind]

    return get


def records(run: Path) -> list[dict[str, Any]]:
    """metrics.jsonl in file order, without the wall-clock time."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_STATS} for line in lines]


def checkpoint_names(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir())


def assert_same_run(run: Path, reference: Path, kind: str) -> None:
    """Step for step (the last record of each step), the same statistics; the same final weights, value head and
    final metrics."""
    want = {r["step"]: r for r in records(reference)}
    have = {r["step"]: r for r in records(run)}
    assert list(want) == list(have) == list(range(1, STEPS + 1))
    for step, expected in want.items():
        assert have[step].keys() == expected.keys()
        for key, value in expected.items():
            assert math.isclose(have[step][key], value, rel_tol=0, abs_tol=TOLERANCE), (step, key, value, have[step])
    assert len({r["kl_coef"] for r in want.values()}) == STEPS  # the adaptive coefficient moved every step
    for name in (WEIGHTS[kind], "value_head.safetensors"):
        expected, got = load_file(reference / "final" / name), load_file(run / "final" / name)
        assert expected.keys() == got.keys()
        for key, tensor in expected.items():
            torch.testing.assert_close(got[key], tensor, atol=TOLERANCE, rtol=0, msg=key)
    final = [json.loads((r / "manifest.json").read_text())["final_metrics"] for r in (reference, run)]
    assert final[0] == pytest.approx(final[1], abs=TOLERANCE) and "final_reward" in final[0]


def assert_checkpoint(folder: Path, kind: str, step: int) -> None:
    """A complete checkpoint of `step`, in safetensors and JSON only (no pickle)."""
    names = {p.name for p in folder.iterdir()}
    policy = {"adapter_model.safetensors", "adapter_config.json"} if kind == "lora" else {"model.safetensors"}
    assert policy | {"value_head.safetensors", "optimizer.safetensors", "rng_state.safetensors"} <= names
    assert all(name.endswith((".safetensors", ".json", ".md")) for name in names), names
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["global_step"] == step and len(state["history"]) == step


@pytest.mark.parametrize(
    ("kind", "action"),
    [("lora", "raise"), ("full", "raise"), ("lora", "sigterm"), ("full", "sigterm")],
)
def test_stopped_run_resumes_to_the_uninterrupted_end(tmp_path, prompts, reference, kind, action):
    """`raise`: a crash in step 5, after checkpoint-3 and the logged step 4 (which is lost, run again and logged a
    second time). `sigterm`: a graceful stop asked for in step 4, which completes, is checkpointed, and the run
    ends `interrupted`."""
    run = tmp_path / "run"
    config = Config.model_validate(ppo_config(prompts, run, kind))
    if action == "raise":
        set_hook(at=5, action="raise")
        with pytest.raises(RuntimeError, match="simulated crash in PPO step 5"):
            train(config)
        status, logged, resumed_from = "failed", 4, 3
    else:
        set_hook(at=4, action="sigterm")
        assert train(config).status == "interrupted"
        status, logged, resumed_from = "interrupted", 4, 4
    assert json.loads((run / "manifest.json").read_text())["status"] == status
    assert [r["step"] for r in records(run)] == list(range(1, logged + 1))
    saved = sorted({"checkpoint-3", f"checkpoint-{resumed_from}"})
    assert checkpoint_names(run) == saved and not (run / "final").exists()
    assert_checkpoint(run / "checkpoints" / f"checkpoint-{resumed_from}", kind, resumed_from)
    at_checkpoint = load_file(run / "checkpoints" / f"checkpoint-{resumed_from}" / WEIGHTS[kind])

    set_hook()
    assert train(config, resume=True).status == "completed"
    assert [r["step"] for r in records(run)] == [*range(1, logged + 1), *range(resumed_from + 1, STEPS + 1)]
    assert_same_run(run, reference(kind), kind)  # the step logged twice has the same values both times
    if logged > resumed_from:
        assert records(run)[logged - 1] == pytest.approx(records(run)[logged], abs=TOLERANCE)
    assert checkpoint_names(run) == ["checkpoint-6", "checkpoint-8"]
    # The resumed steps moved the weights: the match is not two copies of an untouched checkpoint.
    final = load_file(run / "final" / WEIGHTS[kind])
    assert any(not torch.equal(final[name], tensor) for name, tensor in at_checkpoint.items())


@pytest.fixture
def llmft_process():
    """Processes started by a test; any still running at its end are killed."""
    started: list[subprocess.Popen] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigkilled_run_resumes_to_the_uninterrupted_end(tmp_path, prompts, reference, llmft_process):
    """`llmft train` in a subprocess, killed with SIGKILL in step 5 (after checkpoint-3 and the logged step 4)."""
    run, hung, log = tmp_path / "run", tmp_path / "hung", tmp_path / "train.log"
    config = ppo_config(prompts, run, "lora")
    path = tmp_path / "ppo.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",  # the same single torch thread as this process, hence the same arithmetic
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PPO_TEST_HOOK": f"5:hang:{hung}",
    }
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_finetuning.cli.main", "train", str(path)],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    llmft_process.append(process)
    deadline = time.monotonic() + 300
    while not hung.exists():  # the process waits in step 5's reward call until it is killed
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    process.kill()
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert json.loads((run / "manifest.json").read_text())["status"] == "running"  # SIGKILL: no cleanup
    assert checkpoint_names(run) == ["checkpoint-3"] and not (run / "final").exists()
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4]

    assert train(Config.model_validate(config), resume=True).status == "completed"
    assert [r["step"] for r in records(run)] == [1, 2, 3, 4, *range(4, STEPS + 1)]
    assert_same_run(run, reference("lora"), "lora")


def test_resume_skips_a_half_written_checkpoint(tmp_path, prompts, reference, caplog):
    run = tmp_path / "run"
    shutil.copytree(reference("lora"), run)
    checkpoints = run / "checkpoints"
    # A checkpoint-8 folder without its state file (written last), and what a kill during a save leaves: the
    # hidden folder the checkpoint was being built in.
    (checkpoints / "checkpoint-8" / "trainer_state.json").unlink()
    shutil.copytree(checkpoints / "checkpoint-6", checkpoints / ".checkpoint-9.partial")
    shutil.rmtree(run / "final")

    with caplog.at_level(logging.WARNING):
        result = train(Config.model_validate(ppo_config(prompts, run, "lora")), resume=True)
    assert result.status == "completed"
    assert "Skipping" in caplog.text and "checkpoint-8" in caplog.text
    assert [r["step"] for r in records(run)] == [*range(1, STEPS + 1), 7, 8]  # resumed from checkpoint-6
    assert_same_run(run, reference("lora"), "lora")
    assert [p.name for p in sorted(checkpoints.iterdir())] == ["checkpoint-6", "checkpoint-8"]
    assert_checkpoint(checkpoints / "checkpoint-8", "lora", STEPS)


def test_resume_with_another_config_is_refused_but_may_run_longer(tmp_path, prompts, reference):
    run = tmp_path / "run"
    shutil.copytree(reference("lora"), run)
    shutil.rmtree(run / "final")
    before = records(run)

    def resume(**changes: Any) -> Any:
        config = ppo_config(prompts, run, "lora")
        for section, values in changes.items():
            config[section] = {**config[section], **values}
        return train(Config.model_validate(config), resume=True)

    with pytest.raises(UserError, match=r"training\.per_device_batch_size: 4 in the checkpoint, 2 now") as error:
        resume(training={"per_device_batch_size": 2})
    assert f"Cannot resume from {run / 'checkpoints' / 'checkpoint-8'}" in str(error.value)
    with pytest.raises(UserError, match=r"adapter\.r: 4 in the checkpoint, 8 now"):
        resume(adapter={"r": 8})
    with pytest.raises(UserError, match=r"method\.kl_coef: 0\.05 in the checkpoint, 0\.1 now"):
        resume(method={"kl_coef": 0.1})
    assert records(run) == before  # refused before any step

    # The length of a run is not part of it: a finished run continues to a larger max_steps.
    assert resume(training={"max_steps": STEPS + 2}).status == "completed"
    assert [r["step"] for r in records(run)] == list(range(1, STEPS + 3))
    assert records(run)[:STEPS] == before
    assert checkpoint_names(run) == ["checkpoint-10", "checkpoint-9"]  # every 3 steps and the last, 2 kept


# ------------------------------------------------------------------------------ the trainer on its own
SHAPE = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2)


def trainer_with_scheduler(tokenizer, **changes: Any) -> PPOTrainer:
    torch.manual_seed(0)
    policy = build_model(SHAPE, tokenizer)
    model = PolicyWithValueHead(policy)
    options = PPOOptions(batch_size=3, mini_batch_size=3, max_new_tokens=3, ppo_epochs=2, learning_rate=1e-2)
    options = options.model_copy(update=changes)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=options.learning_rate)
    scheduler = LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    return PPOTrainer(
        model, tokenizer, options, ppo_rewards.digits, optimizer, frozen_copy(policy), lr_scheduler=scheduler
    )


def test_trainer_checkpoint_round_trip_with_a_scheduler_and_its_refusals(tmp_path):
    tokenizer = build_tokenizer()
    uninterrupted = trainer_with_scheduler(tokenizer)
    expected = uninterrupted.train(WORDS[:5], steps=3)

    first = trainer_with_scheduler(tokenizer)
    first.train(WORDS[:5], steps=1)
    first.save_checkpoint(tmp_path / "checkpoint")
    resumed = trainer_with_scheduler(tokenizer)
    resumed.load_checkpoint(tmp_path / "checkpoint", dataset_size=5)
    assert resumed.lr_scheduler.state_dict() == first.lr_scheduler.state_dict()
    got = resumed.train(WORDS[:5], steps=2)
    assert [{k: v for k, v in s.items() if k not in WALL_CLOCK_STATS} for s in got] == [
        {k: v for k, v in s.items() if k not in WALL_CLOCK_STATS} for s in expected[1:]
    ]
    assert got[-1]["learning_rate"] == pytest.approx(1e-2 / 7)  # the schedule went on: 6 optimizer steps
    for (name, want), have in zip(
        uninterrupted.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(want, have), name

    with pytest.raises(CheckpointMismatch, match="kl_coef: 0.05 in the checkpoint, 0.2 now"):
        trainer_with_scheduler(tokenizer, kl_coef=0.2).load_checkpoint(tmp_path / "checkpoint")
    with pytest.raises(CheckpointMismatch, match="prompts: 5 in the checkpoint, 6 now"):
        trainer_with_scheduler(tokenizer).load_checkpoint(tmp_path / "checkpoint", dataset_size=6)
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": []}))
    with pytest.raises(UserError, match="not a PPO checkpoint"):
        read_state(tmp_path / "trainer")
