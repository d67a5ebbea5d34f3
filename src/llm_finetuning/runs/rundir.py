"""Create and describe a run directory; never overwrite one by accident."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import RunDirError

logger = logging.getLogger(__name__)

STATUSES = ("running", "completed", "failed", "interrupted")


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run directory."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def progress(self) -> Path:
        """Step, max steps, time left and device memory, rewritten every step (`runs.metrics.ProgressFile`)."""
        return self.root / "progress.json"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def base(self) -> Path:
        """Where a base model that exists nowhere else (a tiny model) is saved, so `final/` can load."""
        return self.root / "base"

    @property
    def dropped_rows(self) -> Path:
        """Every row skipped with `data.on_error: skip`, one per line with its file, line and reason."""
        return self.root / "dropped_rows.txt"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint. transformers writes `trainer_state.json` last and not atomically,
        so a process killed while saving leaves a folder without a readable one: skip it, say so."""
        if not self.checkpoints.is_dir():
            return None
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
        for candidate in sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
            try:
                json.loads((candidate / "trainer_state.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("Skipping %s: it was not completely written (no readable trainer_state.json)", candidate)
                continue
            return candidate
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> RunDir:
    """Raise `RunDirError` if the run directory cannot be used as asked; change nothing."""
    run = RunDir(Path(path))
    exists = run.root.exists() and any(run.root.iterdir())
    if resume:
        if not run.manifest.is_file():
            raise RunDirError(f"Cannot resume: {run.root} is not a run directory (no manifest.json).")
        return run
    if exists and not overwrite:
        raise RunDirError(
            f"Run directory {run.root} already exists. Pass --overwrite to replace it, --resume to continue it, "
            "or set output_dir to a new path."
        )
    if exists and not run.manifest.is_file() and not run.config.is_file():
        raise RunDirError(
            f"Refusing to overwrite {run.root}: it exists but is not a run directory. Choose another output_dir."
        )
    return run


def create_run_dir(path: str | Path, overwrite: bool = False, resume: bool = False) -> RunDir:
    """Make the run directory. An existing one is an error unless `overwrite` (wiped) or `resume` (kept)."""
    run = check_run_dir(path, overwrite, resume)
    if resume:
        return run
    if run.root.exists():
        shutil.rmtree(run.root)
    run.root.mkdir(parents=True, exist_ok=True)
    return run


def write_config(run: RunDir, config: Config) -> None:
    run.config.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")


def write_config_copy(config: Config, run: RunDir) -> None:
    """The config beside the weights in `final/`, so the folder describes itself when copied elsewhere."""
    with (run.final / "llmft_config.yaml").open("w", encoding="utf-8") as handle:
        yaml.safe_dump(config.model_dump(mode="json"), handle, sort_keys=False)


def git_commit(cwd: Path | None = None) -> dict[str, Any] | None:
    """The project's git commit (and whether the tree had changes), or None outside a repository."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": bool(dirty)}


def versions() -> dict[str, str]:
    from llm_finetuning.env import package_versions

    return {"python": platform.python_version(), **package_versions()}


def write_manifest(run: RunDir, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into manifest.json (created on first call) and write it atomically."""
    manifest: dict[str, Any] = {}
    if run.manifest.is_file():
        manifest = json.loads(run.manifest.read_text(encoding="utf-8"))
    manifest.update(fields)
    if "status" in fields and fields["status"] not in STATUSES:
        raise ValueError(f"unknown run status {fields['status']}")
    tmp = run.manifest.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, run.manifest)
    return manifest


def start_manifest(run: RunDir, config: Config) -> dict[str, Any]:
    return write_manifest(
        run,
        status="running",
        started_at=now(),
        finished_at=None,
        command=sys.argv,
        host=socket.gethostname(),
        pid=os.getpid(),  # with `host`: a "running" run whose process is gone was killed (`llmft ui` shows it)
        seed=config.training.seed,
        method=config.method.name,
        adapter=config.adapter.method,
        model=config.model.name,
        versions=versions(),
        git=git_commit(),
    )
