"""Whole-run figures of a resumed run, from the checkpoint it resumed from: exact when logging lines up with
saving, the mean for steps never logged (and counted), the session's own values kept."""

from __future__ import annotations

import json

import pytest

from llm_finetuning.runs.resume_totals import ELAPSED_FILE, read_prior, whole_run


def checkpoint(tmp_path, step, history, seconds=None):
    folder = tmp_path / f"checkpoint-{step}"
    folder.mkdir()
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": history}))
    if seconds is not None:
        (folder / ELAPSED_FILE).write_text(json.dumps({"train_seconds": seconds}))
    return folder


def test_aligned_logs_give_the_exact_whole_run_mean(tmp_path):
    # Windows of 2 steps: steps 1-2 mean 4.0, steps 3-4 mean 2.0; the resumed session ran steps 5-8 at mean 1.0.
    history = [{"step": 2, "loss": 4.0, "num_tokens": 100.0}, {"step": 4, "loss": 2.0, "num_tokens": 210.0}]
    prior = read_prior(checkpoint(tmp_path, 4, history, seconds=12.5))
    assert (prior.step, prior.loss_sum, prior.loss_steps, prior.num_tokens) == (4, 12.0, 4, 210.0)
    out = whole_run({"train_loss": 1.0, "train_runtime": 7.5, "epoch": 2.0}, prior, global_step=8)
    assert out["train_loss"] == pytest.approx((12.0 + 4 * 1.0) / 8)
    assert out["session_train_loss"] == 1.0 and out["train_runtime"] == 20.0 and out["session_train_runtime"] == 7.5
    assert out["resumed_from_step"] == 4 and "train_loss_estimated_steps" not in out


def test_steps_never_logged_before_the_checkpoint_take_the_mean_and_are_counted(tmp_path):
    prior = read_prior(checkpoint(tmp_path, 5, [{"step": 4, "loss": 3.0}, {"step": 6, "loss": 9.0}]))
    assert prior.loss_steps == 4 and prior.seconds is None  # step 6 is after the checkpoint; no elapsed file
    out = whole_run({"train_loss": 1.0, "train_runtime": 2.0}, prior, global_step=10)
    assert out["train_loss"] == pytest.approx((3.0 * 4 + 3.0 * 1 + 1.0 * 5) / 10)
    assert out["train_loss_estimated_steps"] == 1
    assert out["train_runtime"] == 2.0  # only the session's seconds are known
