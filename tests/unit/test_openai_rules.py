"""OpenAI fine-tuning file rules: each rule names its line and field; conversion feeds the project's formats."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.data.formats import to_record
from llm_finetuning.data.openai_rules import (
    MIN_EXAMPLES,
    Problem,
    detect_method,
    to_llmft_rows,
    validate_openai_file,
    validate_openai_lines,
)
from tests.conftest import shared

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
BAD = 3  # index of the broken row in a case: line 4 of the file


def chat(word: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You spell words."},
            {"role": "user", "content": f"Spell {word}"},
            {"role": "assistant", "content": " ".join(word.upper())},
        ]
    }


def preference(word: str) -> dict[str, Any]:
    return {
        "input": {"messages": [{"role": "user", "content": f"Spell {word}"}]},
        "preferred_output": [{"role": "assistant", "content": " ".join(word.upper())}],
        "non_preferred_output": [{"role": "assistant", "content": word[::-1]}],
    }


def tool_chat() -> dict[str, Any]:
    """A valid example that declares a tool, calls it and answers with its result."""
    call = {"id": "call_1", "type": "function", "function": {"name": "spell", "arguments": '{"word": "golf"}'}}
    return {
        "tools": [{"type": "function", "function": {"name": "spell", "parameters": {"type": "object"}}}],
        "messages": [
            {"role": "system", "content": "You spell words."},
            {"role": "user", "content": "Spell golf"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "G O L F"},
            {"role": "assistant", "content": "G O L F"},
        ],
    }


def lines(rows: list[Any]) -> list[str]:
    return [row if isinstance(row, str) else json.dumps(row) for row in rows]


def write(tmp_path: Path, rows: list[Any], name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines(rows)), encoding="utf-8")
    return path


def test_a_valid_supervised_file_passes(tmp_path):
    report = validate_openai_file(write(tmp_path, [chat(w) for w in WORDS]))
    assert report.ok and report.errors == [] and report.warnings == []
    assert (report.method, report.examples, report.has_tools, report.token_counts) == ("supervised", 10, False, [])
    assert "10 examples, 0 errors" in report.summary()


def test_a_valid_example_with_tools_passes_and_is_flagged():
    report = validate_openai_lines(lines([chat(w) for w in WORDS] + [tool_chat()]))
    assert report.ok, report.errors
    assert report.has_tools


# A change to a valid supervised example, the field its error names, and a phrase of the message.
def _set(path: list[Any], value: Any):
    def change(row: dict[str, Any]) -> Any:
        target = row
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return row

    return change


def _tool_case(change):
    def make(_row: dict[str, Any]) -> dict[str, Any]:
        row = tool_chat()
        change(row)
        return row

    return make


SUPERVISED_CASES = [
    ("not json", lambda r: '{"messages": [', "", "not valid JSON"),
    ("not an object", lambda r: [r], "", "must be a JSON object, got array"),
    ("no messages", lambda r: {}, "messages", "is required"),
    ("empty messages", _set(["messages"], []), "messages", "non-empty list"),
    ("unknown top key", _set(["metadata"], {"a": 1}), "metadata", "not a supervised fine-tuning key"),
    ("close top key", lambda r: {"message": r["messages"]}, "message", "did you mean `messages`"),
    ("unknown role", _set(["messages", 1, "role"], "wizard"), "messages[1].role", "`wizard`"),
    ("unknown message key", _set(["messages", 1, "thoughts"], "x"), "messages[1].thoughts", "not a message key"),
    ("content not text", _set(["messages", 1, "content"], 7), "messages[1].content", "got number"),
    (
        "image part",
        _set(["messages", 1, "content"], [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {}}]),
        "messages[1].content[1]",
        "images are not supported",
    ),
    ("empty user text", _set(["messages", 1, "content"], " "), "messages[1].content", "user message needs text"),
    ("empty system text", _set(["messages", 0, "content"], ""), "messages[0].content", "system message"),
    ("assistant no content", _set(["messages", 2, "content"], None), "messages[2].content", "unless it carries"),
    ("weight on user", _set(["messages", 1, "weight"], 1), "messages[1].weight", "only allowed on assistant"),
    ("weight not 0/1", _set(["messages", 2, "weight"], 2), "messages[2].weight", "must be 0 or 1, got 2"),
    ("weight boolean", _set(["messages", 2, "weight"], True), "messages[2].weight", "must be 0 or 1"),
    ("name not text", _set(["messages", 1, "name"], 3), "messages[1].name", "must be a string"),
    ("no assistant", lambda r: {"messages": r["messages"][:2]}, "messages", "no assistant message"),
    ("all weight 0", _set(["messages", 2, "weight"], 0), "messages", "teaches nothing"),
    ("parallel not bool", _set(["parallel_tool_calls"], "yes"), "parallel_tool_calls", "true or false"),
    ("dpo line", lambda r: preference("x"), "", "is a dpo example, but this file is in the supervised format"),
    (
        "arguments not json",
        _tool_case(_set(["messages", 2, "tool_calls", 0, "function", "arguments"], "{word: golf")),
        "messages[2].tool_calls[0].function.arguments",
        "not valid JSON",
    ),
    (
        "call type",
        _tool_case(_set(["messages", 2, "tool_calls", 0, "type"], "code")),
        "messages[2].tool_calls[0].type",
        'must be "function"',
    ),
    (
        "call without id",
        _tool_case(lambda r: r["messages"][2]["tool_calls"][0].pop("id")),
        "messages[2].tool_calls[0].id",
        "is required",
    ),
    (
        "undeclared function",
        _tool_case(_set(["messages", 2, "tool_calls", 0, "function", "name"], "shout")),
        "messages[2].tool_calls[0].function.name",
        "`shout`, which `tools` does not declare",
    ),
    (
        "unknown tool_call_id",
        _tool_case(_set(["messages", 3, "tool_call_id"], "call_9")),
        "messages[3].tool_call_id",
        "`call_9`, which no earlier tool call",
    ),
    (
        "tool message without id",
        _tool_case(lambda r: r["messages"][3].pop("tool_call_id")),
        "messages[3].tool_call_id",
        "is required on a tool message",
    ),
    ("tool_calls on user", _set(["messages", 1, "tool_calls"], []), "messages[1].tool_calls", "only allowed on"),
    ("tools not a list", _tool_case(_set(["tools"], {"spell": {}})), "tools", "must be a list"),
    ("tool type", _tool_case(_set(["tools", 0, "type"], "retrieval")), "tools[0]", '`type: "function"`'),
    ("tool without name", _tool_case(lambda r: r["tools"][0]["function"].pop("name")), "tools[0].function.name", ""),
    ("legacy function", _set(["functions"], [{"description": "x"}]), "functions[0].name", "is required"),
    (
        "function_call arguments",
        _set(["messages", 2, "function_call"], {"name": "spell", "arguments": "golf"}),
        "messages[2].function_call.arguments",
        "not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("change", "field", "phrase"), [case[1:] for case in SUPERVISED_CASES], ids=[c[0] for c in SUPERVISED_CASES]
)
def test_each_supervised_rule_names_the_line_and_field(change, field, phrase):
    rows: list[Any] = [chat(w) for w in WORDS]
    rows[BAD] = change(copy.deepcopy(rows[BAD]))
    report = validate_openai_lines(lines(rows))
    assert not report.ok
    assert {p.line for p in report.errors} == {BAD + 1}, report.errors  # nothing blamed on the good lines
    named = [p for p in report.errors if p.field == field]
    assert named and phrase in named[0].message, report.errors
    assert report.examples == 10


def test_a_problem_reads_as_line_field_and_message():
    rows = [chat(w) for w in WORDS]
    rows[6]["messages"][2]["weight"] = 2
    (problem,) = validate_openai_lines(lines(rows)).errors
    assert problem == Problem(7, "messages[2].weight", "must be 0 or 1, got 2")
    assert str(problem) == "line 7, `messages[2].weight`: must be 0 or 1, got 2"


DPO_CASES = [
    ("no input", lambda r: {k: v for k, v in r.items() if k != "input"}, "input", "is required"),
    ("input key", _set(["input", "context"], "x"), "input.context", "not a dpo input key"),
    ("input messages empty", _set(["input", "messages"], []), "input.messages", "non-empty list"),
    (
        "input ends with assistant",
        lambda r: {**r, "input": {"messages": r["input"]["messages"] + [{"role": "assistant", "content": "x"}]}},
        "input.messages[1]",
        "must end before the response",
    ),
    ("weight on input user", _set(["input", "messages", 0, "weight"], 0), "input.messages[0].weight", "only allowed"),
    ("two outputs", lambda r: {**r, "preferred_output": r["preferred_output"] * 2}, "preferred_output", "exactly one"),
    ("output not a list", _set(["preferred_output"], "G O L F"), "preferred_output", "exactly one"),
    ("empty output", _set(["preferred_output", 0, "content"], " "), "preferred_output[0].content", "non-empty"),
    ("output role", _set(["non_preferred_output", 0, "role"], "user"), "non_preferred_output[0].role", "assistant"),
    ("identical", lambda r: {**r, "non_preferred_output": r["preferred_output"]}, "non_preferred_output", "identical"),
    ("other key", _set(["score"], 0.5), "score", "not a dpo fine-tuning key"),
    ("supervised line", lambda r: chat("x"), "", "is a supervised example, but this file is in the dpo format"),
]


@pytest.mark.parametrize(("change", "field", "phrase"), [c[1:] for c in DPO_CASES], ids=[c[0] for c in DPO_CASES])
def test_each_dpo_rule_names_the_line_and_field(change, field, phrase):
    rows: list[Any] = [preference(w) for w in WORDS]
    rows[BAD] = change(copy.deepcopy(rows[BAD]))
    report = validate_openai_lines(lines(rows), "dpo")
    assert {p.line for p in report.errors} == {BAD + 1}, report.errors
    named = [p for p in report.errors if p.field == field]
    assert named and phrase in named[0].message, report.errors


def test_nine_examples_are_too_few():
    report = validate_openai_lines(lines([chat(w) for w in WORDS[:9]]))
    assert report.errors == [Problem(0, "", "has 9 examples; OpenAI requires at least 10 examples")]
    assert str(report.errors[0]).startswith("file: ")
    assert validate_openai_lines(lines([chat(w) for w in WORDS[:9]]), min_examples=9).ok
    assert MIN_EXAMPLES == 10


def test_an_empty_file_is_an_error_and_blank_lines_are_skipped(tmp_path):
    empty = validate_openai_file(write(tmp_path, ["", "  "]))
    assert not empty.ok and empty.examples == 0
    assert str(empty.errors[0]) == "file: has no examples; OpenAI requires at least 10 examples"
    rows: list[Any] = [chat(w) for w in WORDS]
    rows.insert(2, "")
    rows[5]["messages"][1]["role"] = "wizard"  # WORDS[4], on line 6 because of the blank line
    report = validate_openai_lines(lines(rows))
    assert report.examples == 10
    assert [(p.line, p.field) for p in report.errors] == [(6, "messages[1].role")]


def test_bytes_that_are_not_utf8_are_an_error_on_their_line():
    raw = [json.dumps(chat(w)).encode() for w in WORDS]
    raw[4] = raw[4].replace(b"Spell", b"Sp\xe9ll")
    report = validate_openai_lines(raw)
    assert [(p.line, p.field) for p in report.errors] == [(5, "")] and "UTF-8" in report.errors[0].message


def test_max_errors_stops_collecting_but_keeps_counting():
    rows = [{"messages": [{"role": "wizard", "content": "x"}]} for _ in range(30)]
    report = validate_openai_lines(lines(rows), max_errors=5)
    assert report.examples == 30 and len(report.errors) == 5 and report.more_errors > 0 and not report.ok
    assert "more" in report.summary()


def test_detect_method_reads_the_first_example(tmp_path):
    assert detect_method(write(tmp_path, ["", preference("golf")], "p.jsonl")) == "dpo"
    assert detect_method(str(write(tmp_path, [chat("golf")], "c.jsonl"))) == "supervised"
    assert detect_method(json.dumps(preference("golf"))) == "dpo"
    assert detect_method(write(tmp_path, ["{not json"], "bad.jsonl")) == "supervised"


# ------------------------------------------------------------------------------------------ conversion
def test_dpo_rows_convert_to_preference_records(tmp_path):
    rows = [preference(w) for w in WORDS]
    rows[0]["input"]["messages"].insert(0, {"role": "developer", "content": "Be brief."})
    path = write(tmp_path, rows)
    assert validate_openai_file(path, "dpo").ok
    converted = list(to_llmft_rows(path, "dpo"))
    assert len(converted) == 10
    for source, row in zip(rows, converted, strict=True):
        record = to_record(row, "preference", {})
        assert record["chosen"][-1]["content"] == source["preferred_output"][0]["content"]
        assert record["rejected"][-1]["content"] == source["non_preferred_output"][0]["content"]
    assert converted[0]["prompt"][0] == {"role": "system", "content": "Be brief."}


def test_supervised_rows_keep_weight_0_and_feed_the_messages_format(tmp_path):
    rows = [chat(w) for w in WORDS]
    rows[0]["messages"] += [{"role": "user", "content": "Again"}, {"role": "assistant", "content": "A", "weight": 1}]
    rows[0]["messages"][2]["weight"] = 0
    rows[1]["messages"][1]["content"] = [{"type": "text", "text": "Spell "}, {"type": "text", "text": "bravo"}]
    rows[2]["messages"][0]["role"] = "developer"
    path = write(tmp_path, rows)
    assert validate_openai_file(path).ok
    converted = list(to_llmft_rows(path, "supervised"))
    first = to_record(converted[0], "messages", {})["messages"]
    assert [m.get("weight") for m in first] == [None, None, 0, None, None]  # weight 1 is the default, dropped
    assert converted[1]["messages"][1] == {"role": "user", "content": "Spell bravo"}
    assert converted[2]["messages"][0]["role"] == "system"
    for row in converted:
        to_record(row, "messages", {})


def test_tool_examples_keep_their_tools_and_calls(tmp_path):
    path = write(tmp_path, [chat(w) for w in WORDS] + [tool_chat()])
    record = to_record(list(to_llmft_rows(path, "supervised"))[-1], "messages", {})
    assert [t["function"]["name"] for t in record["tools"]] == ["spell"]
    call = record["messages"][2]["tool_calls"][0]
    assert call == {"id": "call_1", "type": "function", "function": {"name": "spell", "arguments": {"word": "golf"}}}
    assert record["messages"][3] == {"role": "tool", "content": "G O L F", "tool_call_id": "call_1", "name": "spell"}


# --------------------------------------------------------------------------------------------- tokens
@pytest.fixture(scope="module")
def qwen2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared("tokenizers/qwen2"))


@pytest.fixture(scope="module")
def gpt2():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared("tokenizers/gpt2"))


def _ids(encoded: Any) -> list[int]:
    return encoded["input_ids"] if hasattr(encoded, "keys") else encoded


def test_tokens_come_from_the_chat_template(qwen2):
    rows = [chat(w) for w in WORDS]
    report = validate_openai_lines(lines(rows), tokenizer=qwen2)
    expected = len(_ids(qwen2.apply_chat_template(rows[0]["messages"], tokenize=True)))
    assert len(report.token_counts) == 10 and report.token_counts[0] == expected
    assert "tokens per example: min" in report.summary()


def test_without_a_chat_template_tokens_are_texts_plus_a_few_per_message(gpt2):
    assert not gpt2.chat_template
    rows = [chat(w) for w in WORDS]
    report = validate_openai_lines(lines(rows), tokenizer=gpt2)
    by_hand = sum(len(gpt2(m["content"])["input_ids"]) + 4 for m in rows[0]["messages"])
    assert report.token_counts[0] == by_hand


def test_dpo_tokens_are_the_input_and_the_longer_output(qwen2):
    rows = [preference(w) for w in WORDS]
    rows[0]["non_preferred_output"][0]["content"] = "a much longer and wrong answer " * 3
    report = validate_openai_lines(lines(rows), "dpo", tokenizer=qwen2)
    longer = rows[0]["input"]["messages"] + rows[0]["non_preferred_output"]
    assert report.token_counts[0] == len(_ids(qwen2.apply_chat_template(longer, tokenize=True)))


def test_an_example_over_max_length_is_a_warning_not_an_error(qwen2):
    rows = [chat(w) for w in WORDS]
    rows[7]["messages"][2]["content"] = "word " * 40
    counts = validate_openai_lines(lines(rows), tokenizer=qwen2).token_counts
    report = validate_openai_lines(lines(rows), tokenizer=qwen2, max_length=counts[7] - 1)
    assert report.ok
    assert [(p.line, p.field) for p in report.warnings] == [(8, "")]
    assert f"has {counts[7]} tokens" in report.warnings[0].message and "cut" in report.warnings[0].message
    assert report.as_dict()["warnings"][0]["line"] == 8


def test_invalid_examples_are_not_counted(gpt2):
    rows = [chat(w) for w in WORDS]
    rows[0]["messages"][1]["role"] = "wizard"
    assert len(validate_openai_lines(lines(rows), tokenizer=gpt2).token_counts) == 9


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_exits_1_with_the_lines_of_a_bad_file(tmp_path):
    rows = [chat(w) for w in WORDS]
    rows[2]["messages"][1]["weight"] = 1
    rows[5]["messages"][2]["weight"] = 3
    result = CliRunner().invoke(app, ["data", "validate", str(write(tmp_path, rows)), "--openai"])
    assert result.exit_code == 1, result.output
    assert "line 3, `messages[1].weight`" in result.output and "line 6, `messages[2].weight`" in result.output


def test_cli_exits_0_for_a_good_file_and_json_parses(tmp_path):
    path = write(tmp_path, [preference(w) for w in WORDS])
    good = CliRunner().invoke(app, ["data", "validate", str(path), "--openai"])
    assert good.exit_code == 0, good.output
    assert "dpo fine-tuning file: 10 examples, 0 errors" in good.output
    tokenizer = str(shared("tokenizers/gpt2"))
    args = ["data", "validate", str(path), "--openai", "--json", "--tokenizer", tokenizer, "--max-length", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["ok"] and payload["method"] == "dpo" and payload["examples"] == 10
    assert len(payload["token_counts"]) == 10 and payload["warnings"]  # every example is over 8 tokens


def test_cli_without_openai_points_to_llmft_check(tmp_path):
    result = CliRunner().invoke(app, ["data", "validate", str(write(tmp_path, [chat("golf")]))])
    assert result.exit_code == 2 and "only --openai is supported" in result.output
