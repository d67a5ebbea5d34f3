"""`llmft serve` on a loopback port, talked to with the official `openai` client."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from llm_finetuning.config import Config
from llm_finetuning.errors import UserError
from llm_finetuning.serve.generation import generate, load_for_inference
from llm_finetuning.serve.server import Engine, ServerLimits, create_server
from llm_finetuning.train import train
from tests.conftest import tiny_config

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e
KEY = "test-key"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    rows = [{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in ["alpha", "bravo", "delta"] * 6]
    (tmp / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Config.model_validate(tiny_config(tmp / "d.jsonl", tmp / "run", training={"max_steps": 3}))
    train(config)
    model, tokenizer = load_for_inference(tmp / "run")
    server = create_server(Engine(model, tokenizer, "tiny-run"), "127.0.0.1", 0, KEY, ServerLimits(max_tokens=32))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield {
        "client": openai.OpenAI(base_url=base, api_key=KEY, max_retries=0),
        "base": base,
        "model": model,
        "tokenizer": tokenizer,
    }
    server.shutdown()
    server.server_close()


def test_models_endpoint(served):
    assert [m.id for m in served["client"].models.list().data] == ["tiny-run"]


def test_chat_completion_matches_local_generation_with_usage(served):
    messages = [{"role": "user", "content": "Spell alpha"}]
    response = served["client"].chat.completions.create(
        model="tiny-run", messages=messages, max_tokens=12, temperature=0
    )
    expected = generate(served["model"], served["tokenizer"], [messages], max_new_tokens=12)[0]
    assert response.choices[0].message.content == expected
    usage = response.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert response.choices[0].finish_reason in ("stop", "length")


def test_streaming_sends_the_same_text(served):
    messages = [{"role": "user", "content": "Spell bravo"}]
    stream = served["client"].chat.completions.create(
        model="tiny-run", messages=messages, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == generate(served["model"], served["tokenizer"], [messages], max_new_tokens=12)[0]
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_text_completion_and_stop_strings(served):
    client = served["client"]
    full = client.completions.create(model="tiny-run", prompt="Spell", max_tokens=16, temperature=0)
    text = full.choices[0].text
    assert full.object == "text_completion" and full.usage.completion_tokens > 0
    if len(text) > 2:
        stop = text[1:3]
        cut = client.completions.create(model="tiny-run", prompt="Spell", max_tokens=16, temperature=0, stop=[stop])
        assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "`messages` must be a non-empty list"),
        (
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 10_000},
            "`max_tokens` must be an integer in [1, 32]",
        ),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, "`temperature` must be a number"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "`messages[0]` needs a role"),
    ],
)
def test_bad_requests_get_clear_400s(served, body, message):
    client = served["client"]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="tiny-run", **body)
    assert message in str(info.value)


def test_wrong_key_unknown_route_and_oversized_body(served):
    bad = openai.OpenAI(base_url=served["base"], api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    request = urllib.request.Request(f"{served['base']}/nothing", headers={"Authorization": f"Bearer {KEY}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 404
    big = urllib.request.Request(
        f"{served['base']}/chat/completions",
        data=b"x" * (2 << 20),
        method="POST",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(big, timeout=10)
    assert info.value.code == 413


def test_concurrent_requests_are_all_answered_correctly(served):
    prompts = ["Spell alpha", "Spell bravo", "Spell delta", "hi"]
    expected = generate(
        served["model"], served["tokenizer"], [[{"role": "user", "content": p}] for p in prompts], max_new_tokens=10
    )

    def ask(prompt: str) -> str:
        response = served["client"].chat.completions.create(
            model="tiny-run", messages=[{"role": "user", "content": prompt}], max_tokens=10, temperature=0
        )
        return response.choices[0].message.content

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(ask, prompts)) == expected


def test_binding_beyond_loopback_needs_a_key(served):
    with pytest.raises(UserError, match="needs an API key"):
        create_server(Engine(served["model"], served["tokenizer"], "m"), "0.0.0.0", 0, None)


def test_logs_hold_neither_the_api_key_nor_request_bodies(served, caplog):
    secret_text = "my-private-prompt-4242"
    with caplog.at_level("DEBUG"):
        served["client"].chat.completions.create(
            model="tiny-run", messages=[{"role": "user", "content": secret_text}], max_tokens=2, temperature=0
        )
        wrong = openai.OpenAI(base_url=served["base"], api_key="wrong-key-777", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    logged = caplog.text
    assert "POST /v1/chat/completions" in logged  # requests are logged...
    assert KEY not in logged and "wrong-key-777" not in logged and secret_text not in logged  # ...not their secrets
