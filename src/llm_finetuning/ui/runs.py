"""The run directories under a folder: status, method, model, progress and metrics, as the UI lists them.

A run's `manifest.json` says `running` from its start until it ends. A process killed with SIGKILL (or a machine
that lost power) never gets to write `interrupted`, so a run that says `running` is only shown as running while
its process (`pid`, on this `host`) is alive; otherwise it is `interrupted`, and can be resumed from its last
checkpoint.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_finetuning.runs.metrics import read_metrics as _read_metrics
from llm_finetuning.runs.rundir import RunDir


@dataclass
class RunInfo:
    path: Path
    status: str
    """running, completed, failed, interrupted; `interrupted` also for a run whose process is gone."""
    method: str = ""
    adapter: str = ""
    model: str = ""
    started_at: str = ""
    finished_at: str = ""
    step: int | None = None
    last: dict[str, Any] = field(default_factory=dict)
    """The last logged value of each metric (loss, eval_loss, rewards...)."""
    error: str = ""
    checkpoint: Path | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    """`progress.json`: step of max_steps, seconds per step, time left, device memory."""
    evaluation: dict[str, Any] = field(default_factory=dict)
    """The manifest's `eval` summary: task metrics before and after training, the golden-set gate."""

    @property
    def name(self) -> str:
        return self.path.name


def alive(pid: int | None) -> bool:
    """Whether a process with this id exists on this machine (and is not a zombie)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) answered, so it exists


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The records of a run's `metrics.jsonl` (a line cut off by a killed process is skipped)."""
    return _read_metrics(RunDir(run).metrics)


def read_progress(run: Path) -> dict[str, Any]:
    """The run's `progress.json` (step, max_steps, eta_s, memory_gib...), or {} before its first step."""
    try:
        found = json.loads(RunDir(run).progress.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def status_of(manifest: dict[str, Any]) -> str:
    status = str(manifest.get("status", "unknown"))
    if status != "running":
        return status
    if manifest.get("host") not in (None, socket.gethostname()):
        return "running"  # on another machine: nothing here can tell
    return "running" if alive(manifest.get("pid")) else "interrupted"


def run_info(path: Path) -> RunInfo | None:
    """What the UI shows of one run directory, or None for a folder that is not one."""
    run = RunDir(Path(path))
    try:
        manifest = json.loads(run.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    records = read_metrics(run.root)
    last: dict[str, Any] = {}
    for record in records:
        last.update({k: v for k, v in record.items() if k not in ("step", "epoch") and isinstance(v, int | float)})
    info = RunInfo(
        path=run.root,
        status=status_of(manifest),
        method=str(manifest.get("method", "")),
        adapter=str(manifest.get("adapter", "")),
        model=str(manifest.get("model", "")),
        started_at=str(manifest.get("started_at") or ""),
        finished_at=str(manifest.get("finished_at") or ""),
        step=records[-1].get("step") if records else None,
        last=last,
        error=str(manifest.get("error") or ""),
        progress=read_progress(run.root),
        evaluation=manifest.get("eval") if isinstance(manifest.get("eval"), dict) else {},
    )
    if info.status in ("interrupted", "failed"):
        info.checkpoint = run.last_checkpoint()
    return info


def list_runs(folder: Path) -> list[RunInfo]:
    """Every run directory under `folder` (any depth up to 3), newest first."""
    folder = Path(folder)
    found = []
    for manifest in (
        sorted(folder.glob("manifest.json"))
        + sorted(folder.glob("*/manifest.json"))
        + sorted(folder.glob("*/*/manifest.json"))
    ):
        info = run_info(manifest.parent)
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda r: r.started_at, reverse=True)


def table(runs: list[RunInfo]) -> list[list[Any]]:
    """Rows of the runs table: name, status, method, adapter, model, step, loss, eval loss, started."""
    rows = []
    for run in runs:
        rows.append(
            [
                str(run.name),
                run.status,
                run.method,
                run.adapter,
                run.model,
                run.step if run.step is not None else "",
                _rounded(run.last.get("loss")),
                _rounded(run.last.get("eval_loss")),
                run.started_at,
            ]
        )
    return rows


TABLE_HEADERS = ["run", "status", "method", "adapter", "model", "step", "loss", "eval loss", "started"]


def _rounded(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else ("" if value is None else value)
