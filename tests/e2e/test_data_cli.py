"""`llmft data inspect` and `llmft data convert` on real files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.config.schema import DataSource
from llm_finetuning.data.convert import detect_format
from llm_finetuning.data.pipeline import SplitStats, load_records
from tests.conftest import shared

pytestmark = pytest.mark.e2e


def cli(*args: str):
    return CliRunner().invoke(app, list(args), terminal_width=200)


def records(path, fmt, kind="messages"):
    return [r for _, r in load_records(DataSource(path=str(path), format=fmt), "fail", SplitStats(), kind)]


def test_convert_round_trip_keeps_every_conversation(tmp_path):
    original = shared("llamafactory_demo/alpaca_en_demo.json")
    steps = [("alpaca", "messages", "a.jsonl"), ("messages", "sharegpt", "b.json"), ("sharegpt", "alpaca", "c.parquet")]
    current = original
    for source_format, target, name in steps:
        out = tmp_path / name
        result = cli("data", "convert", str(current), str(out), "--to", target, "--format", source_format)
        assert result.exit_code == 0, result.output
        assert "wrote 999 rows" in result.output
        current = out
    assert records(current, "alpaca") == records(original, "alpaca")


def test_convert_refuses_another_kind_and_multi_turn_to_single_turn(tmp_path):
    result = cli(
        "data",
        "convert",
        str(shared("gsm8k/test.jsonl")),
        str(tmp_path / "x.jsonl"),
        "--to",
        "preference",
        "--format",
        "prompt_only",
        "--column",
        "prompt=question",
    )
    assert result.exit_code == 2 and "keeps the kind of data" in result.output
    rows = [
        {
            "messages": [
                {"role": "user", "content": "a"},
                {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"},
                {"role": "assistant", "content": "d"},
            ]
        }
    ]
    (tmp_path / "multi.jsonl").write_text(json.dumps(rows[0]) + "\n")
    result = cli(
        "data", "convert", str(tmp_path / "multi.jsonl"), str(tmp_path / "pc.jsonl"), "--to", "prompt_completion"
    )
    assert result.exit_code == 2 and "multi.jsonl:1: format `prompt_completion` holds one user turn" in result.output
    result = cli(
        "data",
        "convert",
        str(tmp_path / "multi.jsonl"),
        str(tmp_path / "pc.jsonl"),
        "--to",
        "prompt_completion",
        "--skip-bad-rows",
    )
    assert result.exit_code == 0 and "wrote 0 rows" in result.output and "skipped 1" in result.output


def test_inspect_reports_format_counts_lengths_and_the_mask(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "Say hi", "completion": "hi"}, {"prompt": "x"}, {"prompt": "Count", "completion": "1 2 3"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli("data", "inspect", str(path))
    assert result.exit_code == 0, result.output
    assert "format prompt_completion (messages records)" in result.output
    assert "rows: 3   usable: 2   bad: 1" in result.output
    assert f"{path}:2: field `completion` is missing" in result.output
    # By hand, byte-level tokens: 29 and 31 tokens (template + "Say hi"/"hi" and "Count"/"1 2 3"), 2 and 5 trained
    # (answer bytes + <|im_end|>).
    assert "tokens per example" in result.output and "max 31 tokens, mean 30" in result.output


def test_histogram_buckets():
    from llm_finetuning.data.inspect import histogram

    assert histogram([29, 31]) == [(29, 29, 1), (30, 30, 0), (31, 31, 1)]
    assert histogram(list(range(100)), bins=4) == [(0, 24, 25), (25, 49, 25), (50, 74, 25), (75, 99, 25)]


def test_detect_format():
    assert detect_format({"conversations": [], "chosen": {}, "rejected": {}}) == "preference"
    assert detect_format({"instruction": "", "input": "", "output": ""}) == "alpaca"
    assert detect_format({"prompt": "", "completion": "", "label": True}) == "unpaired"
    assert detect_format({"question": ""}) is None


def test_data_clean_writes_cleaned_rows_and_a_report(tmp_path):
    rows = [
        {"prompt": "What is two plus two, exactly?", "completion": "It is four."},
        {"prompt": "What is two plus two, exactly?", "completion": "It is four."},
        {"prompt": "Call me", "completion": "My number is (415) 555-2671."},
        {"prompt": "Name the capital city of France please", "completion": "Paris"},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"question": "name the capital city of france"}) + "\n")
    (tmp_path / "clean.yaml").write_text("clean:\n  decontaminate: {ngram: 4}\n")
    result = cli(
        "data",
        "clean",
        str(tmp_path / "in.jsonl"),
        str(tmp_path / "out.jsonl"),
        "--config",
        str(tmp_path / "clean.yaml"),
        "--against",
        str(tmp_path / "eval.jsonl"),
    )
    assert result.exit_code == 0, result.output
    kept = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert kept == [rows[0], {"prompt": "Call me", "completion": "My number is <PHONE>."}]
    report = json.loads((tmp_path / "out.jsonl.report.json").read_text())
    assert report["input"] == 4 and report["output"] == 2 and report["removed"] == 2
    assert {e["where"].rsplit(":", 1)[1] for e in report["events"]} == {"2", "3", "4"}


def test_data_clean_rejects_unknown_options(tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    (tmp_path / "clean.yaml").write_text("near_dedup: {treshold: 0.5}\n")
    result = cli(
        "data", "clean", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "--config", str(tmp_path / "clean.yaml")
    )
    assert result.exit_code == 2 and "treshold" in result.output
