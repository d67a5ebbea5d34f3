"""`llmft runs`: a run whose manifest still says `running` but whose process is gone (SIGKILL) is listed as
interrupted, with the command that resumes it; a live one stays running; a finished one keeps its status."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from typer.testing import CliRunner

from llm_finetuning.cli.main import app


def make_run(root, name, status, pid=None, checkpoint=False):
    run = root / name
    run.mkdir(parents=True)
    manifest = {"status": status, "started_at": f"2026-12-07T0{len(name)}:00:00", "method": "sft", "model": "tiny",
                "host": socket.gethostname(), "pid": pid}  # fmt: skip
    (run / "manifest.json").write_text(json.dumps(manifest))
    (run / "config.yaml").write_text("output_dir: x\n")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 1.25}) + "\n")
    if checkpoint:
        target = run / "checkpoints" / "checkpoint-3"
        target.mkdir(parents=True)
        (target / "trainer_state.json").write_text("{}")
        (run / "checkpoints" / "checkpoint-4").mkdir()  # half written when the process died: skipped
    return run


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_killed_run_is_interrupted_with_its_resume_command(tmp_path):
    killed = make_run(tmp_path, "killed", "running", pid=dead_pid(), checkpoint=True)
    make_run(tmp_path, "live", "running", pid=os.getpid())
    make_run(tmp_path, "done1", "completed", pid=dead_pid())
    lost = make_run(tmp_path, "lost", "running", pid=dead_pid())  # killed before its first checkpoint
    result = CliRunner().invoke(app, ["runs", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    listing = {item["run"].rsplit("/", 1)[-1]: item for item in json.loads(result.stdout)}
    assert {name: item["status"] for name, item in listing.items()} == {
        "killed": "interrupted", "live": "running", "done1": "completed", "lost": "interrupted",
    }  # fmt: skip
    assert listing["killed"]["checkpoint"] == str(killed / "checkpoints" / "checkpoint-3")
    assert listing["killed"]["resume"] == f"llmft train {killed / 'config.yaml'} --resume"
    assert listing["live"]["resume"] is None and listing["lost"]["resume"] is None
    text = CliRunner().invoke(app, ["runs", str(tmp_path)], env={"COLUMNS": "250"}).output
    assert f"resume with: llmft train {killed / 'config.yaml'} --resume" in text
    assert f"{lost}: interrupted, no complete checkpoint to resume from" in text


def test_a_missing_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["runs", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such folder" in result.output and "Traceback" not in result.output
