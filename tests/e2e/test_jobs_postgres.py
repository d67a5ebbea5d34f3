"""`llmft jobs --database postgresql://...` on a real Postgres (pgserver's bundled server, started by the test):
the server and the job's worker process share it; a restarted server finds every file, job and event."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from llm_finetuning.jobs.server import create_jobs_server
from llm_finetuning.jobs.service import BaseModel
from llm_finetuning.serve.keys import ApiKeys
from tests.jobs_fixtures import ALICE, TEMPLATE, all_events, chat_rows, finished, save_tiny_chat_model, upload

openai = pytest.importorskip("openai")
pgserver = pytest.importorskip("pgserver")
pytest.importorskip("psycopg")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def start(data: Path, base: Path, database: str):
    served = create_jobs_server(
        data, {"tiny": BaseModel("tiny", str(base))}, port=0, keys=ApiKeys({"alice": ALICE}), database=database,
        template=TEMPLATE,
    )  # fmt: skip
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    host, port = served.server.server_address
    api = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=ALICE, max_retries=0, timeout=60)
    return served, thread, api


def stop(served, thread) -> None:
    served.shutdown()
    thread.join(timeout=20)
    served.close()


def test_a_job_on_postgres_trains_and_survives_a_restart(tmp_path, postgres):
    base = save_tiny_chat_model(tmp_path / "tiny-chat")
    served, thread, api = start(tmp_path / "data", base, postgres)
    try:
        assert served.service.store.engine.dialect.name == "postgresql"
        training = upload(api, chat_rows())
        job = api.fine_tuning.jobs.create(
            model="tiny",
            training_file=training.id,
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )
        done = finished(api, job.id)
        assert done.status == "succeeded", done.error
        events = [e.message for e in all_events(api, job.id)]
    finally:
        stop(served, thread)
    served, thread, api = start(tmp_path / "data", base, postgres)
    try:
        assert api.files.retrieve(training.id).filename == "train.jsonl"
        again = api.fine_tuning.jobs.retrieve(job.id)
        assert again.status == "succeeded" and again.fine_tuned_model == done.fine_tuned_model
        assert [e.message for e in all_events(api, job.id)] == events
        assert [e.split(":")[0] for e in events if e.startswith("Step ")] == ["Step 1/3", "Step 2/3", "Step 3/3"]
        reply = api.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "Spell golf"}], max_tokens=4
        )
        assert reply.choices
    finally:
        stop(served, thread)
