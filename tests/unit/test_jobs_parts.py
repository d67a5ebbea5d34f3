"""The fine-tuning API's parts on their own: OpenAI hyperparameters -> llmft config, the store's owner scoping and
pagination, API keys, the model catalog, the local executor's bookkeeping, and the Ray executor against a stand-in
job client."""

from __future__ import annotations

import pytest

from llm_finetuning.config.schema import Config
from llm_finetuning.errors import UserError
from llm_finetuning.jobs import hyperparameters as hp
from llm_finetuning.jobs.local import parse_devices
from llm_finetuning.jobs.ray_executor import RayExecutor
from llm_finetuning.jobs.server import JobCatalog, parse_models, read_template
from llm_finetuning.jobs.service import BaseModel
from llm_finetuning.jobs.store import Store, fine_tuned_name
from llm_finetuning.serve.keys import ApiKeys, load_keys
from llm_finetuning.serve.protocol import ApiError


def test_auto_values_follow_the_documented_rules():
    small = hp.resolve("supervised", {}, "method.supervised.hyperparameters", 12)
    assert (small.n_epochs, small.batch_size, small.learning_rate_multiplier, small.beta) == (10, 1, 1.0, None)
    assert hp.resolve("supervised", {}, "", 60).n_epochs == 5  # ceil(300 / 60)
    large = hp.resolve("supervised", {"n_epochs": "auto"}, "", 50_000)
    assert (large.n_epochs, large.batch_size) == (3, 100)  # 0.2% of 50,000
    assert hp.resolve("supervised", {}, "", 1_000_000).batch_size == 256
    assert hp.resolve("dpo", {}, "", 100).beta == 0.1


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"n_epochs": 0}, "h.n_epochs"),
        ({"n_epochs": 1.5}, "h.n_epochs"),
        ({"batch_size": "big"}, "h.batch_size"),
        ({"learning_rate_multiplier": -1}, "h.learning_rate_multiplier"),
        ({"beta": 0.1}, "h"),  # beta is DPO's
        ({"warmup": 3}, "h"),
    ],
)
def test_bad_hyperparameters_name_their_param(params, param):
    with pytest.raises(ApiError) as refused:
        hp.resolve("supervised", params, "h", 100)
    assert refused.value.param == param and refused.value.status == 400


def test_method_comes_from_method_or_the_legacy_field():
    assert hp.request_method({})[0] == "supervised"
    assert hp.request_method({"hyperparameters": {"n_epochs": 2}})[1] == {"n_epochs": 2}
    kind, params, where = hp.request_method({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3}}}})
    assert (kind, params, where) == ("dpo", {"beta": 0.3}, "method.dpo.hyperparameters")
    with pytest.raises(ApiError, match="GRPO"):
        hp.request_method({"method": {"type": "reinforcement"}})


@pytest.mark.parametrize(
    ("batch", "per_device", "accumulation"), [(4, 4, 1), (12, 6, 2), (10, 5, 2), (7, 7, 1), (16, 8, 2)]
)
def test_the_effective_batch_is_exactly_batch_size(batch, per_device, accumulation):
    resolved = hp.Resolved("supervised", 2, batch, 0.5, None)
    config = hp.build_config({"training": {"learning_rate": 1e-4}}, "m", resolved, 3, "t.jsonl", None, "out")
    training = config["training"]
    assert (training["per_device_batch_size"], training["gradient_accumulation_steps"]) == (per_device, accumulation)
    assert training["learning_rate"] == pytest.approx(5e-5) and training["seed"] == 3 and training["epochs"] == 2
    Config.model_validate(config)


def test_the_template_keeps_its_keys_and_the_request_sets_only_its_own():
    template = {
        "adapter": {"method": "full"},
        "data": {"max_length": 64, "eval_split": 0.1},
        "method": {"name": "orpo"},
    }
    resolved = hp.Resolved("dpo", 1, 2, 1.0, 0.25)
    config = hp.build_config(template, "/models/base", resolved, 0, "t.jsonl", "v.jsonl", "out")
    assert config["adapter"] == {"method": "full"} and config["data"]["max_length"] == 64
    assert config["method"] == {"name": "dpo", "beta": 0.25}
    assert "eval_split" not in config["data"] and config["data"]["eval"] == {"path": "v.jsonl", "format": "preference"}
    assert config["model"]["name"] == "/models/base"
    assert template["data"] == {"max_length": 64, "eval_split": 0.1}  # not changed in place


def test_a_template_that_would_give_bad_configs_is_refused_at_start(tmp_path):
    path = tmp_path / "template.yaml"
    path.write_text("training: {per_device_batch_size: 0}\n")
    with pytest.raises(UserError, match="per_device_batch_size"):
        read_template(str(path))
    path.write_text("adapter: {method: lora, r: 4}\n")
    assert read_template(str(path)) == {"adapter": {"method": "lora", "r": 4}}


def add_job(store: Store, job_id: str, owner: str, status: str = "queued", **values):
    fields = {"executor": "local", **values}
    return store.add_job(
        id=job_id, owner=owner, model="base", training_file="file-x", method={"type": "supervised"},
        hyperparameters={}, seed=0, status=status, config={}, run_dir=f"/runs/{job_id}", **fields,
    )  # fmt: skip


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A real Postgres server (pgserver's bundled binaries), for the store tests to run on both databases."""
    pgserver = pytest.importorskip("pgserver")
    pytest.importorskip("psycopg")
    server = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    from llm_finetuning.jobs.store import metadata

    fresh = Store(request.getfixturevalue("postgres"))
    metadata.drop_all(fresh.engine)  # each test starts from empty tables
    metadata.create_all(fresh.engine)
    return fresh


def test_the_store_scopes_every_read_to_its_owner_and_pages_newest_first(store):
    for i in range(5):
        add_job(store, f"ftjob-a{i}", "alice")
    add_job(store, "ftjob-b0", "bob")
    assert store.job("ftjob-b0", "alice") is None and store.job("ftjob-b0", "bob").owner == "bob"
    page = store.list_jobs("alice", 2, None, {})
    assert [j.id for j in page] == ["ftjob-a4", "ftjob-a3"]
    assert [j.id for j in store.list_jobs("alice", 10, "ftjob-a3", {})] == ["ftjob-a2", "ftjob-a1", "ftjob-a0"]
    store.update_job("ftjob-a1", metadata={"team": "x"})
    assert [j.id for j in store.list_jobs("alice", 10, None, {"team": "x"})] == ["ftjob-a1"]
    # A conditional update loses to a status someone else wrote first.
    assert store.update_job("ftjob-a0", only_if=("queued",), status="cancelled")
    assert not store.update_job("ftjob-a0", only_if=("running",), status="succeeded")
    assert store.job("ftjob-a0").status == "cancelled"
    for i in range(3):
        store.add_event("ftjob-a2", f"event {i}")
    newest = store.events("ftjob-a2", 2, None)
    assert [e.message for e in newest] == ["event 2", "event 1"]
    assert [e.message for e in store.events("ftjob-a2", 5, newest[-1].id)] == ["event 0"]
    # A second store on the same file (the worker's) sees the same rows.
    assert Store(store.url).job("ftjob-a2").owner == "alice"


def test_files_are_scoped_and_deleted_files_are_gone(store):
    for i, owner in enumerate(["alice", "alice", "bob"]):
        store.add_file(
            id=f"file-{i}", owner=owner, filename="t.jsonl", purpose="fine-tune", bytes=1, status="processed"
        )
    assert [f.id for f in store.list_files("alice", None, 10, None, "asc")] == ["file-0", "file-1"]
    assert store.file("file-2", "alice") is None
    assert not store.delete_file("file-2", "alice") and store.delete_file("file-0", "alice")
    assert store.file("file-0", "alice") is None
    assert [f.id for f in store.list_files("alice", "fine-tune", 10, None, "desc")] == ["file-1"]


def test_the_catalog_shows_a_fine_tuned_model_to_its_owner_only(store):
    add_job(store, "ftjob-abcdef0123456789", "alice", suffix="s")
    job = store.job("ftjob-abcdef0123456789")
    name = fine_tuned_name(job)
    assert name == "ft:base:alice:s:abcdef01"
    store.update_job(job.id, status="succeeded", fine_tuned_model=name)
    catalog = JobCatalog(store, {"base": BaseModel("base", "/models/base")})
    assert catalog.visible("alice") == ["base", name] and catalog.visible("bob") == ["base"]
    assert catalog.visible(None) == ["base"]
    assert catalog.locate(name, "alice") == job.run_dir
    assert catalog.locate(name, "bob") is None and catalog.locate("base", "bob") == "/models/base"


def test_api_keys_map_to_owners(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("team-a: key-aaaaaaaaaaaaaaaa\nteam-b: key-bbbbbbbbbbbbbbbb\n")
    keys = load_keys(path)

    class Request:
        def __init__(self, value):
            self.headers = {"authorization": value} if value else {}

    assert keys.owner(Request("Bearer key-bbbbbbbbbbbbbbbb")) == "team-b"
    for value in ("Bearer key-cccccccccccccccc", "key-aaaaaaaaaaaaaaaa", None):
        with pytest.raises(ApiError) as refused:
            keys.owner(Request(value))
        assert refused.value.status == 401
    assert ApiKeys().owner(Request(None)) == "local"
    for text, problem in [
        ("Team A: key-aaaaaaaaaaaaaaaa\n", "lowercase"),
        ("a: short\n", "16 characters"),
        ("a: key-aaaaaaaaaaaaaaaa\nb: key-aaaaaaaaaaaaaaaa\n", "share a key"),
    ]:
        path.write_text(text)
        with pytest.raises(UserError, match=problem):
            load_keys(path)


def test_models_and_devices_from_the_command_line():
    assert parse_models(["small=/m/small", "big=org/big"])["big"].path == "org/big"
    for bad in (["small"], ["a:b=/m"], ["a=/x", "a=/y"], []):
        with pytest.raises(UserError):
            parse_models(bad)
    assert parse_devices("cpu") == ["cpu"] and parse_devices("0,1; 2,3") == ["0,1", "2,3"]


class FakeRayJobs:
    """Ray's JobSubmissionClient as the executor uses it: submit, status, stop."""

    class Status:
        def __init__(self, value):
            self.value = value

    def __init__(self):
        self.submitted, self.status, self.stopped = {}, {}, []

    def submit_job(self, **kwargs):
        self.submitted[kwargs["submission_id"]] = kwargs
        self.status[kwargs["submission_id"]] = "PENDING"
        return kwargs["submission_id"]

    def get_job_status(self, sid):
        if sid not in self.status:
            raise RuntimeError("no such job")
        return self.Status(self.status[sid])

    def stop_job(self, sid):
        self.stopped.append(sid)
        self.status[sid] = "STOPPED"


def test_the_ray_executor_submits_each_queued_job_once_with_its_gpus(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    add_job(store, "ftjob-r1", "alice", executor="ray")
    add_job(store, "ftjob-l1", "alice")  # the local executor's: not Ray's to run
    fake = FakeRayJobs()
    ray = RayExecutor(store, tmp_path / "files", gpus_per_job=2, client=fake)
    ray._submit()
    ray._submit()
    assert list(fake.submitted) == ["llmft-ftjob-r1-1"]
    sent = fake.submitted["llmft-ftjob-r1-1"]
    assert sent["entrypoint_num_gpus"] == 2 and "llm_finetuning.jobs.worker" in sent["entrypoint"]
    assert "--job ftjob-r1" in sent["entrypoint"] and store.url in sent["entrypoint"]
    job = store.job("ftjob-r1")
    assert (job.status, job.external_id, job.attempts) == ("queued", "llmft-ftjob-r1-1", 1)
    # The worker starts and marks it running; a cancel stops the Ray job.
    store.update_job("ftjob-r1", status="running")
    ray.stop("ftjob-r1")
    assert fake.stopped == ["llmft-ftjob-r1-1"]
    # A Ray job that ended without the worker writing an outcome fails the job with where to look.
    ray._reap()
    job = store.job("ftjob-r1")
    assert job.status == "failed" and "ray job logs llmft-ftjob-r1-1" in job.error["message"]


def test_the_ray_executor_resumes_a_job_the_cluster_lost(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'jobs.db'}")
    add_job(store, "ftjob-r2", "alice", status="running", executor="ray", external_id="llmft-ftjob-r2-1", attempts=1)
    fake = FakeRayJobs()  # a new cluster: it never heard of the job
    ray = RayExecutor(store, tmp_path / "files", client=fake)
    ray.recover()
    job = store.job("ftjob-r2")
    assert (job.status, job.resume) == ("queued", True)
    ray._submit()
    assert list(fake.submitted) == ["llmft-ftjob-r2-2"]
