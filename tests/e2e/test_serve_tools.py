"""Tool calling through `llmft serve` with the official `openai` client, on a tiny model trained to call a tool."""

from __future__ import annotations

import json
import threading

import pytest

from llm_finetuning.models.loading import prepare_tokenizer
from llm_finetuning.models.tiny import build_tokenizer
from llm_finetuning.serve.generation import load_for_inference
from llm_finetuning.serve.server import Engine, ServedModel, ServerLimits, create_server
from tests.tool_fixtures import TOOLS

openai = pytest.importorskip("openai")
pytestmark = pytest.mark.e2e
KEY = "test-key"
WEATHER = [{"role": "user", "content": "Weather in Paris?"}]
RAW_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def client(tool_run):
    model, tokenizer = load_for_inference(tool_run)
    chatml = build_tokenizer()  # the same model behind a template that has no tools
    prepare_tokenizer(chatml, "chatml")
    served = [ServedModel("tools", tokenizer), ServedModel("plain", chatml)]
    engine = Engine(model, tokenizer, "tools", served=served)
    server = create_server(engine, "127.0.0.1", 0, KEY, ServerLimits(max_tokens=128))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key=KEY, max_retries=0)
    server.shutdown()
    server.server_close()


def ask(client, messages=WEATHER, **options):
    settings = {"model": "tools", "messages": messages, "tools": TOOLS, "temperature": 0, "max_tokens": 100}
    return client.chat.completions.create(**(settings | options))


def test_a_call_comes_back_as_tool_calls(client):
    choice = ask(client).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}


def test_a_streamed_call_is_reassembled_by_the_client(client):
    from openai.lib.streaming.chat import ChatCompletionStreamState

    state = ChatCompletionStreamState(input_tools=TOOLS)
    chunks = list(ask(client, stream=True))
    for chunk in chunks:
        state.handle_chunk(chunk)
    assert not any("<tool_call>" in (c.choices[0].delta.content or "") for c in chunks if c.choices)
    final = state.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    (call,) = final.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id == ask(client).choices[0].message.tool_calls[0].id  # the same reply gives the same call


def test_a_reply_that_calls_nothing_is_plain_content(client):
    for stream in (False, True):
        response = ask(client, [{"role": "user", "content": "Say hi"}], stream=stream)
        if stream:
            chunks = list(response)
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            assert all(c.choices[0].delta.tool_calls is None for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            message = response.choices[0].message
            content, finish = message.content, response.choices[0].finish_reason
            assert message.tool_calls is None
        assert (content, finish) == ("Hi!", "stop")


def test_tool_choice_none_gives_the_raw_text(client):
    choice = ask(client, tool_choice="none").choices[0]
    assert choice.message.content == RAW_CALL and choice.message.tool_calls is None
    assert choice.finish_reason == "stop"


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_a_required_or_named_tool_choice_forces_a_call(client, choice):
    # the reply starts from the call's opening (through the arguments key when named) and is read as a call
    reply = ask(client, [{"role": "user", "content": "Weather in Berlin?"}], tool_choice=choice).choices[0]
    assert reply.finish_reason == "tool_calls"
    (call,) = reply.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Berlin"}


def test_a_tool_choice_naming_an_undeclared_tool_is_a_400(client):
    with pytest.raises(openai.BadRequestError, match="names `get_time`, which `tools` does not declare"):
        ask(client, tool_choice={"type": "function", "function": {"name": "get_time"}})


def test_a_follow_up_with_the_call_and_its_answer_is_answered(client):
    message = ask(client).choices[0].message
    history = [
        *WEATHER,
        message.model_dump(exclude_none=True),  # as a client sends it back: arguments as a JSON string
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": json.dumps({"temp": 5})},
    ]
    choice = ask(client, history).choices[0]
    assert choice.finish_reason == "stop" and choice.message.tool_calls is None
    assert choice.message.content  # the trained answer is "It is 5 C."; any text proves it rendered and ran


def test_a_call_cut_short_is_plain_content_with_length(client):
    for stream in (False, True):
        response = ask(client, max_tokens=5, stream=stream)
        if stream:
            chunks = list(response)
            content = "".join(c.choices[0].delta.content or "" for c in chunks)
            finish = chunks[-1].choices[0].finish_reason
        else:
            content, finish = response.choices[0].message.content, response.choices[0].finish_reason
            assert response.choices[0].message.tool_calls is None
        assert (content, finish) == (RAW_CALL[:5], "length")


def test_tools_for_a_template_without_tool_support_are_a_clear_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, model="plain")
    assert "`plain` cannot take tools: `chatml` has no tool support" in str(info.value)
    assert info.value.body["param"] == "tools"
