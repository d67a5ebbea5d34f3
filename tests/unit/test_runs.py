"""Run-directory helpers: checkpoints, plots, manifest."""

from __future__ import annotations

import json

import pytest

from llm_finetuning.runs import plots
from llm_finetuning.runs.rundir import RunDir, write_manifest

pytestmark = pytest.mark.unit


def test_last_checkpoint_skips_one_left_half_written(tmp_path):
    run = RunDir(tmp_path)
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = run.checkpoints / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (run.checkpoints / "checkpoint-20").mkdir()
    (run.checkpoints / "checkpoint-20" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert run.last_checkpoint() == run.checkpoints / "checkpoint-10"


def test_plot_series_keeps_the_last_value_of_a_relogged_step():
    records = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "loss": 2.5}, {"step": 3, "loss": 1.0}]
    assert plots._series(records, "loss") == ([1, 2, 3], [3.0, 2.5, 1.0])


def test_manifest_updates_merge_and_reject_unknown_status(tmp_path):
    run = RunDir(tmp_path)
    write_manifest(run, status="running", seed=1)
    write_manifest(run, status="completed")
    assert json.loads(run.manifest.read_text()) == {"status": "completed", "seed": 1}
    with pytest.raises(ValueError):
        write_manifest(run, status="exploded")
