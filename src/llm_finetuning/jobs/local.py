"""The local executor: each job a worker process on this machine, one job at a time per device set.

`--devices` names the device sets: `cpu`, `0` (one GPU), `0,1;2,3` (two sets of two GPUs: two jobs at once).
Queued jobs start in the order they were created on the first free set, with `CUDA_VISIBLE_DEVICES` naming its
GPUs. A worker runs in its own session, so a server restart leaves it training: the next server adopts it by
its pid. A job whose worker is gone when the server starts (the machine restarted) is queued again and resumes
from its last checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from llm_finetuning.jobs.store import Row, Store

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3  # starts of one job (restarts after a crash included) before it is marked failed


def worker_command(database: str, job_id: str, files_dir: Path) -> list[str]:
    return [sys.executable, "-m", "llm_finetuning.jobs.worker", "--database", database, "--job", job_id,
            "--files", str(files_dir)]  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # a recycled pid is some other program: not our worker
        try:
            text = cmdline.read_bytes()
        except OSError:
            return False
        return b"llm_finetuning.jobs.worker" in text
    return True


def parse_devices(value: str) -> list[str]:
    """`cpu` or `0,1;2,3` -> the device sets."""
    sets = [part.strip().replace(" ", "") for part in value.split(";") if part.strip()]
    return sets or ["cpu"]


@dataclass
class _Running:
    job_id: str
    slot: str
    pid: int
    process: subprocess.Popen | None  # None: adopted from an earlier server


class LocalExecutor:
    name = "local"

    def __init__(
        self,
        store: Store,
        files_dir: Path,
        jobs_dir: Path,
        devices: list[str] | None = None,
        cancel_grace_s: float = 10.0,
        poll_s: float = 0.5,
    ) -> None:
        self.store, self.files_dir, self.jobs_dir = store, files_dir, jobs_dir
        self.slots = devices or ["cpu"]
        self.cancel_grace_s, self.poll_s = cancel_grace_s, poll_s
        self.running: dict[str, _Running] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="llmft-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop scheduling; running workers keep training (the next server adopts them)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for run in self.running.values():
            if run.process is not None:
                run.process.returncode = 0  # nobody reaps it now; keep Popen's destructor from warning

    def recover(self) -> None:
        """Jobs the database says are running: adopt the live workers, queue the others to resume."""
        for job in self.store.jobs_in("running"):
            if job.executor != self.name:
                continue
            if job.pid and _alive(job.pid):
                slot = job.slot if job.slot in self.slots else self.slots[0]
                self.running[job.id] = _Running(job.id, slot, job.pid, None)
                logger.info("adopted job %s (pid %d)", job.id, job.pid)
                continue
            self._requeue_after_loss(job)

    def _requeue_after_loss(self, job: Row) -> None:
        if job.control == "pause":
            self.store.update_job(job.id, only_if=("running",), status="paused", resume=True, control=None, pid=None)
            return
        if job.attempts >= MAX_ATTEMPTS:
            self._fail(job.id, f"the training process was lost {job.attempts} times; the job's log has details")
            return
        self.store.update_job(job.id, only_if=("running",), status="queued", resume=True, pid=None)
        self.store.add_event(job.id, "The server restarted; the job resumes from its last checkpoint")

    # ------------------------------------------------------------------------------------------ control
    def notify(self) -> None:
        """A job was queued (or a slot may have freed): look now rather than at the next poll."""
        self._wake.set()

    def stop(self, job_id: str) -> None:
        """SIGTERM to the job's worker (it checkpoints after the current step and exits); SIGKILL after the grace."""
        with self._lock:
            run = self.running.get(job_id)
        if run is None:
            return
        try:
            os.killpg(run.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return

        def force() -> None:
            if _alive(run.pid):
                logger.warning("job %s did not stop within %.0f s: killing it", job_id, self.cancel_grace_s)
                try:
                    os.killpg(run.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

        timer = threading.Timer(self.cancel_grace_s, force)
        timer.daemon = True
        timer.start()

    # --------------------------------------------------------------------------------------- scheduling
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._assign()
            except Exception:  # the scheduler must outlive one bad job or a database hiccup
                logger.exception("job scheduler step failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            runs = list(self.running.values())
        for run in runs:
            if run.process is not None:
                code = run.process.poll()
                if code is None:
                    continue
            elif _alive(run.pid):
                continue
            else:
                code = None
            with self._lock:
                self.running.pop(run.job_id, None)
            job = self.store.job(run.job_id)
            if job is None or job.status != "running":
                continue  # the worker wrote its outcome (or the job was cancelled)
            if job.control == "pause":
                self.store.update_job(job.id, only_if=("running",), status="paused", resume=True, control=None)
                self.store.add_event(job.id, "Job paused; resume it to continue from its last checkpoint")
                continue
            how = f"exited with code {code}" if code is not None and code >= 0 else "was killed"
            if code is not None and code < 0:
                how = f"was killed by {signal.Signals(-code).name}"
            hint = " (out of memory?)" if code in (-9, 137) else ""
            self._fail(job.id, f"the training process {how}{hint}; the job's log is {self.log_path(job.id)}")
            self._wake.set()

    def _fail(self, job_id: str, message: str) -> None:
        if self.store.update_job(
            job_id,
            only_if=("running", "queued"),
            status="failed",
            finished_at=int(time.time()),
            error={"code": "training_failed", "message": message, "param": None},
            pid=None,
        ):
            self.store.add_event(job_id, message, level="error")

    def log_path(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "worker.log"

    def _assign(self) -> None:
        with self._lock:
            busy = {run.slot for run in self.running.values()}
        free = [slot for slot in self.slots if slot not in busy]
        if not free:
            return
        for job in self.store.jobs_in("queued"):
            if not free:
                break
            if job.executor != self.name:
                continue
            self._launch(job, free.pop(0))

    def _launch(self, job: Row, slot: str) -> None:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = "" if slot == "cpu" else slot
        log = self.log_path(job.id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                worker_command(self.store.url, job.id, self.files_dir),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own process group: a server restart leaves it running
                cwd=str(log.parent),
            )
        with self._lock:
            self.running[job.id] = _Running(job.id, slot, process.pid, process)
        # `running` only while still queued: a cancel that came in between wins, and the worker then exits.
        if not self.store.update_job(
            job.id, only_if=("queued",), status="running", pid=process.pid, slot=slot, attempts=job.attempts + 1
        ):
            self.stop(job.id)
            return
        self.store.add_event(job.id, f"Job started on {slot}" + (" (resuming)" if job.resume else ""))
        logger.info("job %s started on %s (pid %d)", job.id, slot, process.pid)
