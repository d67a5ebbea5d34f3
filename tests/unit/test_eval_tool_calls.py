"""The `tool_calls` evaluation task: hand-written replies scored against hand-computed metrics in the three call
layouts, means over the examples each metric applies to, examples read from ShareGPT and OpenAI rows, Mistral's
special-token call marker kept through generation, the clear error for a template without tools, the task
config, and golden `calls` items."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from llm_finetuning.config.schema import TinyModelConfig
from llm_finetuning.data.tool_parsers import FORMATS
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.evaluation.config import EvalTaskConfig
from llm_finetuning.evaluation.golden import load_golden, run_golden, score_item, score_outputs
from llm_finetuning.evaluation.runner import evaluate_task, prompt_tokens
from llm_finetuning.evaluation.tasks import load_examples
from llm_finetuning.evaluation.tool_calls import decode_reply, generate_replies, json_equal, score_reply, summarise
from llm_finetuning.models.loading import prepare_tokenizer
from llm_finetuning.models.tiny import build_model, build_tokenizer
from tests.conftest import shared
from tests.tool_fixtures import TOOLS, WEATHER, sharegpt_rows

pytestmark = pytest.mark.unit

HERMES = FORMATS["hermes"]


def hermes(*calls: tuple[str, dict]) -> str:
    return "".join(
        f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>" for name, arguments in calls
    )


def weather(city: str, **more) -> dict:
    return {"name": "get_weather", "arguments": {"city": city, **more}}


KEYS = ("exact", "tool_selected", "arguments_match", "no_call_correct", "malformed")


@pytest.mark.parametrize(
    ("expected", "reply", "values"),
    [
        pytest.param([weather("Paris")], [weather("Paris")], (1, 1, 1, None, 0), id="right"),
        pytest.param(
            [weather("Paris")],
            [{"name": "get_time", "arguments": {"city": "Paris"}}],
            (0, 0, 0, None, 0),
            id="function",
        ),
        pytest.param([weather("Paris")], [weather("Rome")], (0, 1, 0, None, 0), id="argument"),
        pytest.param(
            [weather("Paris", days=1, unit="C")],
            [{"name": "get_weather", "arguments": {"unit": "C", "days": 1.0, "city": "Paris"}}],
            (1, 1, 1, None, 0),
            id="key-order-and-1.0",
        ),
        pytest.param(
            [weather("Paris"), weather("Oslo")],
            [weather("Paris")],
            (0, 0, 0, None, 0),
            id="two-expected-one-made",
        ),
        pytest.param(
            [weather("Paris"), weather("Oslo")],
            [weather("Oslo"), weather("Paris")],
            (1, 1, 1, None, 0),
            id="parallel-calls-any-order",
        ),
        pytest.param([], [weather("Paris")], (0, 0, None, 0, 0), id="call-not-needed"),
        pytest.param([], "Hi!", (1, 1, None, 1, 0), id="no-call-needed"),
        pytest.param(
            [weather("Paris")], '<tool_call>\n{"name": "get_weather", "arguments": {"ci', (0, 0, 0, None, 1), id="cut"
        ),
        pytest.param([], "<tool_call>\nnot json\n</tool_call>", (0, 0, None, 0, 1), id="malformed-no-call-needed"),
    ],
)
def test_hermes_replies_score_by_hand(expected, reply, values):
    """`reply`: the calls the model makes (written in the hermes layout), or the raw reply text."""
    made = reply if isinstance(reply, list) else []
    scored = score_reply(hermes(*[(c["name"], c["arguments"]) for c in made]) if made else reply, expected, HERMES)
    assert tuple(scored[key] for key in KEYS) == values
    assert (scored["expected_calls"], scored["predicted_calls"]) == (expected, made)


def test_mistral_and_llama3_replies_score_in_their_layouts():
    mistral = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}]'
    scored = score_reply(mistral, [weather("Paris")], FORMATS["mistral"])
    assert scored["predicted_calls"] == [weather("Paris")] and scored["exact"] == 1.0
    two = f"[TOOL_CALLS] {json.dumps([weather('Lima'), weather('Oslo')])}"
    assert score_reply(two, [weather("Lima")], FORMATS["mistral"])["tool_selected"] == 0.0  # one too many

    llama = FORMATS["llama3"]
    scored = score_reply('{"name": "get_weather", "parameters": {"city": "Paris"}}', [weather("Paris")], llama)
    assert (scored["exact"], scored["predicted_calls"]) == (1.0, [weather("Paris")])
    tagged = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}'
    assert tuple(score_reply(tagged, [weather("Paris")], llama)[k] for k in KEYS) == (0, 1, 0, None, 0)
    assert score_reply('{"name": "get_weather", "parameters": {"city": ', [], llama)["malformed"] == 1.0
    # The same text is plain text in a layout that does not read it.
    assert score_reply(mistral, [], HERMES)["no_call_correct"] == 1.0


def test_arguments_compare_as_json_values():
    assert json_equal({"a": 1, "b": [1, {"c": None}]}, {"b": [1.0, {"c": None}], "a": 1.0})
    assert not json_equal({"a": True}, {"a": 1})  # a boolean is not a number
    assert not json_equal({"a": "1"}, {"a": 1})
    assert not json_equal({"a": [1, 2]}, {"a": [2, 1]})  # arrays keep their order
    assert not json_equal({"a": 1}, {"a": 1, "b": 2})


def test_means_cover_the_examples_each_metric_applies_to():
    records = [
        score_reply(hermes(("get_weather", {"city": "Paris"})), [weather("Paris")], HERMES),  # right
        score_reply(hermes(("get_weather", {"city": "Rome"})), [weather("Paris")], HERMES),  # wrong city
        score_reply("Hi!", [], HERMES),  # right: no call
        score_reply(hermes(("get_weather", {"city": "Lima"})), [], HERMES),  # a call not needed
    ]
    summary = summarise(records)
    assert {k: summary[k] for k in KEYS} == {
        "exact": 0.5,  # 2 of 4
        "tool_selected": 0.75,  # Paris, Rome, Hi
        "arguments_match": 0.5,  # over the 2 examples expecting a call
        "no_call_correct": 0.5,  # over the 2 expecting none
        "malformed": 0.0,
    }
    only_calls = summarise(records[:2])
    assert "no_call_correct" not in only_calls and only_calls["arguments_match"] == 0.5


def test_examples_from_sharegpt_and_openai_rows(write_jsonl):
    call = weather("Paris")
    openai_call = {"name": "get_weather", "arguments": json.dumps(call["arguments"])}  # OpenAI: a JSON string
    openai = {
        "messages": [
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": openai_call}]},
        ],
        "tools": TOOLS,
    }  # fmt: skip
    finished, greeting = sharegpt_rows(1)[0], sharegpt_rows(1)[3]
    calling = {**finished, "conversations": finished["conversations"][:2]}  # ends with the function_call
    path = write_jsonl([finished, calling, greeting, openai, {"text": "no conversation"}])
    examples, skipped = load_examples(EvalTaskConfig(name="tool_calls", path=str(path)))
    assert [ex.gold["calls"] for ex in examples] == [[], [call], [], [call]]
    assert [len(ex.prompt) for ex in examples] == [3, 1, 1, 2]  # after the tool's answer, the call, hi, system+user
    assert examples[0].prompt[-1]["role"] == "tool" and examples[0].gold["content"] == "It is 5 C."
    assert all(ex.tools == TOOLS for ex in examples)
    assert len(skipped) == 1 and skipped[0].startswith(f"{path}:5") and "set the task's `format`" in skipped[0]
    # An explicit format reads only that layout.
    examples, skipped = load_examples(EvalTaskConfig(name="tool_calls", path=str(path), format="messages"))
    assert len(examples) == 1 and len(skipped) == 4


def test_task_config():
    assert EvalTaskConfig(name="tool_calls", path="x.jsonl", format="sharegpt").format == "sharegpt"
    with pytest.raises(ValueError, match="`format: alpaca` does not fit task `tool_calls`; use messages or sharegpt"):
        EvalTaskConfig(name="tool_calls", path="x.jsonl", format="alpaca")
    with pytest.raises(ValueError, match="`tool_calls` reads a file of conversations with tools"):
        EvalTaskConfig(name="tool_calls", dataset="glaive")
    with pytest.raises(ValueError, match="needs data"):
        EvalTaskConfig(name="tool_calls")
    with pytest.raises(ValueError, match="Did you mean `tool_calls`"):
        EvalTaskConfig(name="tool_call", path="x.jsonl")


def test_an_unknown_task_key_is_named_with_a_suggestion(write_yaml, write_jsonl):
    from llm_finetuning.config import load_config

    data = write_jsonl(sharegpt_rows(1))
    task = {"name": "tool_calls", "path": str(data), "fromat": "sharegpt"}
    config = write_yaml({"model": {"name": "tiny"}, "data": {"train": {"path": str(data)}}, "eval": {"tasks": [task]}})
    with pytest.raises(ConfigError, match="fromat.*Did you mean `format`"):
        load_config(config)


def hermes_tokenizer():
    tokenizer = build_tokenizer()
    prepare_tokenizer(tokenizer, "hermes")
    return tokenizer


def test_a_template_without_tool_calls_is_a_clear_error(write_jsonl, tmp_path):
    tokenizer = build_tokenizer()  # chatml: no tool layout
    model = build_model(TinyModelConfig(hidden_size=32, num_heads=2), tokenizer)
    task = EvalTaskConfig(name="tool_calls", path=str(write_jsonl(sharegpt_rows(1))))
    with pytest.raises(ConfigError) as raised:
        evaluate_task(model, tokenizer, task)
    message = str(raised.value)
    assert "task `tool_calls`: `chatml` has no tool-call layout" in message
    assert "data.chat_template: hermes|llama3.1|mistral" in message
    golden = tmp_path / "golden.yaml"
    golden.write_text(json.dumps({"items": [{"prompt": "Say hi", "tools": TOOLS, "calls": []}]}))
    with pytest.raises(ConfigError, match=f"golden set {golden}: `chatml` has no tool-call layout"):
        run_golden(model, tokenizer, load_golden(golden))


def test_prompt_length_counts_the_declared_tools():
    tokenizer = hermes_tokenizer()
    prompt = [{"role": "user", "content": "Weather in Paris?"}]
    with_tools, without = prompt_tokens(tokenizer, prompt, TOOLS), prompt_tokens(tokenizer, prompt)
    assert with_tools - without > len(WEATHER["description"])  # byte-level tokens: the tool schema is counted


class ScriptedModel:
    """Stands in for a model: `generate` appends the scripted token ids (right-padded) to each prompt."""

    device = torch.device("cpu")

    def __init__(self, replies: list[list[int]], pad: int, eos: list[int] | None = None) -> None:
        self.replies, self.pad = replies, pad
        self.generation_config = SimpleNamespace(eos_token_id=eos)

    def generate(self, input_ids, attention_mask, **settings):
        width = max(len(r) for r in self.replies)
        new = torch.tensor([r + [self.pad] * (width - len(r)) for r in self.replies[: len(input_ids)]])
        self.replies = self.replies[len(input_ids) :]
        return torch.cat([input_ids, new], dim=1)


def test_mistral_call_marker_is_a_special_token_kept_through_generation():
    tokenizer = AutoTokenizer.from_pretrained(shared("tokenizers/mistral-7b-v0.3"))
    prepare_tokenizer(tokenizer, "mistral")
    call = '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}]'
    ids = tokenizer(call + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "[TOOL_CALLS]"
    assert not tokenizer.decode(ids, skip_special_tokens=True).startswith("[TOOL_CALLS]")  # why specials are kept
    assert decode_reply(tokenizer, ids, {tokenizer.eos_token_id}) == call  # ends at EOS, marker kept

    hi = tokenizer("Hi!", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    model = ScriptedModel([ids, hi], tokenizer.pad_token_id)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    replies = generate_replies(model, tokenizer, [prompt, prompt], 64, 0.0, batch_size=2)
    assert replies == [call, "Hi!"]
    assert score_reply(replies[0], [weather("Paris")], FORMATS["mistral"])["exact"] == 1.0


def test_golden_calls_items(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(  # JSON is YAML; the anchor shares the tools between items
        "items:\n"
        f"  - {{id: paris, prompt: 'Weather in Paris?', tools: &tools [{json.dumps(WEATHER)}],\n"
        "     calls: [{name: get_weather, arguments: {city: Paris}}]}\n"
        f"  - {{id: hi, prompt: Say hi, tools: *tools, calls: []}}\n"
        f"  - {{id: wrapped, prompt: 'Weather in Oslo?', tools: {json.dumps(TOOLS)},\n"
        f"     calls: [{json.dumps(weather('Oslo'))}]}}\n"
    )
    golden = load_golden(path)
    paris, hi, wrapped = golden.items
    assert golden.kinds == ["calls"] * 3 and paris.pass_threshold == 1.0
    assert paris.declared_tools == hi.declared_tools == wrapped.declared_tools == TOOLS  # both tool shapes read
    assert score_item(paris, hermes(("get_weather", {"city": "Paris"})), call_format=HERMES) == 1.0
    assert score_item(paris, hermes(("get_weather", {"city": "Rome"})), call_format=HERMES) == 0.0
    assert score_item(hi, "Hi!", call_format=HERMES) == 1.0
    oslo = hermes(("get_weather", {"city": "Oslo"}))
    assert score_outputs(golden, ["Hi!", "Hi!", oslo], call_format=HERMES).passed == [False, True, True]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"prompt": "a", "tools": TOOLS, "exact": "b"}, "`tools` declares the functions of a `calls` item"),
        ({"prompt": "a", "tools": TOOLS, "calls": [{"name": "get_time"}]}, "`calls` names \\['get_time'\\]"),
        ({"prompt": "a", "tools": [{"description": "x"}], "calls": []}, "tools\\[0\\].name"),
        ({"prompt": "a", "calls": [{"arguments": {}}]}, "calls.0.name"),
        ({"prompt": "a", "calls": [], "exact": "b"}, "exactly one expectation"),
    ],
)
def test_bad_golden_calls_items_name_the_problem(tmp_path, item, message):
    path = tmp_path / "golden.jsonl"
    path.write_text(json.dumps(item) + "\n")
    with pytest.raises(DataError, match=message):
        load_golden(path)
