"""`llmft generate` and `llmft chat` on a trained run: batched output equals one-by-one, streamed equals batched."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config import Config
from llm_finetuning.serve.generation import generate, load_for_inference, stream_chat
from llm_finetuning.train import train
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e

PROMPTS = ["Spell alpha", "Spell a much longer word please", "hi"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    rows = [{"prompt": f"Spell {w}", "completion": " ".join(w.upper())} for w in ["alpha", "bravo", "delta"] * 6]
    (tmp / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = Config.model_validate(tiny_config(tmp / "d.jsonl", tmp / "run", training={"max_steps": 3}))
    assert train(config).status == "completed"
    return tmp / "run"


def test_batched_generation_equals_one_by_one(run):
    model, tokenizer = load_for_inference(run)
    together = generate(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3)
    alone = [generate(model, tokenizer, [p], max_new_tokens=12)[0] for p in PROMPTS]
    assert together == alone and all(isinstance(t, str) for t in together)


def test_streamed_reply_equals_the_batched_one(run):
    model, tokenizer = load_for_inference(run)
    messages = [{"role": "user", "content": PROMPTS[0]}]
    streamed = "".join(stream_chat(model, tokenizer, messages, max_new_tokens=12))
    assert streamed == generate(model, tokenizer, [messages], max_new_tokens=12)[0]


def test_generate_command_writes_jsonl(run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(
        app, ["generate", str(run), "--prompts", str(prompts), "--output", str(out), "--max-new-tokens", "12"]
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    model, tokenizer = load_for_inference(run)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert [r["completion"] for r in rows] == generate(model, tokenizer, PROMPTS, max_new_tokens=12)


def test_generate_reports_a_bad_prompt_line(run, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    result = CliRunner().invoke(app, ["generate", str(run), "--prompts", str(prompts)])
    assert result.exit_code == 2 and "p.jsonl:2: needs a `prompt` or `messages` field" in result.output


def test_chat_streams_replies_until_exit(run):
    result = CliRunner().invoke(app, ["chat", str(run), "--max-new-tokens", "8"], input="Spell alpha\n/exit\n")
    assert result.exit_code == 0, result.output
    model, tokenizer = load_for_inference(run)
    reply = generate(model, tokenizer, ["Spell alpha"], max_new_tokens=8)[0]
    assert f"model> {reply}" in result.output
