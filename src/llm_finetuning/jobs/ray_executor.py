"""The Ray executor (`llmft jobs --executor ray`): each fine-tuning job is a Ray job asking for its GPUs.

The server submits the same worker command the local executor runs (`python -m llm_finetuning.jobs.worker`)
through Ray's job submission API; Ray places it where the requested GPUs are free, so Ray's scheduler is the
queue. The worker writes its events and outcome to the jobs database, so a cluster needs a database every node
reaches (Postgres by URL) and the server's data folder on a shared filesystem; with a local Ray instance the
default SQLite file works. Cancel and pause stop the Ray job: Ray sends SIGTERM (the worker checkpoints and
exits), then SIGKILL after the grace period.
"""

from __future__ import annotations

import logging
import os
import shlex
import threading
import time
from pathlib import Path
from typing import Any

from llm_finetuning.errors import UserError
from llm_finetuning.jobs.local import MAX_ATTEMPTS, worker_command
from llm_finetuning.jobs.store import Row, Store

logger = logging.getLogger(__name__)

_ENDED = ("SUCCEEDED", "FAILED", "STOPPED")


def submission_id(job: Row, attempt: int) -> str:
    return f"llmft-{job.id}-{attempt}"


class RayExecutor:
    name = "ray"

    def __init__(
        self,
        store: Store,
        files_dir: Path,
        address: str | None = None,
        gpus_per_job: float = 0,
        cpus_per_job: float = 1,
        cancel_grace_s: float = 10.0,
        poll_s: float = 1.0,
        client: Any = None,
    ) -> None:
        self.store, self.files_dir = store, files_dir
        self.address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
        self.gpus_per_job, self.cpus_per_job = gpus_per_job, cpus_per_job
        self.cancel_grace_s, self.poll_s = cancel_grace_s, poll_s
        self._client = client
        self.tracked: dict[str, str] = {}  # job id -> submission id of its current Ray job
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from ray.job_submission import JobSubmissionClient
            except ImportError:
                raise UserError("--executor ray needs Ray's job API: pip install 'ray[default]'") from None
            try:
                self._client = JobSubmissionClient(self.address)
            except Exception as exc:  # unreachable cluster: say where we looked
                raise UserError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        return self._client

    def start(self) -> None:
        self.client  # noqa: B018  # fail at start-up, not at the first job, when the cluster is unreachable
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="llmft-ray-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching; the Ray jobs keep running (the next server finds them by their submission ids)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def recover(self) -> None:
        for job in self.store.jobs_in("running", "queued"):
            if job.executor != self.name or not job.external_id:
                continue
            status = self._status(job.external_id)
            if status is not None and status not in _ENDED:
                self.tracked[job.id] = job.external_id
            elif job.status == "running":
                self._lost(job)

    def notify(self) -> None:
        self._wake.set()

    def stop(self, job_id: str) -> None:
        with self._lock:
            sid = self.tracked.get(job_id)
        if sid is None:
            return
        try:
            self.client.stop_job(sid)
        except Exception as exc:  # already ended: nothing to stop
            logger.info("stopping Ray job %s: %s", sid, exc)

    def _status(self, sid: str) -> str | None:
        try:
            return str(self.client.get_job_status(sid).value)
        except Exception:  # unknown to the cluster (a new cluster, or the job was deleted)
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._submit()
            except Exception:
                logger.exception("Ray job scheduler step failed")
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            tracked = dict(self.tracked)
        for job_id, sid in tracked.items():
            status = self._status(sid)
            if status is not None and status not in _ENDED:
                continue
            with self._lock:
                self.tracked.pop(job_id, None)
            job = self.store.job(job_id)
            if job is not None and job.status == "running":
                self._lost(job, status)

    def _lost(self, job: Row, status: str | None = None) -> None:
        """The Ray job ended without the worker writing an outcome."""
        if job.control == "pause":
            self.store.update_job(job.id, only_if=("running",), status="paused", resume=True, control=None)
            self.store.add_event(job.id, "Job paused; resume it to continue from its last checkpoint")
            return
        if status is None and job.attempts < MAX_ATTEMPTS:  # the cluster lost it: run it again from its checkpoint
            self.store.update_job(job.id, only_if=("running",), status="queued", resume=True)
            self.store.add_event(job.id, "The Ray job was lost; the job resumes from its last checkpoint")
            return
        message = (
            f"the Ray job {job.external_id} ended {status or 'unknown'}; `ray job logs {job.external_id}` shows why"
        )
        if self.store.update_job(
            job.id,
            only_if=("running",),
            status="failed",
            finished_at=int(time.time()),
            error={"code": "training_failed", "message": message, "param": None},
        ):
            self.store.add_event(job.id, message, level="error")

    def _submit(self) -> None:
        for job in self.store.jobs_in("queued"):
            if job.executor != self.name or job.id in self.tracked:
                continue
            attempt = job.attempts + 1
            sid = submission_id(job, attempt)
            command = shlex.join(worker_command(self.store.url, job.id, self.files_dir))
            self.client.submit_job(
                entrypoint=command,
                submission_id=sid,
                entrypoint_num_cpus=self.cpus_per_job,
                entrypoint_num_gpus=self.gpus_per_job,
                runtime_env={"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(int(self.cancel_grace_s))}},
                metadata={"llmft_job": job.id, "owner": job.owner},
            )
            with self._lock:
                self.tracked[job.id] = sid
            # Still queued until the worker starts (Ray may wait for GPUs); the worker marks it running.
            self.store.update_job(job.id, only_if=("queued",), external_id=sid, attempts=attempt)
            self.store.add_event(job.id, f"Submitted to Ray as {sid}" + (" (resuming)" if job.resume else ""))
            logger.info("job %s submitted to Ray as %s", job.id, sid)
