"""Every format maps to its canonical record; every file type reads; bad input names file, line and field."""

from __future__ import annotations

import gzip
import json

import pytest

from llm_finetuning.config.schema import DataSource
from llm_finetuning.data.formats import RowError, to_record
from llm_finetuning.data.pipeline import SplitStats, load_records
from llm_finetuning.data.reading import Row, read_rows, read_source
from llm_finetuning.data.tokenize import IGNORE_INDEX, encode
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import shared

pytestmark = pytest.mark.unit

U, A, S, T = "user", "assistant", "system", "tool"


def m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_sharegpt_with_system_and_tool_turns():
    row = {
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"from": "observation", "value": '{"temp": 3}'},
            {"from": "gpt", "value": "It is 3 degrees."},
        ],
        "system": "Use tools.",
    }
    messages = to_record(row, "sharegpt", {})["messages"]
    call = messages[2]["tool_calls"][0]
    assert messages == [
        m(S, "Use tools."),
        m(U, "Weather in Oslo?"),
        {
            **m(A, ""),
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}}
            ],
        },
        {**m(T, '{"temp": 3}'), "tool_call_id": call["id"], "name": "weather"},
        m(A, "It is 3 degrees."),
    ]


def test_sharegpt_unknown_speaker_is_named():
    with pytest.raises(RowError, match=r"`conversations\[0\].from` is `narrator`"):
        to_record({"conversations": [{"from": "narrator", "value": "x"}]}, "sharegpt", {})


def test_openai_messages_weight_zero_is_not_trained():
    row = {"messages": [m(U, "hi"), {**m(A, "bad answer"), "weight": 0}, m(U, "again"), m(A, "good answer")]}
    record = to_record(row, "messages", {})
    tokenizer = build_tokenizer()
    encoded = encode(tokenizer, record["messages"])
    trained = tokenizer.decode([t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != -100])
    assert trained == "good answer<|im_end|>"
    assert "bad answer" in encoded.text  # still in the context


def test_only_weight_zero_answers_is_an_error():
    with pytest.raises(RowError, match="no assistant message to learn from"):
        to_record({"messages": [m(U, "hi"), {**m(A, "x"), "weight": 0}]}, "messages", {})


def test_tool_calls_outside_conversations_are_refused_clearly():
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "function": {"name": "f"}}]}
    row = {"prompt": [m(U, "hi")], "chosen": [call], "rejected": [m(A, "no")]}
    with pytest.raises(RowError, match=r"`chosen\[0\]` is a tool call; calls train with the conversation formats"):
        to_record(row, "preference", {})


def test_alpaca_history_becomes_earlier_turns():
    row = {"instruction": "And 3+3?", "output": "6", "history": [["2+2?", "4"]]}
    assert to_record(row, "alpaca", {})["messages"] == [m(U, "2+2?"), m(A, "4"), m(U, "And 3+3?"), m(A, "6")]


def test_preference_from_strings_and_from_messages():
    record = to_record({"prompt": "Q", "chosen": "good", "rejected": "bad"}, "preference", {})
    assert record == {"prompt": [m(U, "Q")], "chosen": [m(A, "good")], "rejected": [m(A, "bad")]}
    row = {"prompt": [m(S, "sys"), m(U, "Q")], "chosen": [m(A, "good")], "rejected": [m(A, "bad")]}
    assert to_record(row, "preference", {})["prompt"] == [m(S, "sys"), m(U, "Q")]


def test_preference_hh_transcripts_split_into_prompt_and_responses():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: Apple."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a fruit\n\nAssistant: No."
    record = to_record({"chosen": chosen, "rejected": rejected}, "preference", {})
    assert record == {
        "prompt": [m(U, "Hi"), m(A, "Hello!"), m(U, "Name a fruit")],
        "chosen": [m(A, "Apple.")],
        "rejected": [m(A, "No.")],
    }


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical"),
        ({"prompt": "Q", "chosen": "  ", "rejected": "x"}, "empty response"),
        ({"chosen": [m(U, "a"), m(A, "b")], "rejected": [m(U, "c"), m(A, "d")]}, "share no prompt"),
        ({"prompt": "Q", "chosen": "x"}, "field `rejected` is missing"),
    ],
)
def test_bad_preference_rows(row, message):
    with pytest.raises(RowError, match=message):
        to_record(row, "preference", {})


def test_unpaired_labels_and_conversation_form():
    record = to_record({"prompt": "Q", "completion": "A", "label": "false"}, "unpaired", {})
    assert record == {"prompt": [m(U, "Q")], "completion": [m(A, "A")], "label": False}
    record = to_record({"messages": [m(U, "Q"), m(A, "A")], "label": True}, "unpaired", {})
    assert record["prompt"] == [m(U, "Q")] and record["label"] is True
    with pytest.raises(RowError, match="must be a boolean"):
        to_record({"prompt": "Q", "completion": "A", "label": "maybe"}, "unpaired", {})


def test_prompt_only_keeps_extra_columns():
    record = to_record({"question": "2+2?", "answer": "4", "id": 7}, "prompt_only", {"prompt": "question"})
    assert record == {"prompt": [m(U, "2+2?")], "answer": "4", "id": 7}


def test_system_prompt_goes_before_prompt_records():
    record = to_record({"prompt": "Q"}, "prompt_only", {}, system_prompt="Be brief.")
    assert record["prompt"] == [m(S, "Be brief."), m(U, "Q")]


# ------------------------------------------------------------------------------------------ file types
ROWS = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]


def test_csv_parquet_and_gzip_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,d\n")
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in ROWS))
    with gzip.open(tmp_path / "d.csv.gz", "wt") as handle:
        handle.write("prompt,completion\na,b\nc,d\n")
    for name in ("d.csv", "d.parquet", "d.jsonl.gz", "d.csv.gz"):
        rows = list(read_rows(tmp_path / name))
        assert [r.data for r in rows] == ROWS, name
    assert [r.where for r in read_rows(tmp_path / "d.csv")] == [f"{tmp_path / 'd.csv'}:2", f"{tmp_path / 'd.csv'}:3"]


def test_empty_file_and_unknown_type_and_undecodable_line(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n \n")
    with pytest.raises(DataError, match="the file is empty"):
        list(read_rows(tmp_path / "empty.jsonl"))
    (tmp_path / "d.xml").write_text("<a/>")
    with pytest.raises(DataError, match="unknown file type"):
        list(read_rows(tmp_path / "d.xml"))
    (tmp_path / "bad.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "\xff"}\n')
    items = list(read_rows(tmp_path / "bad.jsonl"))
    assert isinstance(items[0], Row)
    assert isinstance(items[1], DataError) and f"{tmp_path / 'bad.jsonl'}:2: not valid UTF-8" in str(items[1])


def test_csv_row_with_extra_cells_is_reported(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\na,b,c\n")
    (item,) = list(read_rows(tmp_path / "d.csv"))
    assert isinstance(item, DataError) and ":2: 3 cells for 2 columns" in str(item)


def test_hub_path_reads_a_local_directory_in_hub_layout(tmp_path):
    data = tmp_path / "org-dataset" / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (data / "test.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    source = DataSource(hub=str(tmp_path / "org-dataset"), split="test", format="prompt_completion")
    assert [r.data for r in read_source(source)] == ROWS[:1]
    assert source.label.endswith("org-dataset[test]")


def test_source_needs_exactly_one_origin():
    with pytest.raises(ValueError, match="exactly one of `path`"):
        DataSource(format="text")
    with pytest.raises(ValueError, match="apply to `hub` datasets"):
        DataSource(path="x.jsonl", split="test")


def test_method_that_needs_conversations_rejects_other_kinds(tmp_path):
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": "a", "rejected": "b"}) + "\n")
    source = DataSource(path=str(tmp_path / "p.jsonl"), format="preference")
    with pytest.raises(ConfigError, match="gives preference records, but this method trains on messages"):
        load_records(source, "fail", SplitStats(), "messages")


# ------------------------------------------------------------------------------ real files, every row
REAL = [
    ("llamafactory_demo/alpaca_en_demo.json", "alpaca", {}, "messages", 999),
    ("llamafactory_demo/dpo_en_demo.json", "preference", {"prompt": "conversations"}, "preference", 300),
    ("llamafactory_demo/kto_en_demo.json", "unpaired", {}, "unpaired", 300),
    ("hh_rlhf/helpful-base/test.jsonl.gz", "preference", {}, "preference", 2354),
    (
        "stack_exchange_paired/stack_exchange_paired_tiny.json",
        "preference",
        {"prompt": "question", "chosen": "response_j", "rejected": "response_k"},
        "preference",
        25,
    ),
    ("alpaca/alpaca_sample2000.alpaca_small.json", "alpaca", {}, "messages", 2000),
    ("gsm8k/train.jsonl", "prompt_only", {"prompt": "question"}, "prompt_only", 7473),
]


@pytest.mark.parametrize(("relative", "fmt", "columns", "kind", "count"), REAL, ids=[r[0] for r in REAL])
def test_every_row_of_the_real_files_parses(relative, fmt, columns, kind, count):
    source = DataSource(path=str(shared(relative)), format=fmt, columns=columns)
    stats = SplitStats()
    records = load_records(source, "skip", stats, kind)
    assert stats.rows == count
    # Anything skipped is reported with its location; HH-RLHF has a few rows whose two sides are identical.
    assert len(records) + stats.skipped_bad_rows == count
    assert stats.skipped_bad_rows <= count // 100, stats.bad_rows[:3]
    assert all(message.startswith(str(shared(relative))) for message in stats.bad_rows)


def test_labels_cover_only_the_answer_on_real_alpaca():
    tokenizer = build_tokenizer()
    source = DataSource(path=str(shared("alpaca/alpaca_first100.torchtune_alpaca_tiny.json")), format="alpaca")
    for _, record in load_records(source, "fail", SplitStats(), "messages")[:20]:
        encoded = encode(tokenizer, record["messages"])
        trained = [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE_INDEX]
        assert tokenizer.decode(trained) == record["messages"][-1]["content"] + "<|im_end|>"


def test_json_files_of_every_shape(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "keyed.json").write_text(json.dumps({"7": ROWS[0], "9": ROWS[1]}))  # one line, keyed by id
    (tmp_path / "one.json").write_text(json.dumps(ROWS[0]))
    assert [r.data for r in read_rows(tmp_path / "list.json")] == ROWS
    assert [r.data for r in read_rows(tmp_path / "lines.json")] == ROWS
    assert [r.data for r in read_rows(tmp_path / "keyed.json")] == [{"id": "7", **ROWS[0]}, {"id": "9", **ROWS[1]}]
    assert [r.data for r in read_rows(tmp_path / "one.json")] == [ROWS[0]]
