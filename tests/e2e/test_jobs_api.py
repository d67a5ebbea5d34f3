"""The OpenAI fine-tuning API (`llmft jobs`) driven by the official `openai` client, on a tiny model.

One server with two API keys (alice, bob) runs every job as its own worker process on the CPU: upload, create,
events until succeeded, chat with `fine_tuned_model`; a DPO job; cancel; pause and resume; files refused with
their line numbers; one key blind to the other's files, jobs and models; the upload size limit. A second server
is restarted under a running job, once with the worker alive (adopted) and once with it killed (resumed from
its last checkpoint).
"""

from __future__ import annotations

import csv
import io
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml

from llm_finetuning.jobs.server import create_jobs_server
from llm_finetuning.jobs.service import BaseModel
from llm_finetuning.serve.keys import ApiKeys
from tests.jobs_fixtures import (
    ALICE,
    BOB,
    TEMPLATE,
    all_events,
    chat_rows,
    dpo_rows,
    finished,
    jsonl,
    save_tiny_chat_model,
    upload,
    wait_for,
)

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    return save_tiny_chat_model(tmp_path_factory.mktemp("base") / "tiny-chat")


def start(data: Path, base_model: Path, **options):
    served = create_jobs_server(
        data,
        {"tiny": BaseModel("tiny", str(base_model))},
        port=0,
        keys=ApiKeys({"alice": ALICE, "bob": BOB}),
        template=TEMPLATE,
        cancel_grace_s=5.0,
        **options,
    )
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    return served, thread


def stop(served, thread) -> None:
    served.shutdown()
    thread.join(timeout=20)
    served.close()


def client(served, key: str):
    host, port = served.server.server_address
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def server(tmp_path_factory, base_model):
    served, thread = start(tmp_path_factory.mktemp("jobs"), base_model, max_upload_bytes=64 << 10)
    yield served
    stop(served, thread)


@pytest.fixture(scope="module")
def alice(server):
    return client(server, ALICE)


@pytest.fixture(scope="module")
def bob(server):
    return client(server, BOB)


@pytest.fixture(scope="module")
def supervised(alice):
    training = upload(alice, chat_rows())
    job = alice.fine_tuning.jobs.create(
        model="tiny",
        training_file=training.id,
        suffix="spell",
        seed=7,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}},
    )
    return training, job, finished(alice, job.id)


def test_a_supervised_job_trains_and_its_model_is_served(server, alice, supervised):
    training, created, job = supervised
    assert created.status == "queued" and created.fine_tuned_model is None
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:alice:spell:{job.id.split('-')[-1][:8]}"
    assert job.seed == 7 and job.training_file == training.id
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert job.method.supervised.hyperparameters.batch_size == 4
    # The llmft config it trained with: 12 examples, batches of 4, 2 epochs.
    config = yaml.safe_load((server.service.jobs_dir / job.id / "config.yaml").read_text())
    assert config["training"]["epochs"] == 2 and config["training"]["seed"] == 7
    assert config["training"]["per_device_batch_size"] * config["training"]["gradient_accumulation_steps"] == 4
    assert config["method"]["name"] == "sft" and config["data"]["train"]["format"] == "messages"

    events = all_events(alice, job.id)
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(1, 7))  # 12 / 4 = 3 steps an epoch, logged every step
    assert all("train_loss" in e.data for e in events if e.type == "metrics")
    assert events[-1].message == "The job has successfully completed"

    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in checkpoints) == [3, 6]  # one per epoch
    assert all(c.fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-step-") for c in checkpoints)

    results = alice.files.content(job.result_files[0]).text
    table = list(csv.DictReader(io.StringIO(results)))
    assert [int(r["step"]) for r in table] == steps and all(float(r["train_loss"]) > 0 for r in table)

    assert job.fine_tuned_model in [m.id for m in alice.models.list().data]
    reply = alice.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Spell golf"}], max_tokens=8
    )
    assert reply.model == job.fine_tuned_model and reply.usage.completion_tokens > 0


def test_another_key_sees_none_of_it(alice, bob, supervised):
    training, _, job = supervised
    assert training.id not in [f.id for f in bob.files.list().data]
    for call in (
        lambda: bob.files.retrieve(training.id),
        lambda: bob.files.content(training.id),
        lambda: bob.files.delete(training.id),
        lambda: bob.fine_tuning.jobs.retrieve(job.id),
        lambda: bob.fine_tuning.jobs.cancel(job.id),
        lambda: bob.fine_tuning.jobs.list_events(job.id),
        lambda: bob.fine_tuning.jobs.checkpoints.list(job.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.id not in [j.id for j in bob.fine_tuning.jobs.list().data]
    assert job.fine_tuned_model not in [m.id for m in bob.models.list().data]
    with pytest.raises(openai.NotFoundError):
        bob.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):  # bob cannot train on alice's file either
        bob.fine_tuning.jobs.create(model="tiny", training_file=training.id)
    assert alice.files.retrieve(training.id).id == training.id  # and alice's file is still there


def test_no_key_or_a_wrong_key_is_refused(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong-key-0000000000000").files.list()


def test_a_dpo_job_trains_with_beta(server, alice):
    training = upload(alice, dpo_rows(), "prefs.jsonl")
    job = alice.fine_tuning.jobs.create(
        model="tiny",
        training_file=training.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1, "batch_size": 4}}},
    )
    job = finished(alice, job.id)
    assert job.status == "succeeded", job.error
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    config = yaml.safe_load((server.service.jobs_dir / job.id / "config.yaml").read_text())
    assert config["method"] == {"name": "dpo", "beta": 0.2} and config["data"]["train"]["format"] == "preference"
    reply = alice.chat.completions.create(
        model=job.fine_tuned_model, messages=[{"role": "user", "content": "Spell kilo"}], max_tokens=4
    )
    assert reply.choices[0].message.role == "assistant"


def test_a_file_with_format_errors_is_refused_with_its_lines(alice):
    rows = chat_rows()
    rows[2] = {"messages": [{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "x"}]}
    rows[5] = {"messages": [{"role": "wizard", "content": "hi"}]}
    body = jsonl(rows).replace(b'"Spell juliet"', b'"Spell juliet', 1)  # line 10: not JSON
    with pytest.raises(openai.BadRequestError) as refused:
        alice.files.create(file=("bad.jsonl", body), purpose="fine-tune")
    message = refused.value.body["message"]
    assert "line 3" in message and "line 6" in message and "line 10" in message
    assert refused.value.body["code"] == "invalid_file_format"
    assert "bad.jsonl" not in [f.filename for f in alice.files.list().data]  # nothing kept


def test_a_training_file_too_small_for_openai_rules_is_refused_at_create(alice):
    few = upload(alice, chat_rows()[:5], "few.jsonl")
    with pytest.raises(openai.BadRequestError) as refused:
        alice.fine_tuning.jobs.create(model="tiny", training_file=few.id)
    assert "10" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as wrong:
        alice.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=few.id)
    assert wrong.value.body["param"] == "model"


def test_uploads_are_size_limited_and_named_by_the_server(server, alice):
    with pytest.raises(openai.APIStatusError) as refused:
        alice.files.create(file=("big.jsonl", b"x" * (200 << 10)), purpose="fine-tune")
    assert refused.value.status_code == 413
    sneaky = alice.files.create(file=("../../escape.jsonl", jsonl(chat_rows())), purpose="fine-tune")
    assert sneaky.filename == "escape.jsonl"
    data = server.service.data_dir
    assert not (data.parent / "escape.jsonl").exists() and not (data.parent.parent / "escape.jsonl").exists()
    assert sorted(p.name for p in server.service.files_dir.iterdir()) == sorted(
        f.id for f in server.service.store.list_files("alice", None, 1000, None, "asc")
    ) + sorted(f.id for f in server.service.store.list_files("bob", None, 1000, None, "asc"))
    assert alice.files.content(sneaky.id).content == jsonl(chat_rows())
    assert alice.files.delete(sneaky.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(sneaky.id)


def test_jobs_list_is_paginated(alice, supervised):
    first = alice.fine_tuning.jobs.list(limit=1)
    assert len(first.data) == 1 and first.has_more
    second = alice.fine_tuning.jobs.list(limit=1, after=first.data[0].id)
    assert second.data[0].id != first.data[0].id
    assert second.data[0].created_at <= first.data[0].created_at


def long_job(api, epochs: int = 50):
    training = upload(api, chat_rows(), "long.jsonl")
    return api.fine_tuning.jobs.create(
        model="tiny",
        training_file=training.id,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 4}}},
    )


def test_cancel_stops_the_worker_within_seconds(server, alice):
    job = long_job(alice)
    wait_for(lambda: any(e.type == "metrics" for e in alice.fine_tuning.jobs.list_events(job.id).data))
    pid = server.service.store.job(job.id).pid
    asked = time.monotonic()
    cancelled = alice.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    wait_for(lambda: not _alive(pid), timeout=15)
    assert time.monotonic() - asked < 15
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    assert "Job cancelled" in [e.message for e in all_events(alice, job.id)]
    steps = [e.data["step"] for e in all_events(alice, job.id) if e.type == "metrics"]
    assert steps and max(steps) < 150  # it did not run to the end
    with pytest.raises(openai.BadRequestError):
        alice.fine_tuning.jobs.cancel(job.id)


def test_pause_then_resume_continues_from_the_checkpoint(server, alice):
    job = long_job(alice, epochs=20)
    wait_for(lambda: alice.fine_tuning.jobs.checkpoints.list(job.id).data)
    alice.fine_tuning.jobs.pause(job.id)
    paused = wait_for(lambda: (j := alice.fine_tuning.jobs.retrieve(job.id)).status == "paused" and j, timeout=30)
    assert paused.fine_tuned_model is None
    saved = max(c.step_number for c in alice.fine_tuning.jobs.checkpoints.list(job.id).data)
    alice.fine_tuning.jobs.resume(job.id)
    done = finished(alice, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in all_events(alice, job.id)]
    assert f"Resumed from the checkpoint at step {saved}" in messages
    steps = [e.data["step"] for e in all_events(alice, job.id) if e.type == "metrics"]
    assert max(steps) == 60 and steps.count(saved + 1) == 1  # no step trained twice after the pause


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


def test_a_server_restart_loses_nothing_and_running_jobs_go_on(tmp_path, base_model):
    served, thread = start(tmp_path, base_model)
    api = client(served, ALICE)
    adopted, killed = long_job(api, epochs=30), long_job(api, epochs=30)
    files_before = sorted(f.id for f in api.files.list().data)
    # The first job runs alone (one device set): stop the server under it; its worker keeps training.
    wait_for(lambda: api.fine_tuning.jobs.checkpoints.list(adopted.id).data)
    stop(served, thread)
    served, thread = start(tmp_path, base_model)
    api = client(served, ALICE)
    assert sorted(f.id for f in api.files.list().data) == files_before
    assert finished(api, adopted.id).status == "succeeded"
    # The second job: the server and its worker both die (the machine went down) after a checkpoint.
    wait_for(lambda: api.fine_tuning.jobs.checkpoints.list(killed.id).data, every=0.05)
    pid = served.service.store.job(killed.id).pid
    os.killpg(pid, signal.SIGSTOP)
    saved = max(c.step_number for c in api.fine_tuning.jobs.checkpoints.list(killed.id).data)
    stop(served, thread)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: not _alive(pid), timeout=10)
    served, thread = start(tmp_path, base_model)
    try:
        api = client(served, ALICE)
        done = finished(api, killed.id)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in all_events(api, killed.id)]
        assert "The server restarted; the job resumes from its last checkpoint" in messages
        resumed = [m for m in messages if m.startswith("Resumed from the checkpoint at step ")]
        assert resumed and int(resumed[-1].rsplit(" ", 1)[-1]) >= saved
        reply = api.chat.completions.create(
            model=done.fine_tuned_model, messages=[{"role": "user", "content": "Spell echo"}], max_tokens=4
        )
        assert reply.choices
    finally:
        stop(served, thread)


def test_a_worker_that_dies_fails_its_job_with_what_happened(server, alice):
    job = long_job(alice)
    wait_for(lambda: any(e.type == "metrics" for e in alice.fine_tuning.jobs.list_events(job.id).data))
    os.killpg(server.service.store.job(job.id).pid, signal.SIGKILL)  # what the kernel's OOM killer does
    failed = finished(alice, job.id, timeout=30)
    assert failed.status == "failed" and failed.error.code == "training_failed"
    assert "killed by SIGKILL (out of memory?)" in failed.error.message
    assert str(server.service.jobs_dir / job.id / "worker.log") in failed.error.message
    assert failed.fine_tuned_model is None


def test_a_job_server_off_loopback_needs_keys(tmp_path, base_model):
    from llm_finetuning.errors import UserError

    with pytest.raises(UserError, match="API key"):
        create_jobs_server(tmp_path, {"tiny": BaseModel("tiny", str(base_model))}, host="0.0.0.0", port=0)
