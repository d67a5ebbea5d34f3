"""GRPO with LLM-judge rewards: multi-hop (HotpotQA) and medical (PubMedQA) configs judged by the project's own
server on a loopback port, and a judge that cannot answer stopping the run before training."""

from __future__ import annotations

import json
import socket
import threading

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm_finetuning.config import Config
from llm_finetuning.errors import UserError
from llm_finetuning.serve.server import Engine, ServerLimits, create_server
from llm_finetuning.train import train
from tests.conftest import shared, tiny_config
from tests.synth_fixtures import save_fixed_reply_model

pytestmark = pytest.mark.e2e
FORMAT = "Answer as <reasoning>...</reasoning> then <answer>...</answer>."


@pytest.fixture(scope="module")
def judge_url(tmp_path_factory):
    """A model that replies `Score: 4` to any prompt, served in-process on a free loopback port."""
    directory = tmp_path_factory.mktemp("scorer")
    save_fixed_reply_model(directory, "Score: 4")
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    server = create_server(
        Engine(model, AutoTokenizer.from_pretrained(directory), "scorer"), "127.0.0.1", 0, None, ServerLimits(32)
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def grpo(tmp_path, source: dict, rewards: list[str], judge: dict) -> Config:
    raw = tiny_config(
        tmp_path / "unused",
        tmp_path / "run",
        data={"train": {**source, "max_samples": 4, "system_prompt": FORMAT}, "max_length": 4096},
        method={
            "name": "grpo",
            "num_generations": 4,
            "max_completion_length": 8,
            "rewards": [{"name": name} for name in rewards],
            "judge": {"model": "scorer", "max_tokens": 16, "api_key_env": None, **judge},
        },
    )
    raw["training"] = {**raw["training"], "max_steps": 2, "per_device_batch_size": 4}
    return Config.model_validate(raw)


@pytest.mark.parametrize(
    ("source", "rewards"),
    [
        ({"dataset": "hotpotqa", "path": "hotpotqa/hotpot_dev_v1_simplified.json"}, ["judge_multihop", "exact_match"]),
        ({"dataset": "pubmedqa", "path": "pubmedqa/ori_pqal.json"}, ["judge_medical", "decision_correctness"]),
    ],
)
def test_judged_grpo_runs_with_the_judge_on_loopback(tmp_path, judge_url, source, rewards):
    source = {**source, "path": str(shared(source["path"]))}
    result = train(grpo(tmp_path, source, rewards, {"base_url": judge_url}))
    assert result.status == "completed"
    logged = [json.loads(line) for line in (result.run.root / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in logged if f"rewards/{rewards[0]}/mean" in row]
    assert len(steps) == 2
    for row in steps:
        # The judge replies `Score: 4` to everything: (4 - 1) / 4 for every completion.
        assert row[f"rewards/{rewards[0]}/mean"] == pytest.approx(0.75)
        assert row["judge/fallbacks"] == 0 and row["judge/calls"] > 0
    assert (result.run.root / "judge_cache").is_dir()


def test_a_judge_that_answers_nothing_stops_the_run_before_training(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = {"dataset": "hotpotqa", "path": str(shared("hotpotqa/hotpot_dev_v1_simplified.json"))}
    judge = {"base_url": f"http://127.0.0.1:{port}/v1", "max_retries": 0, "timeout_s": 2}
    with pytest.raises(
        UserError, match=r"method.judge: the judge `scorer` at .* gave no usable score for any of the 8"
    ):
        train(grpo(tmp_path, source, ["judge_multihop"], judge))
    assert not list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
