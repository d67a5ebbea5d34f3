"""`llmft eval` with the `tool_calls` task and golden `calls` items on a tiny model trained to call get_weather
(tests/tool_fixtures.py, hermes template): the trained prompts score 1.0, two examples expecting something else
give known lower values, every record holds the expected and predicted calls and the raw reply, and the golden
gate passes the trained model against its untrained base (RUN/base) and fails the reverse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from tests.tool_fixtures import TOOLS, sharegpt_rows, write_rows

pytestmark = pytest.mark.e2e

MAX_NEW_TOKENS = "100"  # byte-level tokens: a call is about 80


@pytest.fixture(scope="module")
def run(tool_run) -> Path:
    return tool_run


def invoke(*args: object):
    return CliRunner().invoke(app, ["eval", *map(str, args)])


def calling(row: dict, call: dict | None = None) -> dict:
    """The row cut after its function_call turn, so that call is the answer expected (or `call` instead)."""
    human, function_call = row["conversations"][:2]
    if call is not None:
        function_call = {"from": "function_call", "value": json.dumps(call)}
    return {**row, "conversations": [human, function_call]}


def eval_rows() -> list[dict]:
    paris, berlin, lima, hi = sharegpt_rows(1)
    paris_call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    hi_expecting_a_call = {**hi, "conversations": [hi["conversations"][0]]}
    hi_expecting_a_call["conversations"].append({"from": "function_call", "value": json.dumps(paris_call)})
    return [
        calling(paris),  # a call, as trained
        calling(berlin),
        calling(lima),
        paris,  # after the tool's answer: plain text, no call
        hi,  # no call
        calling(paris, {"name": "get_weather", "arguments": {"city": "Rome"}}),  # expects another city
        hi_expecting_a_call,  # expects a call the model does not make
    ]


def test_tool_calls_task_scores_the_trained_calls(run, tmp_path):
    data = write_rows(tmp_path / "eval.jsonl", eval_rows())
    out = tmp_path / "out"
    outcome = invoke(
        run, "--tasks", "tool_calls", "--path", f"tool_calls={data}", "--max-new-tokens", MAX_NEW_TOKENS,
        "--output", out,
    )  # fmt: skip
    assert outcome.exit_code == 0, outcome.output
    assert "tool_calls" in outcome.output and "arguments_match" in outcome.output
    result = json.loads((out / "tool_calls.json").read_text())
    records = result["examples"]
    keys = ("exact", "tool_selected", "arguments_match", "no_call_correct", "malformed")
    assert [tuple(r[k] for k in keys) for r in records] == [
        (1.0, 1.0, 1.0, None, 0.0),
        (1.0, 1.0, 1.0, None, 0.0),
        (1.0, 1.0, 1.0, None, 0.0),
        (1.0, 1.0, None, 1.0, 0.0),
        (1.0, 1.0, None, 1.0, 0.0),
        (0.0, 1.0, 0.0, None, 0.0),  # Paris called, Rome expected
        (0.0, 0.0, 0.0, None, 0.0),  # "Hi!" where a call was expected
    ]
    summary = result["metrics"]
    assert summary["exact"] == pytest.approx(5 / 7)
    assert summary["tool_selected"] == pytest.approx(6 / 7)
    assert summary["arguments_match"] == pytest.approx(3 / 5)  # over the 5 examples expecting a call
    assert summary["no_call_correct"] == 1.0  # over the 2 expecting none
    assert (summary["malformed"], summary["examples"], summary["skipped_too_long"]) == (0.0, 7.0, 0.0)

    paris, berlin, lima, rome = [
        {"name": "get_weather", "arguments": {"city": c}} for c in ("Paris", "Berlin", "Lima", "Rome")
    ]
    assert [r["predicted_calls"] for r in records] == [[paris], [berlin], [lima], [], [], [paris], []]
    assert [r["expected_calls"] for r in records] == [[paris], [berlin], [lima], [], [], [rome], [paris]]
    assert records[0]["output"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert (records[3]["output"], records[3]["content"], records[3]["expected_content"]) == ("It is 5 C.",) * 3
    assert records[4]["output"] == "Hi!" and records[3]["prompt"][-1]["role"] == "tool"
    assert all(r["tools"] == TOOLS and r["id"].startswith(f"{data}:") for r in records)
    assert result["settings"]["max_new_tokens"] == int(MAX_NEW_TOKENS)


def golden_file(path: Path) -> Path:
    tools = json.dumps(TOOLS)
    path.write_text(
        f"max_new_tokens: {MAX_NEW_TOKENS}\n"
        "items:\n"
        f"  - {{id: paris, prompt: 'Weather in Paris?', tools: &tools {tools},\n"
        "     calls: [{name: get_weather, arguments: {city: Paris}}]}\n"
        "  - {id: lima, prompt: 'Weather in Lima?', tools: *tools,\n"
        "     calls: [{name: get_weather, arguments: {city: Lima}}]}\n"
        "  - {id: hi, prompt: Say hi, tools: *tools, calls: []}\n"
    )
    return path


def test_golden_gate_with_calls_items_against_a_stored_baseline(run, tmp_path):
    golden, base = golden_file(tmp_path / "golden.yaml"), run / "base"  # base: the untrained model, same template
    better = invoke(run, "--golden", golden, "--baseline", base, "--output", tmp_path / "up")
    assert better.exit_code == 0, better.output
    report = json.loads((tmp_path / "up" / "golden.json").read_text())
    assert [(i["id"], i["expect"], i["status"]) for i in report["items"]] == [
        ("paris", "calls", "fixed"),
        ("lima", "calls", "fixed"),
        ("hi", "calls", "kept"),  # the untrained model makes no call either
    ]
    assert (report["candidate_pass_rate"], report["baseline_pass_rate"], report["regressed"]) == (1.0, 1 / 3, False)
    assert report["items"][0]["candidate_output"].startswith("<tool_call>\n")

    worse = invoke(base, "--golden", golden, "--baseline", run, "--output", tmp_path / "down")
    assert worse.exit_code == 1, worse.output
    assert "REGRESSION" in worse.output and "paris" in worse.output
    report = json.loads((tmp_path / "down" / "golden.json").read_text())
    assert [i["status"] for i in report["items"]] == ["regressed", "regressed", "kept"]
    assert report["drop"] == pytest.approx(2 / 3) and report["regressed"]
    assert (
        invoke(base, "--golden", golden, "--baseline", run, "--tolerance", "0.7", "--output", tmp_path).exit_code == 0
    )
