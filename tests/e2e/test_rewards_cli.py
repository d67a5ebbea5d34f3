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


def test_every_gsm8k_training_answer_rendered_with_tags_earns_the_top_correctness_score(tmp_path, write_yaml):
    from tests.conftest import shared

    rows = [json.loads(line) for line in shared("gsm8k/train.jsonl").read_text().splitlines()]
    assert len(rows) == 7473

    def rendered(solution: str, answer: str) -> str:
        reasoning = solution.rsplit("####", 1)[0].strip()
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>"

    gold = [
        {"completion": rendered(r["answer"], r["answer"].rsplit("####", 1)[1].strip()), "answer": r["answer"]}
        for r in rows
    ]
    # Perturbed: the final number plus one, which is never the gold answer.
    worse = [
        {
            "completion": rendered(
                r["answer"], str(int(r["answer"].rsplit("####", 1)[1].strip().replace(",", "")) + 1)
            ),
            "answer": r["answer"],
        }
        for r in rows
    ]
    config = write_yaml(
        {
            "model": {"name": "tiny"},
            "data": {"train": {"dataset": "gsm8k", "path": str(shared("gsm8k/train.jsonl"))}},
            "method": {"name": "grpo", "num_generations": 2, "rewards": [{"name": "answer_correctness"}]},
            "training": {"per_device_batch_size": 2},
        }
    )
    for name, completions in (("gold", gold), ("worse", worse)):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in completions))
        out = tmp_path / f"{name}.scores.jsonl"
        result = CliRunner().invoke(
            app, ["rewards", "score", str(config), "--completions", str(path), "--output", str(out)]
        )
        assert result.exit_code == 0, result.output
        scores = [json.loads(line)["rewards"]["answer_correctness"] for line in out.read_text().splitlines()]
        assert len(scores) == 7473
        if name == "gold":
            assert set(scores) == {3.0} and "100.0%" in result.output
            best = scores
        else:
            assert all(w < b for w, b in zip(scores, best, strict=True))
