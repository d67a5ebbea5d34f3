"""Data formats, column mapping, row-level errors, eval splits and truncation accounting."""

from __future__ import annotations

import pytest

from llm_finetuning.config.schema import DataConfig
from llm_finetuning.data.formats import RowError, to_messages
from llm_finetuning.data.pipeline import prepare_data
from llm_finetuning.data.tokenize import IGNORE_INDEX
from llm_finetuning.errors import DataError
from llm_finetuning.models.tiny import build_tokenizer

pytestmark = pytest.mark.unit


def data_config(**fields) -> DataConfig:
    return DataConfig.model_validate(fields)


def test_alpaca_with_input_and_system():
    row = {"instruction": "Translate", "input": "hola", "output": "hello", "system": "Be terse."}
    assert to_messages(row, "alpaca", {}) == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Translate\n\nhola"},
        {"role": "assistant", "content": "hello"},
    ]
    assert to_messages({"instruction": "Hi", "input": "", "output": "Yo"}, "alpaca", {})[0]["content"] == "Hi"


def test_prompt_completion_with_column_mapping_and_system_prompt():
    row = {"question": "2+2?", "answer": "4"}
    messages = to_messages(row, "prompt_completion", {"prompt": "question", "completion": "answer"}, "Math.")
    assert messages == [
        {"role": "system", "content": "Math."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_messages_with_mapped_column():
    row = {"conv": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    assert to_messages(row, "messages", {"messages": "conv"})[1] == {"role": "assistant", "content": "b"}


@pytest.mark.parametrize(
    ("row", "fmt", "columns", "message"),
    [
        ({"instruction": "x"}, "alpaca", {}, "field `output` is missing"),
        (
            {"q": "x", "completion": "y"},
            "prompt_completion",
            {"prompt": "question"},
            "field `question` (mapped from `prompt`) is missing",
        ),
        ({"prompt": 3, "completion": "y"}, "prompt_completion", {}, "field `prompt` must be text, a message"),
        ({"messages": [{"role": "user", "content": "a"}]}, "messages", {}, "no assistant message"),
        ({"messages": [{"role": "robot", "content": "a"}]}, "messages", {}, "`messages[0].role` is `robot`"),
        ({"messages": [{"role": "user"}]}, "messages", {}, "`messages[0]` content must be a string"),
        ({"messages": "hi"}, "messages", {}, "must be a non-empty list"),
        ({"prompt": "x", "completion": "  "}, "prompt_completion", {}, "assistant message is empty"),
    ],
)
def test_bad_rows_name_the_field(row, fmt, columns, message):
    with pytest.raises(RowError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        to_messages(row, fmt, columns)


def test_bad_row_stops_with_file_line_and_field(write_jsonl):
    path = write_jsonl([{"prompt": "a", "completion": "b"}, "{not json", {"prompt": "c"}], "rows.jsonl")
    config = data_config(train={"path": str(path), "format": "prompt_completion"})
    with pytest.raises(DataError) as info:
        prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0)
    assert f"{path}:2: not valid JSON" in str(info.value)
    assert "on_error: skip" in str(info.value)


def test_skip_mode_drops_and_counts_bad_rows_and_keeps_the_rest(write_jsonl):
    path = write_jsonl(
        [{"prompt": "a", "completion": "b"}, "{not json", {"prompt": "c"}, [1, 2], {"prompt": "d", "completion": "e"}]
    )
    config = data_config(train={"path": str(path), "format": "prompt_completion"}, on_error="skip")
    data = prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0)
    stats = data.stats["train"]
    assert (stats.rows, stats.skipped_bad_rows, stats.examples) == (5, 3, 2)
    assert any(f"{path}:3: field `completion` is missing" in line for line in stats.bad_rows)
    assert len(data.train) == 2


def test_json_list_rows_are_numbered(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('[{"instruction": "a", "output": "b"}, {"instruction": "c"}]')
    config = data_config(train={"path": str(path), "format": "alpaca"})
    with pytest.raises(DataError, match=rf"{path}:row 2: field `output` is missing"):
        prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0)


def test_missing_file_says_which_key(tmp_path):
    config = data_config(train={"path": str(tmp_path / "nope.jsonl")})
    with pytest.raises(DataError, match="Data file not found"):
        prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0)


def test_truncation_is_counted_and_examples_without_completion_are_dropped(write_jsonl):
    tokenizer = build_tokenizer()
    rows = [
        {"prompt": "short", "completion": "ok"},  # fits
        {"prompt": "p" * 10, "completion": "c" * 100},  # cut inside the completion: kept, counted
        {"prompt": "p" * 200, "completion": "c"},  # prompt alone exceeds the limit: dropped, counted
    ]
    config = data_config(train={"path": str(write_jsonl(rows)), "format": "prompt_completion"}, max_length=64)
    data = prepare_data(config, tokenizer, train_on_prompt=False, seed=0)
    stats = data.stats["train"]
    assert stats.truncated == 2
    assert stats.dropped_no_completion_after_truncation == 1
    assert stats.examples == 2 == len(data.train)
    assert max(len(ids) for ids in data.train["input_ids"]) == 64
    assert stats.completion_tokens == sum(
        sum(label != IGNORE_INDEX for label in labels) for labels in data.train["labels"]
    )


def test_eval_split_is_deterministic_and_disjoint(write_jsonl):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(40)]
    config = data_config(train={"path": str(write_jsonl(rows)), "format": "prompt_completion"}, eval_split=0.25)
    tokenizer = build_tokenizer()
    first = prepare_data(config, tokenizer, train_on_prompt=False, seed=1)
    again = prepare_data(config, tokenizer, train_on_prompt=False, seed=1)
    assert (len(first.train), len(first.eval)) == (30, 10)
    assert first.eval["input_ids"] == again.eval["input_ids"]
    train_texts = {tuple(ids) for ids in first.train["input_ids"]}
    assert not train_texts & {tuple(ids) for ids in first.eval["input_ids"]}


def test_all_rows_bad_is_an_error(write_jsonl):
    config = data_config(train={"path": str(write_jsonl([{"x": 1}])), "format": "alpaca"}, on_error="skip")
    with pytest.raises(DataError, match="No usable training rows"):
        prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0)


def test_fingerprint_changes_with_content(write_jsonl):
    config = data_config(
        train={"path": str(write_jsonl([{"prompt": "a", "completion": "b"}])), "format": "prompt_completion"}
    )
    first = prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0).fingerprints
    write_jsonl([{"prompt": "a", "completion": "c"}])
    second = prepare_data(config, build_tokenizer(), train_on_prompt=False, seed=0).fingerprints
    assert first.keys() == second.keys() and first != second
