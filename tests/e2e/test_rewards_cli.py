"""`llmft rewards score` and `llmft rewards list` through the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app

pytestmark = pytest.mark.e2e
OWN = "tests.e2e.grpo_rewards"


def grpo_yaml(write_yaml, data_path, rewards):
    return write_yaml(
        {
            "model": {"name": "tiny"},
            "data": {"train": {"path": str(data_path), "format": "prompt_only"}},
            "method": {"name": "grpo", "num_generations": 2, "rewards": rewards},
            "training": {"per_device_batch_size": 2},
        }
    )


def test_score_given_completions_writes_each_reward_and_the_weighted_total(tmp_path, write_yaml, write_jsonl):
    config = grpo_yaml(
        write_yaml,
        write_jsonl([{"prompt": "p", "answer": "1"}]),
        [
            {"name": "digits", "function": f"{OWN}:digit_share", "weight": 2.0},
            {"name": "stated", "function": f"{OWN}:states_answer"},
        ],
    )
    rows = [
        {"completion": "ab12", "answer": "12"},
        {"completion": "<answer>\n7\n</answer>", "answer": "7"},
    ]
    out = tmp_path / "scores.jsonl"
    result = CliRunner().invoke(
        app, ["rewards", "score", str(config), "--completions", str(write_jsonl(rows, "c.jsonl")), "--output", str(out)]
    )
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    # By hand: "ab12" is 2/4 digits -> 0.5, not stated; the tagged 7 is 1 digit of 20 characters, and stated.
    assert scored[0]["rewards"] == {"digits": 0.5, "stated": 0.0} and scored[0]["total"] == 1.0
    assert scored[1]["rewards"] == {"digits": 1 / 20, "stated": 1.0}
    assert scored[1]["total"] == pytest.approx(2 / 20 + 1.0)
    assert "2 completions" in result.output and "total (weighted)" in result.output


def test_without_completions_the_references_are_rendered_as_ideal_completions(write_yaml, write_jsonl):
    data = write_jsonl([{"prompt": f"{i}+1?", "answer": str(i + 1)} for i in range(5)])
    config = grpo_yaml(write_yaml, data, [{"name": "stated", "function": f"{OWN}:states_answer"}])
    result = CliRunner().invoke(app, ["rewards", "score", str(config)])
    assert result.exit_code == 0, result.output
    assert "5 completions" in result.output and "1.0000" in result.output


def test_errors_name_the_row_or_the_key(tmp_path, write_yaml, write_jsonl):
    config = grpo_yaml(
        write_yaml, write_jsonl([{"prompt": "p", "answer": "1"}]), [{"name": "d", "function": f"{OWN}:digit_share"}]
    )
    bad = write_jsonl([{"completion": "ok"}, {"text": "no completion"}], "bad.jsonl")
    result = CliRunner().invoke(app, ["rewards", "score", str(config), "--completions", str(bad)])
    assert result.exit_code == 2 and "bad.jsonl:2: needs a field `completion`" in result.output
    sft = write_yaml({"data": {"train": {"path": "x.jsonl"}}}, "sft.yaml")
    result = CliRunner().invoke(app, ["rewards", "score", str(sft), "--completions", str(bad)])
    assert result.exit_code == 2
