"""One fine-tuning job in its own process: `python -m llm_finetuning.jobs.worker --database URL --job ID`.

The executor (local or Ray) starts it; it reads the job from the database, trains with the llmft config the
server built, and writes what happens back: events (each logged step, as OpenAI's `metrics` events),
checkpoints (each saved one), and the outcome. SIGTERM is the way to stop it (cancel, pause, shutdown): the
training saves a checkpoint after the current step and stops; the `control` the server set says what the stop
meant. The server never writes a terminal status over one the worker wrote, nor the other way round: each
update names the statuses it may replace.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from llm_finetuning.errors import UserError
from llm_finetuning.jobs.store import Row, Store, fine_tuned_name, new_id

logger = logging.getLogger("llm_finetuning.jobs.worker")


class JobEvents(TrainerCallback):
    """Training as OpenAI reports it: one `metrics` event per logged step, a checkpoint row per save."""

    def __init__(self, store: Store, job: Row) -> None:
        self.store, self.job = store, job
        self.model = fine_tuned_name(job)
        self.last: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.tokens: int | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step:
            self.store.add_event(self.job.id, f"Resumed from the checkpoint at step {state.global_step}")
        else:
            self.store.add_event(self.job.id, f"Fine-tuning started: {state.max_steps} steps")

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        if "num_tokens" in logs:
            self.tokens = int(logs["num_tokens"])
        data: dict[str, Any] = {"step": state.global_step, "total_steps": state.max_steps}
        for ours, theirs in (
            ("loss", "train_loss"),
            ("mean_token_accuracy", "train_mean_token_accuracy"),
            ("eval_loss", "valid_loss"),
            ("eval_mean_token_accuracy", "valid_mean_token_accuracy"),
            ("learning_rate", "learning_rate"),
        ):
            if isinstance(logs.get(ours), (int, float)):
                data[theirs] = float(logs[ours])
        if len(data) == 2:  # the end-of-training summary: nothing per step
            return
        self.last.update({k: v for k, v in data.items() if k not in ("total_steps", "learning_rate")})
        self.history.append(data)
        shown = ", ".join(f"{k.replace('_', ' ')}={v:.4f}" for k, v in data.items() if k.endswith("loss"))
        self.store.add_event(self.job.id, f"Step {state.global_step}/{state.max_steps}: {shown}", data=data)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        step = state.global_step
        path = Path(args.output_dir) / f"checkpoint-{step}"
        metrics = {"step": float(step), **{k: v for k, v in self.last.items() if k != "step"}}
        self.store.add_checkpoint(self.job.id, step, metrics, f"{self.model}:ckpt-step-{step}", str(path))
        self.store.add_event(self.job.id, f"Checkpoint saved at step {step}")


def _results_csv(history: list[dict[str, Any]]) -> bytes:
    columns = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return out.getvalue().encode()


def _add_results(store: Store, job: Row, files_dir: Path, history: list[dict[str, Any]]) -> str:
    """OpenAI's result file: the per-step metrics as CSV, a file of the job's owner."""
    content = _results_csv(history)
    file_id = new_id("file")
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / file_id).write_bytes(content)
    store.add_file(
        id=file_id,
        owner=job.owner,
        filename="step_metrics.csv",
        purpose="fine-tune-results",
        bytes=len(content),
        status="processed",
    )
    return file_id


def run_job(store: Store, job_id: str, files_dir: Path) -> str:
    """Train the job; returns the status it ends in."""
    from llm_finetuning.config.schema import Config
    from llm_finetuning.train import train

    job = store.job(job_id)
    if job is None:
        raise UserError(f"no job {job_id} in {store.url}")
    if not store.update_job(job_id, only_if=("queued", "running"), status="running", started_at=int(time.time())):
        logger.info("job %s is %s: nothing to run", job_id, job.status)
        return job.status
    events = JobEvents(store, job)
    try:
        config = Config.model_validate(job.config)
        result = train(config, overwrite=not job.resume, resume=job.resume, callbacks=[events])
    except KeyboardInterrupt:  # a second signal: stop at once
        return _stopped(store, job_id)
    except UserError as exc:
        return _failed(store, job_id, "invalid_training_job", str(exc))
    except Exception as exc:  # the job's error, kept for the user; the traceback goes to the job's log
        logger.exception("job %s failed", job_id)
        return _failed(store, job_id, "training_failed", f"{type(exc).__name__}: {exc} (the job's log has details)")
    if result.status != "completed":
        return _stopped(store, job_id)
    results = _add_results(store, job, files_dir, events.history)
    done = store.update_job(
        job_id,
        only_if=("running",),
        status="succeeded",
        finished_at=int(time.time()),
        fine_tuned_model=events.model,
        result_files=[results],
        trained_tokens=events.tokens,
        control=None,
        pid=None,
    )
    if done:
        store.add_event(job_id, f"New fine-tuned model created: {events.model}")
        store.add_event(job_id, "The job has successfully completed")
        return "succeeded"
    return store.job(job_id).status


def _stopped(store: Store, job_id: str) -> str:
    job = store.job(job_id)
    if job.control == "pause":
        store.update_job(job_id, only_if=("running",), status="paused", resume=True, control=None, pid=None)
        store.add_event(job_id, "Job paused; resume it to continue from its last checkpoint")
        return "paused"
    if job.control == "cancel" or job.status == "cancelled":
        return "cancelled"
    # Stopped by someone else (the machine shutting down): the next server start resumes it.
    store.update_job(job_id, only_if=("running",), status="queued", resume=True, pid=None)
    store.add_event(job_id, "Training was stopped from outside; the job is queued to resume from its last checkpoint")
    return "queued"


def _failed(store: Store, job_id: str, code: str, message: str) -> str:
    if store.update_job(
        job_id,
        only_if=("running",),
        status="failed",
        finished_at=int(time.time()),
        error={"code": code, "message": message, "param": None},
        pid=None,
    ):
        store.add_event(job_id, message, level="error")
    return "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm_finetuning.jobs.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="SQLAlchemy URL of the jobs database")
    parser.add_argument("--job", required=True, help="job id")
    parser.add_argument("--files", required=True, help="the server's folder of stored files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    status = run_job(Store(args.database), args.job, Path(args.files))
    logger.info("job %s ended %s", args.job, status)
    return 0 if status in ("succeeded", "paused", "cancelled", "queued") else 1


if __name__ == "__main__":
    sys.exit(main())
