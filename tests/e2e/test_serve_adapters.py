"""Several adapters of one base served at once (`--adapter NAME=RUN`), each its own model id, batched together.

Two LoRA runs are trained on one tiny base (the second starts from the first run's saved base), then served with
the base itself: three model ids on one model. Each answers what that run answers when loaded on its own, also
when all three share one batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from llm_finetuning.config import Config
from llm_finetuning.errors import UserError
from llm_finetuning.serve.engine import BASE, Delta, Engine, Finished, Ticket
from llm_finetuning.serve.generation import generate, load_for_inference
from llm_finetuning.serve.loading import load_served
from llm_finetuning.serve.protocol import Sampling
from llm_finetuning.serve.server import create_server
from llm_finetuning.train import train
from tests.conftest import tiny_config

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e
PROMPT = [{"role": "user", "content": "Spell alpha"}]


def write_rows(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapters")
    words = ["alpha", "bravo", "delta", "golf"] * 4
    write_rows(tmp / "upper.jsonl", [{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in words])
    write_rows(tmp / "reverse.jsonl", [{"prompt": f"Spell {w}", "completion": w[::-1] * 3} for w in words])
    training = {"max_steps": 12, "learning_rate": 3e-2}
    train(Config.model_validate(tiny_config(tmp / "upper.jsonl", tmp / "upper", training=training)))
    base = tmp / "upper" / "base"
    config = tiny_config(tmp / "reverse.jsonl", tmp / "reverse", training=training)
    config["model"] = {"name": str(base)}
    train(Config.model_validate(config))
    return {"base": base, "upper": tmp / "upper", "reverse": tmp / "reverse", "tmp": tmp}


def alone(target) -> str:
    model, tokenizer = load_for_inference(target)
    return generate(model, tokenizer, [PROMPT], max_new_tokens=12)[0]


@pytest.fixture(scope="module")
def expected(runs):
    return {name: alone(runs[name]) for name in ("base", "upper", "reverse")}


@pytest.fixture(scope="module")
def loaded(runs):
    return load_served(runs["base"], "base", [("upper", str(runs["upper"])), ("reverse", str(runs["reverse"]))])


def test_the_runs_answer_differently(expected):
    assert len(set(expected.values())) == 3  # else the test below could not tell the adapters apart


def test_three_model_ids_in_one_batch_each_answer_as_alone(loaded, expected):
    assert [(s.id, s.adapter) for s in loaded.served] == [("base", BASE), ("upper", "upper"), ("reverse", "reverse")]
    engine = Engine(loaded.model, loaded.tokenizer, "base", served=loaded.served)
    assert engine.mixable
    sizes, run = [], engine._run
    engine._run = lambda batch: (sizes.append(len(batch)), run(batch))[1]
    texts, done = {}, threading.Semaphore(0)

    def sink(name):
        def deliver(event):
            if isinstance(event, Delta):
                texts[name] = texts.get(name, "") + event.text
            elif isinstance(event, Finished):
                done.release()

        return deliver

    try:
        tickets = []
        for name in ["reverse", "base", "upper", "reverse", "base"]:  # mixed, and repeats
            key = f"{name}-{len(tickets)}"
            ids = engine.encode(name, engine.render(name, PROMPT))
            tickets.append(Ticket(name, ids, 12, Sampling(temperature=0.0), sink(key)))
        engine.submit(tickets)
        for _ in tickets:
            assert done.acquire(timeout=60)
    finally:
        engine.close()
    assert sizes == [5]  # all in one generate call
    assert texts == {
        "reverse-0": expected["reverse"],
        "base-1": expected["base"],
        "upper-2": expected["upper"],
        "reverse-3": expected["reverse"],
        "base-4": expected["base"],
    }


def test_over_http_models_lists_them_and_the_model_field_picks_one(loaded, expected):
    engine = Engine(loaded.model, loaded.tokenizer, "base", served=loaded.served)
    server = create_server(engine, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="x")
        assert [m.id for m in client.models.list().data] == ["base", "upper", "reverse"]
        assert client.models.retrieve("reverse").id == "reverse"
        for name in ("upper", "base", "reverse"):
            reply = client.chat.completions.create(model=name, messages=PROMPT, max_tokens=12, temperature=0)
            assert reply.choices[0].message.content == expected[name] and reply.model == name
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="upper-v2", messages=PROMPT, max_tokens=2)
        assert missing.value.body["code"] == "model_not_found"
        assert "base, upper, reverse" in missing.value.body["message"]
    finally:
        server.shutdown()
        server.server_close()


def test_an_adapter_run_as_target_is_served_under_its_id_with_others(runs, expected):
    loaded = load_served(runs["upper"], "upper", [("reverse", str(runs["reverse"]))])
    assert [s.id for s in loaded.served] == ["upper", "reverse"]
    assert loaded.trained_length == 128  # the run's data.max_length: the context the server enforces


def test_adapters_that_do_not_fit_are_refused_by_name(runs, tmp_path):
    with pytest.raises(UserError, match="the model id `upper` is taken"):
        load_served(runs["upper"], "upper", [("upper", str(runs["reverse"]))])
    with pytest.raises(UserError, match="no adapter there"):
        load_served(runs["base"], "base", [("full", str(runs["base"]))])
    other = tiny_config(runs["tmp"] / "upper.jsonl", tmp_path / "other", training={"max_steps": 1})
    other["model"]["tiny"] = {"hidden_size": 48, "num_layers": 2, "num_heads": 2}
    train(Config.model_validate(other))
    with pytest.raises(UserError, match="serve adapters of one base together"):
        load_served(runs["base"], "base", [("other", str(tmp_path / "other"))])


def test_the_cli_refuses_a_malformed_adapter_flag_without_a_traceback(runs):
    command = [sys.executable, "-m", "llm_finetuning.cli.main", "serve", str(runs["base"]), "--adapter", "upper"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "expected NAME=RUN" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
