"""`llmft data generate` with the project's own server as the teacher: a tiny model whose weights are set by hand
to answer `Blue sky` to anything, behind a real `llmft serve` process on a loopback port. Each row's answer is
what the server gives for that conversation, rejection sampling keeps only the prompt whose reference it matches,
the token counts are the server's `usage`, and a rerun is answered from the cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config.judge import JudgeConfig
from llm_finetuning.judge import JudgeClient
from tests.synth_fixtures import save_fixed_reply_model, start_llmft_serve

pytestmark = pytest.mark.e2e

PROMPTS = ["Name a colour.", "What is two plus two?", "Say hello in French."]
ANSWERS = ["Blue sky", "4", "Bonjour"]
REPLY = "Blue sky"


@pytest.fixture(scope="module")
def teacher_url(tmp_path_factory):
    directory = tmp_path_factory.mktemp("teacher")
    save_fixed_reply_model(directory, REPLY)
    process, url = start_llmft_serve(directory, "--max-tokens", "24", "--model-id", "tiny-teacher")
    yield url
    process.terminate()
    process.wait(timeout=30)


def run(tmp_path: Path, config: dict, name: str = "gen.yaml") -> dict:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["data", "generate", str(path)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / f"{config['output']}.report.json").read_text())


def test_distill_and_multi_turn_from_a_served_tiny_model(teacher_url, tmp_path):
    lines = [json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(PROMPTS, ANSWERS, strict=True)]
    (tmp_path / "p.jsonl").write_text("".join(lines))
    teacher = {"base_url": teacher_url, "model": "tiny-teacher", "api_key_env": None, "temperature": 0.0,
               "max_tokens": 24, "cache": str(tmp_path / "cache")}  # fmt: skip
    no_clean = {"enabled": False}  # every reply is the same: dedup would leave one row
    distill = {"name": "distill", "prompts": "p.jsonl", "samples": 2, "score": {"reward": "exact_match"},
               "min_score": 1.0}  # fmt: skip
    report = run(tmp_path, {"teacher": teacher, "task": distill, "output": "d.jsonl", "clean": no_clean})
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert [r["messages"] for r in rows] == [
        [{"role": "user", "content": PROMPTS[0]}, {"role": "assistant", "content": REPLY}]
    ]
    assert report["dropped"] == {"below_min_score": 4, "no_sample_accepted": 2}
    with JudgeClient(JudgeConfig(**{**teacher, "cache": False})) as direct:
        for row in rows:
            assert row["messages"][1]["content"] == direct.complete(row["messages"][:1]).strip()
            assert row["provenance"]["teacher"] == "tiny-teacher"
    assert report["requests"]["teacher"]["calls"] == 6
    # The server counts the reply's tokens: one per character of `Blue sky` (byte-level), for each of 6 samples.
    assert report["tokens"]["prompt"] > 0 and report["tokens"]["completion"] == 6 * len(REPLY)
    again = run(tmp_path, {"teacher": teacher, "task": distill, "output": "d2.jsonl", "clean": no_clean})
    assert again["requests"]["teacher"]["cache_hits"] == 6 and again["requests"]["teacher"]["calls"] == 0

    chats = run(
        tmp_path,
        {
            "teacher": teacher,
            "task": {"name": "multi_turn", "prompts": "p.jsonl", "turns": 2},
            "output": "m.jsonl",
            "clean": no_clean,
        },  # fmt: skip
    )
    conversations = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert chats["rows"] == len(conversations) >= 1
    for row in conversations:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) >= 4
