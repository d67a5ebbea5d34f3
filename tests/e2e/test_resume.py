"""Exact resume: a run killed with SIGKILL and continued with `llmft train CONFIG --resume` ends where an
uninterrupted run of the same config ends (same final weights, same per-step losses), on CPU.

The config exercises everything a resume must restore: the optimizer moments (AdamW with weight decay), the
scheduler (warm-up then cosine), the data order of later epochs (20 rows = 3 optimizer steps per epoch with a
short last accumulation step, 30 steps = 10 epochs), the dataloader position inside an epoch, and, for LoRA
with dropout, the RNG state. LoRA is killed after checkpoint-10 (mid-epoch: 10 % 3 == 1, so the resumed
epoch skips 2 batches); full fine-tuning after checkpoint-15 (an epoch boundary), the other resume path. (The
process is caught a few steps after that checkpoint; if it is not caught in time, after a later one.)
"""

from __future__ import annotations

import json
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
from safetensors.torch import load_file

from llm_finetuning.config import Config
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e

MAX_STEPS = 30
SAVE_STEPS = 5
TOLERANCE = 1e-5

TRAINING = {
    "max_steps": MAX_STEPS,
    "save_steps": SAVE_STEPS,
    "per_device_batch_size": 4,
    "gradient_accumulation_steps": 2,
    "logging_steps": 1,
    "learning_rate": 1.0e-2,
    "warmup_steps": 3,
    "lr_scheduler": "cosine",
    "weight_decay": 0.1,
    "mixed_precision": "no",
    "seed": 0,
}
LORA = {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.1}
FULL = {"method": "full"}


def loss_records(run: Path) -> list[dict[str, Any]]:
    """The per-step training log records (those with a `loss`) of metrics.jsonl, in file order."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "loss" in record]


def last_logged_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
    return max(steps, default=0)


def kill_between_checkpoints(process: subprocess.Popen, run: Path, after: int, log: Path) -> int:
    """SIGKILL the training process once it has saved checkpoint-`after` and logged a later step.

    Timing decides only *when* the process dies, never what the test compares. To be sure it does not die while
    writing a checkpoint, it is frozen (SIGSTOP) first and killed only if its last logged step is not a save
    step: a step is logged before its checkpoint is written, and the next step is logged after it is complete.
    Otherwise it is let go (SIGCONT) and caught at a later step. Returns the last step logged before the kill.
    """
    deadline = time.monotonic() + 300
    while True:
        assert process.poll() is None, f"the run ended before it could be killed:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"the run did not get past step {after}:\n{log.read_text()}"
        if last_logged_step(run) > after:
            os.kill(process.pid, signal.SIGSTOP)
            _, status = os.waitpid(process.pid, os.WUNTRACED)  # returns once it is really stopped
            assert os.WIFSTOPPED(status), f"the run ended before it could be killed:\n{log.read_text()}"
            frozen_at = last_logged_step(run)  # nothing more can be written now
            if frozen_at % SAVE_STEPS != 0 and frozen_at < MAX_STEPS:
                process.kill()
                process.wait(timeout=60)
                assert process.returncode == -signal.SIGKILL
                return frozen_at
            os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.005)


@pytest.fixture
def llmft():
    """Start `llmft train CONFIG [OPTIONS]` in a new process on the CPU, its output going to `log`; whatever is
    still running when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(config: Path, log: Path, *options: str) -> subprocess.Popen:
        with log.open("w") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "llm_finetuning.cli.main", "train", str(config), *options],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""},
            )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The adapter or full-model weights saved in `folder` (a checkpoint or `final/`)."""
    files = [folder / name for name in ("adapter_model.safetensors", "model.safetensors") if (folder / name).is_file()]
    assert len(files) == 1, sorted(p.name for p in folder.iterdir())
    return load_file(files[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("adapter", "kill_after"),
    [pytest.param(LORA, 10, id="lora-dropout-mid-epoch"), pytest.param(FULL, 15, id="full-epoch-boundary")],
)
def test_sigkilled_run_resumes_to_the_same_weights_and_losses(
    tmp_path, write_jsonl, write_yaml, qa_rows, llmft, adapter, kill_after
):
    data = write_jsonl(qa_rows)  # 20 rows: 5 batches of 4 = 3 optimizer steps per epoch (2 + 2 + 1 batches)
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"

    # The same config in two run directories, both trained through the CLI at the same time: one uninterrupted,
    # one killed with SIGKILL after checkpoint-`kill_after`.
    config = tiny_config(data, reference, adapter=adapter, training=TRAINING)
    reference_run = llmft(write_yaml(config, "reference.yaml"), tmp_path / "reference.log")
    path = write_yaml({**config, "output_dir": str(interrupted)}, "interrupted.yaml")
    process = llmft(path, tmp_path / "interrupted.log")
    killed_at = kill_between_checkpoints(process, interrupted, kill_after, tmp_path / "interrupted.log")
    resumed_from = killed_at - killed_at % SAVE_STEPS
    assert resumed_from >= kill_after
    assert json.loads((interrupted / "manifest.json").read_text())["status"] == "running"  # SIGKILL: no cleanup
    assert not (interrupted / "final").exists()
    assert (interrupted / "checkpoints" / f"checkpoint-{resumed_from}" / "trainer_state.json").is_file()
    at_checkpoint = weights(interrupted / "checkpoints" / f"checkpoint-{resumed_from}")
    before_kill = loss_records(interrupted)
    # The training seconds before the kill, kept in the checkpoint (it may be rotated away after the resume).
    elapsed = interrupted / "checkpoints" / f"checkpoint-{resumed_from}" / "llmft_elapsed.json"
    before = json.loads(elapsed.read_text())["train_seconds"]
    assert [r["step"] for r in before_kill] == list(range(1, killed_at + 1))

    # Continue it from its last checkpoint.
    resumed = llmft(path, tmp_path / "resumed.log", "--resume")
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()
    assert reference_run.wait(timeout=300) == 0, (tmp_path / "reference.log").read_text()
    manifest = json.loads((interrupted / "manifest.json").read_text())
    assert manifest["status"] == "completed"

    # metrics.jsonl: steps up to the kill, then the resumed steps from the checkpoint on. The steps between the
    # checkpoint and the kill are logged twice, no others; the second time they must have the same values.
    records = loss_records(interrupted)
    steps = [r["step"] for r in records]
    assert steps == list(range(1, killed_at + 1)) + list(range(resumed_from + 1, MAX_STEPS + 1))
    first, again = before_kill[resumed_from:], records[killed_at : 2 * killed_at - resumed_from]
    assert [r["step"] for r in again] == [r["step"] for r in first] != []
    for earlier, later in zip(first, again, strict=True):
        assert math.isclose(later["loss"], earlier["loss"], rel_tol=0, abs_tol=TOLERANCE), (earlier, later)
        assert math.isclose(later["grad_norm"], earlier["grad_norm"], rel_tol=0, abs_tol=TOLERANCE)
        assert later["learning_rate"] == earlier["learning_rate"]

    # Step for step (the last occurrence of each step), the interrupted run logged what the reference logged.
    expected = {r["step"]: r for r in loss_records(reference)}
    got = {r["step"]: r for r in records}
    assert list(expected) == list(got) == list(range(1, MAX_STEPS + 1))
    for step, want in expected.items():
        have = got[step]
        assert math.isclose(have["loss"], want["loss"], rel_tol=0, abs_tol=TOLERANCE), (step, want, have)
        assert math.isclose(have["grad_norm"], want["grad_norm"], rel_tol=0, abs_tol=TOLERANCE), (step, want, have)
        assert math.isclose(have["learning_rate"], want["learning_rate"], rel_tol=1e-12, abs_tol=0), (step,)
    # The final loss: the loss logged at the last step.
    assert math.isclose(got[MAX_STEPS]["loss"], expected[MAX_STEPS]["loss"], rel_tol=0, abs_tol=TOLERANCE)
    # Whole-run figures: train_loss is the mean over all steps (the trainer's own covers the resumed session
    # only, kept as session_train_loss), train_runtime adds the seconds before the kill, num_tokens goes on.
    final = manifest["final_metrics"]
    reference_final = json.loads((reference / "manifest.json").read_text())["final_metrics"]
    assert math.isclose(reference_final["train_loss"], sum(r["loss"] for r in expected.values()) / MAX_STEPS,
                        abs_tol=TOLERANCE)  # fmt: skip
    assert math.isclose(final["train_loss"], reference_final["train_loss"], abs_tol=TOLERANCE)
    resumed_steps = [got[s]["loss"] for s in range(resumed_from + 1, MAX_STEPS + 1)]
    assert math.isclose(final["session_train_loss"], sum(resumed_steps) / len(resumed_steps), abs_tol=TOLERANCE)
    assert final["resumed_from_step"] == resumed_from
    assert before > 0 and math.isclose(final["train_runtime"], before + final["session_train_runtime"], abs_tol=1e-3)
    assert got[MAX_STEPS]["num_tokens"] == expected[MAX_STEPS]["num_tokens"]

    # The final weights, tensor for tensor.
    want_weights, have_weights = weights(reference / "final"), weights(interrupted / "final")
    assert want_weights.keys() == have_weights.keys()
    for name, tensor in want_weights.items():
        torch.testing.assert_close(have_weights[name], tensor, atol=TOLERANCE, rtol=0, msg=name)
    # The resumed steps moved them, so the match above is not two copies of an untouched checkpoint.
    assert any(not torch.equal(at_checkpoint[name], have_weights[name]) for name in at_checkpoint)


def test_resume_skips_a_checkpoint_the_kill_left_half_written(tmp_path, write_jsonl, qa_rows):
    training = {**TRAINING, "max_steps": 10}
    config = Config.model_validate(tiny_config(write_jsonl(qa_rows), tmp_path / "run", adapter=LORA, training=training))
    run = tmp_path / "run"
    assert train(config).status == "completed"
    expected = weights(run / "final")
    # What SIGKILL during the save of checkpoint-10 leaves: its weights, optimizer, ... but no trainer_state.json.
    (run / "checkpoints" / "checkpoint-10" / "trainer_state.json").unlink()
    shutil.rmtree(run / "final")

    assert train(config, resume=True).status == "completed"  # from checkpoint-5, the last complete one
    assert [r["step"] for r in loss_records(run)] == [*range(1, 11), *range(6, 11)]
    for name, tensor in weights(run / "final").items():
        torch.testing.assert_close(tensor, expected[name], atol=TOLERANCE, rtol=0, msg=name)
