"""The runs page's view of run directories: a killed run is interrupted, not running; metrics survive a cut line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from llm_finetuning.ui import runs


def make_run(root: Path, name: str, **manifest) -> Path:
    path = root / name
    path.mkdir(parents=True)
    fields = {"status": "completed", "method": "sft", "adapter": "lora", "model": "tiny", "started_at": name}
    (path / "manifest.json").write_text(json.dumps(fields | manifest))
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_follows_the_manifest_and_the_process(tmp_path: Path):
    host = socket.gethostname()
    make_run(tmp_path, "2026-01-01-done")
    make_run(tmp_path, "2026-01-02-live", status="running", host=host, pid=os.getpid())
    make_run(tmp_path, "2026-01-03-killed", status="running", host=host, pid=dead_pid())
    make_run(tmp_path, "2026-01-04-elsewhere", status="running", host="another-machine", pid=1)
    make_run(tmp_path, "2026-01-05-failed", status="failed", error="ValueError: boom")
    (tmp_path / "not-a-run").mkdir()
    listed = {r.name: r for r in runs.list_runs(tmp_path)}
    assert {name: r.status for name, r in listed.items()} == {
        "2026-01-01-done": "completed",
        "2026-01-02-live": "running",
        "2026-01-03-killed": "interrupted",  # SIGKILL never wrote `interrupted`: its process is gone
        "2026-01-04-elsewhere": "running",  # nothing here can tell
        "2026-01-05-failed": "failed",
    }
    assert [r.name for r in runs.list_runs(tmp_path)][0] == "2026-01-05-failed"  # newest first
    assert listed["2026-01-05-failed"].error == "ValueError: boom"


def test_a_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(200):  # exited but not reaped: still in the process table
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    assert not runs.alive(child.pid)
    child.wait()
    assert not runs.alive(child.pid) and runs.alive(os.getpid()) and not runs.alive(None)


def test_metrics_keep_the_last_value_of_each_and_skip_a_cut_line(tmp_path: Path):
    path = make_run(tmp_path, "r")
    lines = [
        {"step": 1, "epoch": 0.1, "loss": 2.0, "learning_rate": 1e-3},
        {"step": 2, "epoch": 0.2, "loss": 1.5, "learning_rate": 9e-4},
        {"step": 2, "epoch": 0.2, "eval_loss": 1.7},
    ]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 3, "lo')
    assert runs.read_metrics(path) == lines
    info = runs.run_info(path)
    assert info.step == 2 and info.last == {"loss": 1.5, "learning_rate": 9e-4, "eval_loss": 1.7}
    assert runs.table([info]) == [["r", "completed", "sft", "lora", "tiny", 2, 1.5, 1.7, "r"]]


def test_an_interrupted_run_names_its_checkpoint(tmp_path: Path):
    path = make_run(tmp_path, "r", status="interrupted")
    for step, complete in ((2, True), (4, False)):
        checkpoint = path / "checkpoints" / f"checkpoint-{step}"
        checkpoint.mkdir(parents=True)
        if complete:
            (checkpoint / "trainer_state.json").write_text("{}")
    assert runs.run_info(path).checkpoint.name == "checkpoint-2"  # 4 was cut off while saving
