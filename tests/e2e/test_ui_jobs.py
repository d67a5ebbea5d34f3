"""Runs started from the UI: the same run directory as `llmft train`, stop saves and marks interrupted, resume
continues from the checkpoint, and a killed run shows as interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from llm_finetuning.ui import form, jobs, runs
from tests.conftest import tiny_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def wait(condition, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def status(path: Path) -> str:
    info = runs.run_info(path)
    return info.status if info else "absent"


def finished(path: Path) -> bool:
    return status(path) in ("completed", "failed", "interrupted")


def text_of(config: dict) -> str:
    return form.to_yaml(config)


def test_a_ui_launch_is_the_cli_run(tmp_path: Path, write_jsonl, qa_rows, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs"
    config = tiny_config(write_jsonl(qa_rows), folder / "from-ui")
    started = jobs.launch(folder, "from-ui", text_of(config))
    assert started.command[-2:] == ["train", str(folder / "from-ui.yaml")]
    cli_yaml = tmp_path / "from-cli.yaml"
    cli_yaml.write_text(text_of({**config, "output_dir": str(folder / "from-cli")}))
    subprocess.run([sys.executable, "-m", "llm_finetuning.cli.main", "train", str(cli_yaml)], check=True, cwd=tmp_path)
    wait(lambda: finished(folder / "from-ui"), what="the UI's run")
    assert status(folder / "from-ui") == "completed", started.log.read_text()[-3000:]
    ui_config = yaml.safe_load((folder / "from-ui" / "config.yaml").read_text())
    cli_config = yaml.safe_load((folder / "from-cli" / "config.yaml").read_text())
    assert ui_config.pop("output_dir") != cli_config.pop("output_dir")
    assert ui_config == cli_config
    ui_weights = load_file(folder / "from-ui" / "final" / "adapter_model.safetensors")
    cli_weights = load_file(folder / "from-cli" / "final" / "adapter_model.safetensors")
    assert ui_weights.keys() == cli_weights.keys()
    assert all((ui_weights[k] == cli_weights[k]).all() for k in ui_weights)
    progress = runs.read_progress(folder / "from-ui")  # what the runs page shows as progress
    assert progress["step"] == progress["max_steps"] == config["training"]["max_steps"]
    assert progress["eta_s"] == 0 and progress["seconds_per_step"] > 0 and progress["memory_gib"] > 0


def test_a_run_outlives_the_ui_that_started_it(tmp_path: Path, write_jsonl, qa_rows):
    """The UI process launches and exits at once (closed, crashed): the run still finishes."""
    folder = tmp_path / "runs"
    text = text_of(tiny_config(write_jsonl(qa_rows), folder / "orphan"))
    script = "import sys; from pathlib import Path; from llm_finetuning.ui import jobs; "
    script += "print(jobs.launch(Path(sys.argv[1]), 'orphan', sys.argv[2]).pid)"
    launcher = subprocess.run(
        [sys.executable, "-c", script, str(folder), text], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    pid = int(launcher.stdout.strip().splitlines()[-1])
    try:  # its own session: a terminal's Ctrl-C or hang-up to the UI does not reach it
        assert os.getsid(pid) == pid
    except ProcessLookupError:  # already finished (a fast machine): the status below still tells
        pass
    wait(lambda: finished(folder / "orphan"), what="the orphaned run")
    assert status(folder / "orphan") == "completed"


def long_config(data: Path, out: Path) -> dict:
    config = tiny_config(data, out)
    config["training"].update({"max_steps": 400, "save_steps": 2, "per_device_batch_size": 2})
    return config


def test_stop_checkpoints_and_resume_continues(tmp_path: Path, write_jsonl, qa_rows, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs"
    run = folder / "long"
    started = jobs.launch(folder, "long", text_of(long_config(write_jsonl(qa_rows), run)))
    wait(lambda: len(runs.read_metrics(run)) >= 3, what="a few logged steps")
    assert status(run) == "running"
    with pytest.raises(jobs.UserError, match="still running"):
        jobs.resume(folder, run)
    assert jobs.stop(run) == started.pid  # the training process itself (manifest pid)
    wait(lambda: finished(run), what="the stop")
    info = runs.run_info(run)
    assert info.status == "interrupted" and info.checkpoint is not None, started.log.read_text()[-3000:]
    stopped_at = int(info.checkpoint.name.split("-")[-1])
    with pytest.raises(jobs.UserError, match="not running"):
        jobs.stop(run)

    resumed = jobs.resume(folder, run)
    assert "--resume" in resumed.command
    wait(lambda: status(run) == "running" and max(r["step"] for r in runs.read_metrics(run)) > stopped_at + 1)
    os.kill(json.loads((run / "manifest.json").read_text())["pid"], signal.SIGKILL)
    wait(lambda: status(run) == "interrupted", timeout=30, what="the killed run to show as interrupted")
    # The resumed run went on from its checkpoint: every step logged once, none repeated or skipped.
    steps = [r["step"] for r in runs.read_metrics(run) if "loss" in r]
    assert steps == list(range(1, steps[-1] + 1)) and steps[-1] > stopped_at + 1
