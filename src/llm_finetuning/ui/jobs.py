"""Runs started from the UI: `llmft train CONFIG` as its own process, exactly as a user would start it.

The UI writes the form's YAML to `<folder>/<name>.yaml` and starts `llmft train` on that file in a new session, so
closing or restarting the UI leaves the run going; its output goes to `<folder>/<name>.log`. Relative paths in the
form are relative to that folder, as they would be in a config file written there by hand. Stopping sends SIGTERM
to the training process, which saves a checkpoint after the current step and marks the run interrupted; resuming
is `llmft train CONFIG --resume`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from llm_finetuning.config import load_config
from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError
from llm_finetuning.runs.rundir import RunDir, check_run_dir
from llm_finetuning.ui.runs import alive

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class Launched:
    config: Path
    log: Path
    run_dir: Path
    pid: int
    command: list[str]


def train_command(
    config: Path, resume: bool = False, overwrite: bool = False, overrides: tuple[str, ...] = ()
) -> list[str]:
    """The `llmft train` command line the UI runs (shown to the user, so it can be run by hand)."""
    command = [sys.executable, "-m", "llm_finetuning.cli.main", "train", str(config), *overrides]
    if resume:
        command.append("--resume")
    if overwrite:
        command.append("--overwrite")
    return command


def write_config(folder: Path, name: str, text: str) -> Path:
    if not _NAME.match(name):
        raise UserError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (it names the config file)")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(folder: Path, text: str) -> Config:
    """The config YAML `text` read as `llmft train` would read it from a file in `folder` (relative paths,
    `extends:`, validation), without leaving the file behind."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=folder, prefix=".preview-", delete=False) as handle:
        handle.write(text)
    try:
        return load_config(handle.name)
    finally:
        os.unlink(handle.name)


def launch(folder: Path, name: str, text: str, overwrite: bool = False) -> Launched:
    """Write the config and start training it; what the CLI would refuse (config, run directory) is refused here
    first, with the same message, before any process starts."""
    config_path = write_config(folder, name, text)
    config = load_config(config_path)  # the CLI's own loading: relative paths, `extends:`, validation
    run_dir = (Path.cwd() / config.output_dir) if not Path(config.output_dir).is_absolute() else Path(config.output_dir)
    check_run_dir(run_dir, overwrite=overwrite)
    return _start(folder, name, config_path, run_dir, train_command(config_path, overwrite=overwrite))


def resume(folder: Path, run_dir: Path) -> Launched:
    """Continue an interrupted or failed run from its last checkpoint (`llmft train CONFIG --resume`)."""
    run = RunDir(run_dir)
    if not run.config.is_file():
        raise UserError(f"{run_dir} has no config.yaml: it cannot be resumed")
    if _running_pid(run) is not None:
        raise UserError(f"{run_dir} is still running")
    if run.last_checkpoint() is None:
        raise UserError(f"{run_dir} has no complete checkpoint to resume from; start it again instead")
    # The run's own resolved config (what it was started with), pointed back at this very directory.
    command = train_command(run.config, resume=True, overrides=(f"output_dir={run.root.resolve()}",))
    return _start(folder, run.root.name, run.config, run.root, command)


def stop(run_dir: Path) -> int:
    """Ask a running run to stop (SIGTERM: checkpoint after this step, then `interrupted`); returns its pid."""
    pid = _running_pid(RunDir(run_dir))
    if pid is None:
        raise UserError(f"{run_dir} is not running")
    os.kill(pid, signal.SIGTERM)
    return pid


def _running_pid(run: RunDir) -> int | None:
    try:
        manifest = json.loads(run.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    pid = manifest.get("pid")
    return pid if manifest.get("status") == "running" and alive(pid) else None


def _start(folder: Path, name: str, config: Path, run_dir: Path, command: list[str]) -> Launched:
    log = folder / f"{name}.log"
    env = {**os.environ, "COLUMNS": "160"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            cwd=Path.cwd(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own session: closing the UI (or Ctrl-C in its terminal) leaves it running
        )
    # Reap it when it ends, so a finished run is not left as a zombie that still looks alive.
    threading.Thread(target=process.wait, name=f"llmft-ui-{name}", daemon=True).start()
    return Launched(config=config, log=log, run_dir=run_dir, pid=process.pid, command=command)
