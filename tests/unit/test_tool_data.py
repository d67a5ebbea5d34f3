"""Tool calls as data: layouts read into one shape, templates that lose a turn refused, masks on real tokenizers,
and every built-in tool template's call parsed back into the same name and arguments."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from llm_finetuning.config.schema import DataConfig, DataSource
from llm_finetuning.data.formats import to_record
from llm_finetuning.data.inspect import inspect_source
from llm_finetuning.data.pipeline import prepare_records
from llm_finetuning.data.templates import BUILTIN_TEMPLATES, TOOL_TEMPLATES
from llm_finetuning.data.tokenize import IGNORE_INDEX, encode, render
from llm_finetuning.data.tool_parsers import FORMATS, format_for_template
from llm_finetuning.errors import DataError, RowError
from llm_finetuning.models.loading import prepare_tokenizer
from llm_finetuning.models.tiny import build_tokenizer
from tests.conftest import shared
from tests.tool_fixtures import TOOLS, WEATHER, sharegpt_rows, write_rows

pytestmark = pytest.mark.unit


def tokenizer_for(name: str, template: str | None = None):
    tokenizer = build_tokenizer() if name == "builtin" else AutoTokenizer.from_pretrained(shared(f"tokenizers/{name}"))
    prepare_tokenizer(tokenizer, template)
    return tokenizer


def trained_text(tokenizer, encoded) -> list[str]:
    """The decoded runs of tokens that carry loss."""
    runs, current = [], []
    for token, label in zip(encoded.input_ids, [*encoded.labels], strict=True):
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def weather_record(city: str = "Paris") -> dict:
    return to_record(next(r for r in sharegpt_rows(1) if city in json.dumps(r)), "sharegpt", {})


# --------------------------------------------------------------------------------------------- layouts
def test_openai_tool_calls_with_string_arguments_become_objects():
    row = {
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": "Weather in Oslo and Lima?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Lima"}},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "4"},
            {"role": "tool", "tool_call_id": "c2", "content": "4"},
            {"role": "assistant", "content": "Both 4 C."},
        ],
    }
    record = to_record(row, "messages", {})
    calls = record["messages"][1]["tool_calls"]
    assert [(c["id"], c["function"]["arguments"]) for c in calls] == [
        ("c1", {"city": "Oslo"}),
        ("c2", {"city": "Lima"}),
    ]
    assert record["messages"][1]["content"] == ""
    assert [m.get("name") for m in record["messages"][2:4]] == ["get_weather", "get_weather"]
    assert record["tools"] == TOOLS


def test_legacy_functions_and_function_call():
    row = {
        "functions": [WEATHER],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "function_call": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            },
            {"role": "function", "name": "get_weather", "content": "4"},
            {"role": "assistant", "content": "4 C."},
        ],
    }
    record = to_record(row, "messages", {})
    assert record["tools"] == TOOLS
    assert record["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert record["messages"][2]["role"] == "tool"


def test_sharegpt_text_then_function_call_is_one_turn_and_parallel_calls_are_kept():
    calls = [{"name": "get_weather", "arguments": {"city": c}} for c in ("Oslo", "Lima")]
    row = {
        "conversations": [
            {"from": "human", "value": "Oslo and Lima?"},
            {"from": "gpt", "value": "Checking both."},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": "4"},
            {"from": "observation", "value": "4"},
            {"from": "gpt", "value": "Both 4 C."},
        ],
        "tools": json.dumps([WEATHER]),
    }
    messages = to_record(row, "sharegpt", {})["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert messages[1]["content"] == "Checking both."
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert len(set(ids)) == 2 and all(len(i) == 9 and i.isalnum() for i in ids)  # Mistral's id rule
    assert [m["tool_call_id"] for m in messages[2:4]] == ids


def test_the_named_glaive_dataset_reads_the_sharegpt_function_calling_layout():
    from llm_finetuning.data.datasets import registry

    row = sharegpt_rows(1)[0]
    record = registry()["glaive_toolcall"].converters["messages"](row)
    assert record == to_record(row, "sharegpt", {}) and record["tools"] == TOOLS
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "tool", "assistant"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tools": "[{"}, r"field `tools` is not valid JSON"),
        ({"tools": json.dumps([{"description": "x"}])}, r"field `tools\[0\].name` must be the function's name"),
        ({"call": "not json"}, r"field `conversations\[1\].value` is not valid JSON"),
        ({"call": json.dumps({"name": "get_weather", "arguments": [1]})}, r"arguments` must be an object"),
        (
            {"call": json.dumps({"name": "get_time", "arguments": {}})},
            r"turn 2 calls `get_time`, which `tools` does not",
        ),
    ],
)
def test_bad_tool_data_names_the_field(change, message):
    row = sharegpt_rows(1)[0]
    if "tools" in change:
        row["tools"] = change["tools"]
    if "call" in change:
        row["conversations"][1]["value"] = change["call"]
    with pytest.raises(RowError, match=message):
        to_record(row, "sharegpt", {})


# --------------------------------------------------------------------------------------- no silent loss
def test_a_template_that_drops_the_tool_turn_is_an_error_naming_turn_role_and_template():
    tokenizer = tokenizer_for("qwen2")  # its shipped template has no branch for `tool` and renders no calls
    record = weather_record()
    record["messages"][1] = {"role": "assistant", "content": '{"name": "get_weather"}'}  # a call written as text
    with pytest.raises(RowError) as caught:
        encode(tokenizer, record["messages"], tools=record["tools"])
    text = str(caught.value)
    assert "turn 3 of 4 (tool: '{\"temp\": 5}') is missing its content" in text
    assert "tokenizers/qwen2" in text and "data.chat_template: hermes, llama3.1, mistral" in text


def test_declared_tools_the_template_ignores_are_an_error():
    tokenizer = tokenizer_for("builtin", "chatml")  # renders tool turns, but neither tools nor calls
    messages = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    with pytest.raises(RowError, match=r"the name of the tool `get_weather` given in `tools` is missing .*`chatml`"):
        encode(tokenizer, messages, tools=TOOLS)


def test_a_template_that_runs_turns_together_is_an_error():
    tokenizer = build_tokenizer()
    prepare_tokenizer(tokenizer, "{% for m in messages %}{{ m.content }}{% endfor %}<|im_end|>")
    messages = [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    with pytest.raises(RowError, match=r"turns 1 \(user\) and 2 \(assistant: 'Hi!'\) run together"):
        encode(tokenizer, messages)


def test_mistral_s_own_template_drops_the_system_prompt_of_a_finished_conversation():
    tokenizer = tokenizer_for("mistral-7b-v0.3")  # it adds the system prompt to the last turn only if that is user
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert "Be terse." in render(tokenizer, messages, True)
    with pytest.raises(RowError, match=r"turn 1 of 3 \(system: 'Be terse.'\) is missing its content"):
        encode(tokenizer, [*messages, {"role": "assistant", "content": "Hello"}])


def test_inspect_counts_rows_the_template_loses_as_bad(tmp_path):
    path = write_rows(tmp_path / "tools.jsonl", sharegpt_rows(2))
    source = DataSource(path=str(path), format="sharegpt")
    lossy = inspect_source(source, tokenizer_for("qwen2"))
    assert (lossy.stats.rows, lossy.stats.skipped_bad_rows) == (8, 8)  # the greetings lose their tools too
    assert lossy.stats.bad_rows[0].startswith(f"{path}:1: ")
    fine = inspect_source(source, tokenizer_for("qwen2", "hermes"))
    assert (fine.stats.rows, fine.stats.skipped_bad_rows, len(fine.lengths)) == (8, 0, 8)


def test_preference_rows_the_template_loses_are_bad_rows(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Q{i}"}, {"role": "tool", "content": f"result {i}"}],
            "chosen": "good",
            "rejected": "bad",
        }
        for i in range(3)
    ]
    path = write_rows(tmp_path / "pairs.jsonl", rows)
    config = DataConfig(train=[DataSource(path=str(path), format="preference")])
    with pytest.raises(DataError, match=r"pairs.jsonl:1: turn 2 of 2 \(tool: 'result 0'\) is missing its content"):
        prepare_records(config, "preference", 0, tokenizer_for("qwen2"))
    skipping = config.model_copy(update={"on_error": "skip"})
    with pytest.raises(DataError, match="No training example fits"):
        prepare_records(skipping, "preference", 0, tokenizer_for("qwen2"))
    assert len(prepare_records(config, "preference", 0, tokenizer_for("qwen2", "chatml")).train) == 3


def test_prompt_rows_are_render_checked_even_when_lengths_are_not_fitted(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Q"}, {"role": "tool", "content": f"r{i}"}]} for i in range(2)]
    config = DataConfig(train=[DataSource(path=str(write_rows(tmp_path / "p.jsonl", rows)), format="prompt_only")])
    with pytest.raises(DataError, match=r"p.jsonl:1: turn 2 of 2 \(tool: 'r0'\) is missing its content"):
        prepare_records(config, "prompt_only", 0, tokenizer_for("qwen2"), fit=False)  # PPO's path
    assert len(prepare_records(config, "prompt_only", 0, tokenizer_for("qwen2", "chatml"), fit=False).train) == 2


# ------------------------------------------------------------------------------------ masks, real tokenizers
@pytest.mark.parametrize(
    ("name", "template", "call", "answer"),
    [
        (
            "qwen2",
            "hermes",
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
            "It is 5 C.<|im_end|>",
        ),
        (
            "gpt2",
            "llama3.1",
            '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>',
            "It is 5 C.<|eot_id|>",
        ),
        (
            "mistral-7b-v0.3",
            "mistral",
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "JqicABwSk"}]</s>',
            "It is 5 C.</s>",  # SentencePiece decodes the leading space away
        ),
        (
            "mistral-7b-v0.3",
            None,  # Mistral's own template
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "JqicABwSk"}]</s>',
            "It is 5 C.</s>",  # SentencePiece decodes the leading space away
        ),
    ],
)
def test_loss_covers_the_call_and_the_answer_never_the_tool_result(name, template, call, answer):
    tokenizer = tokenizer_for(name, template)
    record = weather_record()
    encoded = encode(tokenizer, record["messages"], tools=record["tools"])
    assert trained_text(tokenizer, encoded) == [call, answer]
    assert '{"temp": 5}' in encoded.text or '{\\"temp\\": 5}' in encoded.text  # the result is context only
    assert "Current weather for a city" in encoded.text  # and so are the declared tools


def test_call_turn_with_text_trains_the_text_and_the_calls():
    tokenizer = tokenizer_for("qwen2", "hermes")
    calls = [{"name": "get_weather", "arguments": {"city": c}} for c in ("Oslo", "Lima")]
    row = {
        "conversations": [
            {"from": "human", "value": "Oslo and Lima?"},
            {"from": "gpt", "value": "Checking both."},
            {"from": "function_call", "value": json.dumps(calls)},
            {"from": "observation", "value": "4"},
            {"from": "observation", "value": "4"},
            {"from": "gpt", "value": "Both 4 C."},
        ],
        "tools": json.dumps([WEATHER]),
    }
    record = to_record(row, "sharegpt", {})
    runs = trained_text(tokenizer, encode(tokenizer, record["messages"], tools=record["tools"]))
    assert runs == [
        'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call><|im_end|>',
        "Both 4 C.<|im_end|>",
    ]


# ---------------------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("template", TOOL_TEMPLATES)
@pytest.mark.parametrize(
    ("content", "arguments"),
    [
        ("", [{"city": "Paris"}]),
        ("Let me check.", [{"city": "Oslo"}, {"city": "Lima", "units": "metric", "days": 3, "hourly": False}]),
        ("", [{"query": 'a "quoted" \\ path', "nested": {"k": [1, 2.5, None]}, "unicode": "Zürich 東京"}]),
    ],
)
def test_each_tool_template_renders_a_call_that_parses_back(template, content, arguments):
    tokenizer = tokenizer_for("qwen2", template)
    calls = [
        {"id": f"call{i:05d}", "type": "function", "function": {"name": f"fn_{i}", "arguments": a}}
        for i, a in enumerate(arguments)
    ]
    prompt = [{"role": "user", "content": "Go"}]
    before = render(tokenizer, prompt, True, TOOLS)
    full = render(tokenizer, [*prompt, {"role": "assistant", "content": content, "tool_calls": calls}], False, TOOLS)
    assert full.startswith(before)
    reply = full[len(before) :].split(tokenizer.eos_token)[0]
    fmt = format_for_template(tokenizer.chat_template)
    assert fmt is FORMATS[BUILTIN_TEMPLATES[template].tool_format]
    parsed = fmt.parse(reply)
    assert not parsed.malformed and parsed.content == content
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.calls] == [
        (c["function"]["name"], c["function"]["arguments"]) for c in calls
    ]


@pytest.mark.parametrize(
    ("name", "reply", "content", "names"),
    [
        ("hermes", 'Sure.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>', "Sure.", ["f"]),
        ("hermes", '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}', "", ["f"]),  # unclosed, string args
        (
            "llama3",
            '<|python_tag|>{"name": "f", "parameters": {"a": 1}}; {"name": "g", "parameters": {}}',
            "",
            ["f", "g"],
        ),
        ("mistral", '[TOOL_CALLS] [{"name": "f", "arguments": {"a": 1}, "id": "abcdefghi"}]', "", ["f"]),
        ("hermes", "no call here", "no call here", []),
    ],
)
def test_parsers_read_the_layouts_they_name(name, reply, content, names):
    parsed = FORMATS[name].parse(reply)
    assert (parsed.content, [c["function"]["name"] for c in parsed.calls], parsed.malformed) == (content, names, False)


@pytest.mark.parametrize(
    ("name", "reply"),
    [
        ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": '),
        ("hermes", '<tool_call>\n{"arguments": {}}\n</tool_call>'),
        ("llama3", '{"name": "f", "parameters": {"a": 1}} and then some text'),
        ("mistral", "[TOOL_CALLS] not json"),
    ],
)
def test_a_malformed_call_is_kept_as_text(name, reply):
    parsed = FORMATS[name].parse(reply)
    assert (parsed.content, parsed.calls, parsed.malformed) == (reply, [], True)


def test_template_detection_on_shipped_and_plain_templates():
    assert format_for_template(tokenizer_for("mistral-7b-v0.3").chat_template) is FORMATS["mistral"]
    assert format_for_template(tokenizer_for("qwen2").chat_template) is None
    assert format_for_template(BUILTIN_TEMPLATES["chatml"].jinja) is None


# ----------------------------------------------------------------------------------------------- convert
def test_converting_between_sharegpt_and_messages_keeps_tools_and_calls():
    from llm_finetuning.data.convert import from_record

    calls = [{"name": "get_weather", "arguments": {"city": c}} for c in ("Oslo", "Lima")]
    row = sharegpt_rows(1)[0]
    row["conversations"][1:2] = [
        {"from": "gpt", "value": "Checking."},
        {"from": "function_call", "value": json.dumps(calls)},
    ]
    record = to_record(row, "sharegpt", {})
    as_messages = from_record(record, "messages")
    assert as_messages["messages"][1]["tool_calls"][1]["function"]["arguments"] == '{"city": "Lima"}'  # OpenAI
    assert to_record(as_messages, "messages", {}) == record
    assert to_record(from_record(record, "sharegpt"), "sharegpt", {}) == record
    with pytest.raises(RowError, match="format `alpaca` has no place for tools"):
        from_record(record, "alpaca")
