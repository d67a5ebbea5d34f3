"""`llmft jobs --executor ray` against a real local Ray instance on the CPU (started with `ray start --head`, as
a user starts one): the job is a Ray job that trains, writes its events to the shared database, and its model is
then served; a cancel stops the Ray job."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.jobs_fixtures import ALICE, TEMPLATE, all_events, chat_rows, finished, save_tiny_chat_model, upload, wait_for

openai = pytest.importorskip("openai")
pytest.importorskip("ray.job_submission")
pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("base") / "tiny-chat")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    ray = Path(sys.executable).parent / "ray"
    if not ray.exists():
        pytest.skip("the ray command is not installed")
    temp = Path("/tmp") / f"llmft-ray-{free_port()}"  # Ray's socket paths must stay short
    dashboard, gcs = free_port(), free_port()
    # A home and environment of its own: a ~/.ray/auth_token or RAY_* variables left by an earlier ray.init()
    # would turn on token authentication for this cluster, which the job client here would then not pass.
    home = tmp_path_factory.mktemp("ray-home")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")} | {"HOME": str(home)}
    started = subprocess.run(
        [str(ray), "start", "--head", "--num-cpus", "2", "--num-gpus", "0", "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard), "--port", str(gcs),
         "--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--temp-dir", str(temp)],
        capture_output=True, text=True, timeout=180, env=env,
    )  # fmt: skip
    if started.returncode != 0:
        pytest.fail(f"ray start failed: {started.stderr[-2000:]}")
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([str(ray), "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_a_job_runs_as_a_ray_job_and_its_model_is_served(tmp_path, base_model, ray_cluster):
    from ray.job_submission import JobSubmissionClient

    from llm_finetuning.jobs.server import create_jobs_server
    from llm_finetuning.jobs.service import BaseModel
    from llm_finetuning.serve.keys import ApiKeys

    served = create_jobs_server(
        tmp_path,
        {"tiny": BaseModel("tiny", str(base_model))},
        port=0,
        keys=ApiKeys({"alice": ALICE}),
        template=TEMPLATE,
        executor="ray",
        ray_address=ray_cluster,
        cancel_grace_s=5.0,
    )
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = served.server.server_address
        api = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=ALICE, max_retries=0, timeout=60)
        training = upload(api, chat_rows())
        job = api.fine_tuning.jobs.create(
            model="tiny",
            training_file=training.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )
        done = finished(api, job.id, timeout=300)
        assert done.status == "succeeded", done.error
        row = served.service.store.job(job.id)
        ray_jobs = JobSubmissionClient(ray_cluster)
        # The worker writes the outcome, then its process exits: Ray reports the job done a moment later.
        wait_for(lambda: str(ray_jobs.get_job_status(row.external_id).value) in ("SUCCEEDED", "FAILED"), 60)
        info = ray_jobs.get_job_info(row.external_id)
        assert str(info.status.value) == "SUCCEEDED" and info.metadata["llmft_job"] == job.id
        assert [e.data["step"] for e in all_events(api, job.id) if e.type == "metrics"] == [1, 2, 3]
        reply = api.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "Spell golf"}], max_tokens=4
        )
        assert reply.choices
        # A cancel stops the Ray job.
        long = api.fine_tuning.jobs.create(
            model="tiny",
            training_file=training.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 50, "batch_size": 4}}},
        )
        wait_for(lambda: any(e.type == "metrics" for e in api.fine_tuning.jobs.list_events(long.id).data), 300)
        assert api.fine_tuning.jobs.cancel(long.id).status == "cancelled"
        sid = served.service.store.job(long.id).external_id
        wait_for(lambda: str(ray_jobs.get_job_status(sid).value) in ("STOPPED", "FAILED", "SUCCEEDED"), timeout=60)
        assert str(ray_jobs.get_job_status(sid).value) == "STOPPED"
        assert api.fine_tuning.jobs.retrieve(long.id).status == "cancelled"
    finally:
        served.shutdown()
        thread.join(timeout=20)
        served.close()
