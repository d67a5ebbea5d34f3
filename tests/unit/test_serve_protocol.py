"""Request parsing and validation of the server, rule by rule (no HTTP, no model)."""

from __future__ import annotations

import json
from http import HTTPStatus

import pytest

from llm_finetuning.serve.protocol import (
    ApiError,
    Sampling,
    ServerLimits,
    context_error,
    model_not_found,
    parse_chat,
    parse_completion,
    parse_json,
)

LIMITS = ServerLimits(max_tokens=64, max_n=4, max_stops=2, max_stop_chars=8)
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def refused(call, *args) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    ("raw", "content_type", "status", "message"),
    [
        (b"{}", "text/plain", 415, "must be sent as application/json (got text/plain)"),
        (b"{}", None, 415, "no content type"),
        (b'{"a": "\xff"}', "application/json", 400, "not valid UTF-8 (byte 7)"),
        (b'{"a": NaN}', "application/json", 400, "NaN is not a JSON number"),
        (b'{"a": -Infinity}', "application/json", 400, "-Infinity is not a JSON number"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
        (b'{"a": 1', "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b'{"a": ' + b"9" * 5000 + b"}", "application/json", 400, "not valid JSON"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_refused(raw, content_type, status, message):
    error = refused(parse_json, raw, content_type)
    assert error.status == status and message in error.message


def test_a_json_body_with_a_charset_parses():
    assert parse_json(b'{"a": 1}', "application/json; charset=utf-8") == {"a": 1}
    assert parse_json(b"", "application/json") == {}


@pytest.mark.parametrize(
    ("change", "param", "message"),
    [
        ({"temprature": 0.5}, "temprature", "Unrecognized request argument supplied: temprature"),
        ({"model": ""}, "model", "`model` must name one of the served models"),
        ({"max_tokens": 65}, "max_tokens", "`max_tokens` must be an integer in [1, 64]"),
        ({"max_tokens": 0}, "max_tokens", "[1, 64]"),
        ({"max_tokens": -5}, "max_tokens", "[1, 64]"),
        ({"max_tokens": 2.5}, "max_tokens", "[1, 64]"),
        ({"max_tokens": True}, "max_tokens", "[1, 64]"),
        ({"max_completion_tokens": 100}, "max_completion_tokens", "[1, 64]"),
        ({"temperature": -0.1}, "temperature", "`temperature` must be a number in [0.0, 2.0]"),
        ({"temperature": float("nan")}, "temperature", "`temperature` must be a number"),
        ({"temperature": "hot"}, "temperature", "`temperature` must be a number"),
        ({"top_p": 0}, "top_p", "`top_p` must be above 0"),
        ({"top_p": 1.5}, "top_p", "[0.0, 1.0]"),
        ({"n": 5}, "n", "`n` must be an integer in [1, 4]"),
        ({"n": 0}, "n", "[1, 4]"),
        ({"stop": ["a", "b", "c"]}, "stop", "up to 2 non-empty strings of at most 8 characters"),
        ({"stop": ["x" * 9]}, "stop", "at most 8 characters"),
        ({"stop": [""]}, "stop", "non-empty"),
        ({"stop": 7}, "stop", "`stop` must be a string"),
        ({"stream": "yes"}, "stream", "`stream` must be true or false"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with `stream: true`"),
        ({"stream": True, "stream_options": {"x": 1}}, "stream_options", "may only hold `include_usage`"),
        ({"presence_penalty": 0.5}, "presence_penalty", "not supported by this server: leave it at 0"),
        ({"frequency_penalty": 3}, "frequency_penalty", "[-2.0, 2.0]"),
        ({"logit_bias": {"1": 5}}, "logit_bias", "`logit_bias` is not supported"),
        ({"logprobs": True}, "logprobs", "log-probabilities are not returned"),
        ({"seed": 3}, "seed", "use temperature 0 for repeatable output"),
        ({"tools": [{"type": "function"}]}, "tools[0]", "only function tools are supported"),
        ({"tool_choice": "required"}, "tool_choice", "no `tools` are given"),
        ({"response_format": {"type": "json_object"}}, "response_format", "beyond {'type': 'text'}"),
        ({"user": 5}, "user", "`user` must be a string"),
        ({"messages": []}, "messages", "`messages` must be a non-empty list"),
        ({"messages": "hi"}, "messages", "non-empty list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0]", "needs a role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0]", "needs string content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
            "only text parts",
        ),
        (
            {"messages": [{"role": "assistant", "content": "", "tool_calls": [{}]}]},
            "messages[0].tool_calls",
            "must name the function it calls",
        ),
    ],
)
def test_chat_parameters_out_of_range_or_unsupported_are_named(change, param, message):
    error = refused(parse_chat, {**CHAT, **change}, LIMITS)
    assert error.status == HTTPStatus.BAD_REQUEST
    assert error.param == param and message in error.message
    assert error.body()["error"] == {
        "message": error.message,
        "type": "invalid_request_error",
        "param": param,
        "code": None,
    }


def test_a_valid_chat_request_is_read_whole():
    body = {
        **CHAT,
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "assistant", "content": None},
        ],
        "max_completion_tokens": 9,
        "temperature": 0,
        "top_p": 0.5,
        "stop": "END",
        "n": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tool_choice": "none",
        "response_format": {"type": "text"},
        "logprobs": False,
        "presence_penalty": 0,
    }
    parsed = parse_chat(body, LIMITS)
    assert parsed.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": ""},
    ]
    params = parsed.params
    assert (params.model, params.max_tokens, params.sampling) == ("m", 9, Sampling(0.0, 0.5))
    assert (params.stops, params.n, params.stream, params.include_usage) == (("END",), 3, True, True)
    assert params.sampling.greedy


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "tail"}, "suffix"),
        ({"messages": []}, "messages"),  # a chat key on the completions endpoint
    ],
)
def test_completion_requests_refuse_what_they_cannot_honour(change, param):
    error = refused(parse_completion, {"model": "m", "prompt": "p", **change}, LIMITS)
    assert error.status == HTTPStatus.BAD_REQUEST and error.param == param


def test_a_one_prompt_list_is_one_prompt():
    assert parse_completion({"model": "m", "prompt": ["p"], "best_of": 1}, LIMITS).prompt == "p"


def test_the_context_error_names_both_numbers():
    error = context_error(9019, 256, 2048)
    assert error.status == HTTPStatus.BAD_REQUEST and error.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error.message
    assert "9275 tokens (9019 in the prompt, 256 for the completion)" in error.message


def test_an_unknown_model_is_404_model_not_found_listing_the_served_ones():
    error = model_not_found("gpt-4", ["base", "support"])
    body = error.body()["error"]
    assert error.status == HTTPStatus.NOT_FOUND
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "`gpt-4` does not exist" in body["message"] and "base, support" in body["message"]


def test_error_bodies_are_json_serialisable():
    assert json.loads(json.dumps(model_not_found("x", ["y"]).body()))["error"]["type"] == "invalid_request_error"
