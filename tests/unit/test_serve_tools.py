"""Tool calling in the server without HTTP: request parsing, prompts, reading calls back, streaming hold-back."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from llm_finetuning.data.tool_parsers import FORMATS
from llm_finetuning.models.loading import prepare_tokenizer
from llm_finetuning.models.tiny import build_tokenizer
from llm_finetuning.serve.engine import Ticket, ticket_text
from llm_finetuning.serve.generation import render_chat
from llm_finetuning.serve.protocol import ApiError, Sampling, ServerLimits, ToolChoice, parse_chat
from llm_finetuning.serve.tools import ReplyStream, ToolPlan, check_prompt, plan_tools, reply_message
from llm_finetuning.serve.vllm_backend import plan as vllm_plan
from tests.tool_fixtures import TOOLS, WEATHER

LIMITS = ServerLimits(max_tokens=64)
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
HERMES = ToolPlan(FORMATS["hermes"])


def chat(**change):
    return {"model": "m", "messages": ASK, "tools": TOOLS, **change}


def refused(body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_chat(body, LIMITS)
    assert caught.value.status == HTTPStatus.BAD_REQUEST
    return caught.value


def tokenizer(template: str):
    tok = build_tokenizer()
    prepare_tokenizer(tok, template)
    return tok


def function(**fields):
    return [{"type": "function", "function": {"name": "f", **fields}}]


# ------------------------------------------------------------------ request parsing
@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"tools": {"type": "function"}}, "tools", "`tools` must be a list"),
        ({"tools": [{"type": "retrieval"}]}, "tools[0]", "only function tools are supported"),
        ({"tools": [{"type": "function", "function": "f"}]}, "tools[0]", "only function tools"),
        ({"tools": [{"type": "function", "function": {}, "x": 1}]}, "tools[0].x", "not a field of a tool"),
        ({"tools": function(name="has space")}, "tools[0].function.name", "1 to 64 letters"),
        ({"tools": [{"type": "function", "function": {"description": "d"}}]}, "tools[0].function.name", "letters"),
        ({"tools": function(parameters=[])}, "tools[0].function.parameters", "must be a JSON schema object"),
        ({"tools": function(description=5)}, "tools[0].function.description", "must be a string"),
        ({"tools": function(strict=True)}, "tools[0].function.strict", "not constrained to the schema"),
        ({"tools": function(returns={})}, "tools[0].function.returns", "not a field of a function"),
        ({"tools": TOOLS + TOOLS}, "tools", "`get_weather` is declared twice"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, "tool_choice", "does not declare"),
        ({"tool_choice": "sometimes"}, "tool_choice", '"none", "auto", "required" or'),
        ({"tool_choice": "required", "tools": None}, "tool_choice", "no `tools` are given"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls", "must be true or false"),
        ({"functions": [WEATHER]}, "functions", "deprecated form of `tools`"),
        ({"function_call": "auto"}, "function_call", "deprecated form of `tool_choice`"),
    ],
)
def test_bad_tools_and_tool_choice_are_400s_naming_the_field(change, param, message):
    error = refused(chat(**change))
    assert error.param == param and message in error.message


def call(arguments='{"city": "Paris"}', ident="call_1", **extra):
    return {"id": ident, "type": "function", "function": {"name": "get_weather", "arguments": arguments}, **extra}


@pytest.mark.parametrize(
    ("messages", "param", "message"),
    [
        ([{"role": "user", "content": "x", "tool_calls": [call()]}], "messages[0]", "only assistant messages"),
        ([{"role": "assistant", "content": None, "tool_calls": {"id": "x"}}], "messages[0].tool_calls", "a list"),
        (
            [{"role": "assistant", "content": None, "tool_calls": [call("{city: Paris}")]}],
            "messages[0].tool_calls",
            "`messages[0].tool_calls[0].function.arguments` is not valid JSON",
        ),
        (
            [{"role": "assistant", "content": None, "tool_calls": [call('["Paris"]')]}],
            "messages[0].tool_calls",
            "must be an object of named arguments",
        ),
        ([{"role": "assistant", "content": None, "tool_calls": [call(type="x")]}], "messages[0].tool_calls", "type"),
        (
            [*ASK, {"role": "tool", "content": "5 C", "tool_call_id": "call_9"}],
            "messages[1].tool_call_id",
            "no earlier assistant `tool_calls` holds",
        ),
        ([*ASK, {"role": "tool", "content": "5", "tool_call_id": 7}], "messages[1].tool_call_id", "non-empty string"),
        ([{"role": "assistant", "content": None, "function_call": {}}], "messages[0]", "send `tool_calls`"),
    ],
)
def test_bad_tool_history_is_a_400_naming_the_message(messages, param, message):
    error = refused(chat(messages=messages))
    assert error.param == param and message in error.message


def test_history_with_calls_and_tool_answers_is_normalised():
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call(), call('{"city": "Oslo"}', "call_2")]},
        {"role": "tool", "content": '{"temp": 5}', "tool_call_id": "call_1"},
        {"role": "tool", "content": [{"type": "text", "text": '{"temp": 4}'}]},  # no id: the next call's
    ]
    parsed = parse_chat(chat(messages=messages), LIMITS)
    assert parsed.messages[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        ],
    }
    assert parsed.messages[2] == {
        "role": "tool",
        "content": '{"temp": 5}',
        "tool_call_id": "call_1",
        "name": "get_weather",
    }
    assert parsed.messages[3] == {
        "role": "tool",
        "content": '{"temp": 4}',
        "tool_call_id": "call_2",
        "name": "get_weather",
    }
    assert parsed.tools == TOOLS and parsed.uses_tools


@pytest.mark.parametrize(
    ("change", "choice"),
    [
        ({}, ToolChoice("auto")),
        ({"tool_choice": "none"}, ToolChoice("none")),
        ({"tool_choice": "required"}, ToolChoice("required")),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            ToolChoice("function", WEATHER["name"]),
        ),
        ({"tools": [], "tool_choice": "auto"}, ToolChoice("none")),  # nothing to call
        ({"tools": None}, ToolChoice("none")),
    ],
)
def test_tool_choice_is_read(change, choice):
    assert parse_chat(chat(**change), LIMITS).tool_choice == choice


def test_parallel_tool_calls_and_plain_requests():
    assert parse_chat(chat(parallel_tool_calls=False), LIMITS).parallel_tool_calls is False
    plain = parse_chat({"model": "m", "messages": ASK}, LIMITS)
    assert plain.tools == [] and not plain.uses_tools and plain.parallel_tool_calls


# ------------------------------------------------------------------ prompts and plans
def test_a_template_without_tool_support_is_refused_by_name():
    chatml = tokenizer("chatml")
    with pytest.raises(ApiError) as caught:
        plan_tools(parse_chat(chat(), LIMITS), chatml, "tiny")
    assert caught.value.param == "tools" and "`chatml` has no tool support" in caught.value.message
    # With tool_choice none nothing is parsed, but the tools must still reach the prompt.
    request = parse_chat(chat(tool_choice="none"), LIMITS)
    assert plan_tools(request, chatml, "tiny") == ToolPlan()
    with pytest.raises(ApiError, match="`chatml` has no tool support.*tool `get_weather`"):
        check_prompt(render_chat(chatml, request.messages, request.tools), request, chatml, "tiny")


def test_a_hermes_prompt_holds_the_tools_and_the_prefill_names_the_function():
    hermes = tokenizer("hermes")
    request = parse_chat(chat(tool_choice={"type": "function", "function": {"name": "get_weather"}}), LIMITS)
    plan = plan_tools(request, hermes, "tiny")
    assert plan.fmt is FORMATS["hermes"] and plan.prefill == '<tool_call>\n{"name": "get_weather", "arguments": '
    text = render_chat(hermes, request.messages, request.tools)
    check_prompt(text, request, hermes, "tiny")  # no error: the template renders tools
    assert "<tools>" in text and text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize(
    ("layout", "rest", "arguments_key"),
    [
        ("hermes", '{"city": "Oslo"}}\n</tool_call>', "arguments"),
        ("llama3", '{"city": "Oslo"}}', "parameters"),
        ("mistral", '{"city": "Oslo"}, "id": "abcdefghi"}]', "arguments"),
    ],
)
def test_prefills_parse_back_into_the_named_call(layout, rest, arguments_key):
    fmt = FORMATS[layout]
    assert fmt.prefill(None) in fmt.prefill("get_weather")
    assert f'"{arguments_key}": ' in fmt.prefill("get_weather")
    parsed = fmt.parse(fmt.prefill("get_weather") + rest)
    assert [c["function"] for c in parsed.calls] == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]


def test_mistral_call_markers_survive_decoding_but_the_end_of_turn_does_not():
    mistral = tokenizer("mistral")
    plan = plan_tools(parse_chat(chat(), LIMITS), mistral, "tiny")
    ids = mistral('[TOOL_CALLS] [{"name": "get_weather", "arguments": {}}]<|pad|>', add_special_tokens=False)
    ticket = Ticket("m", [], 8, Sampling(), lambda event: None, drop_ids=plan.drop_ids)
    ticket.tokens = ids["input_ids"]
    assert ticket_text(mistral, ticket) == '[TOOL_CALLS] [{"name": "get_weather", "arguments": {}}]'
    plain = Ticket("m", [], 8, Sampling(), lambda event: None, tokens=list(ticket.tokens))
    assert "[TOOL_CALLS]" not in ticket_text(mistral, plain)  # without tools: as before


# ------------------------------------------------------------------ replies
def test_a_reply_with_a_call_becomes_openai_tool_calls():
    message, finish = reply_message(HERMES, CALL, "stop")
    assert finish == "tool_calls" and message["content"] is None
    (only,) = message["tool_calls"]
    assert only["type"] == "function" and only["id"]
    assert only["function"]["name"] == "get_weather" and json.loads(only["function"]["arguments"]) == {"city": "Paris"}
    message, _ = reply_message(HERMES, "Checking.\n" + CALL + "\n" + CALL.replace("Paris", "Oslo"), "stop")
    assert message["content"] == "Checking." and len(message["tool_calls"]) == 2
    single = ToolPlan(FORMATS["hermes"], parallel=False)
    assert len(reply_message(single, CALL + "\n" + CALL.replace("Paris", "Oslo"), "stop")[0]["tool_calls"]) == 1


@pytest.mark.parametrize(
    ("plan", "text", "finish"),
    [
        (HERMES, "Hi!", "stop"),
        (HERMES, '<tool_call>\n{"name": "get_wea', "length"),  # cut short: malformed
        (ToolPlan(), CALL, "stop"),  # tool_choice none: not parsed
    ],
)
def test_replies_without_a_parsed_call_are_plain_text(plan, text, finish):
    assert reply_message(plan, text, finish) == ({"role": "assistant", "content": text}, finish)


def test_a_forced_call_that_does_not_parse_comes_back_with_its_prefill():
    plan = ToolPlan(FORMATS["hermes"], prefill="<tool_call>\n")
    assert reply_message(plan, "oops", "stop")[0]["content"] == "<tool_call>\noops"
    assert reply_message(plan, CALL.removeprefix("<tool_call>\n"), "stop")[1] == "tool_calls"


# ------------------------------------------------------------------ streaming
def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def stream(plan: ToolPlan, chunks: list[str], finish: str = "stop"):
    replies = ReplyStream(plan)
    sent = [delta for piece in chunks for delta in replies.feed(piece)]
    last, reason = replies.end(finish)
    return sent, last, reason


def test_a_streamed_call_is_held_back_and_sent_as_tool_call_chunks():
    sent, last, reason = stream(HERMES, pieces("Let me check.\n" + CALL))
    assert "".join(d["content"] for d in sent) == "Let me check."  # nothing of the call leaked as content
    assert all(set(d) == {"content"} for d in sent)
    assert reason == "tool_calls"
    (delta,) = last
    (chunk,) = delta["tool_calls"]
    assert chunk["index"] == 0 and chunk["type"] == "function" and chunk["id"]
    assert chunk["function"]["name"] == "get_weather"
    assert json.loads(chunk["function"]["arguments"]) == {"city": "Paris"}


def test_streamed_parallel_calls_get_their_indexes():
    _, last, reason = stream(HERMES, pieces(CALL + "\n" + CALL.replace("Paris", "Lima"), 5))
    assert reason == "tool_calls" and [d["tool_calls"][0]["index"] for d in last] == [0, 1]
    assert json.loads(last[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Lima"}


def test_a_tail_that_may_open_a_call_waits_and_is_released_when_it_does_not():
    replies = ReplyStream(HERMES)
    assert replies.feed("a ") == [{"content": "a"}]  # whitespace may precede a call: held
    assert replies.feed("<tool") == []
    assert replies.feed("s> b") == [{"content": " <tools> b"}]
    assert replies.end("stop") == ([], "stop")


def test_a_malformed_streamed_call_is_flushed_as_text_with_its_finish_reason():
    text = '<tool_call>\n{"name": "get_weather", "argu'
    sent, last, reason = stream(HERMES, pieces(text), "length")
    assert sent == [] and last == [{"content": text}] and reason == "length"


def test_plain_streams_pass_straight_through():
    sent, last, reason = stream(ToolPlan(), ["<tool", "_call>", " hi "])
    assert sent == [{"content": "<tool"}, {"content": "_call>"}, {"content": " hi "}] and (last, reason) == ([], "stop")


def test_a_forced_call_streams_nothing_until_the_end():
    plan = ToolPlan(FORMATS["hermes"], prefill="<tool_call>\n")
    sent, last, reason = stream(plan, pieces(CALL.removeprefix("<tool_call>\n")))
    assert sent == [] and reason == "tool_calls" and len(last) == 1


@pytest.mark.parametrize(
    ("layout", "reply"),
    [
        ("llama3", 'Sure. { "name" : "get_weather", "parameters": {"city": "Paris"}}'),
        ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}]'),
    ],
)
def test_other_layouts_stream_their_calls(layout, reply):
    sent, last, reason = stream(ToolPlan(FORMATS[layout]), pieces(reply, 2))
    content = "".join(d["content"] for d in sent + last if "content" in d)
    assert content == ("Sure." if layout == "llama3" else "") and reason == "tool_calls"
    assert json.loads(last[-1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


# ------------------------------------------------------------------ vLLM
@pytest.mark.parametrize(("template", "parser"), [("hermes", "hermes"), ("llama3.1", "llama3_json"), ("chatml", None)])
def test_vllm_gets_the_tool_parser_of_the_template(tmp_path, template, parser):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    tokenizer(template).save_pretrained(model)
    work = tmp_path / "work"
    work.mkdir()
    settings = {"host": "127.0.0.1", "port": 8000, "api_key": None, "context_length": None, "max_batch_size": None}
    result = vllm_plan(model, "m", [], workdir=work, **settings)
    assert result.tool_parser == parser
    if parser is None:
        assert "--enable-auto-tool-choice" not in result.command
    else:
        at = result.command.index("--tool-call-parser")
        assert result.command[at - 1 : at + 2] == ["--enable-auto-tool-choice", "--tool-call-parser", parser]
    chosen = vllm_plan(model, "m", [], workdir=work, extra_args=["--tool-call-parser=pythonic"], **settings)
    assert chosen.tool_parser is None and chosen.command.count("--enable-auto-tool-choice") == 0
