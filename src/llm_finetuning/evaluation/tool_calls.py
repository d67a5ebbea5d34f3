"""Tool-call evaluation: does the model call the right function with the right arguments, and keep quiet when no
call is needed?

An example is a conversation with declared tools, read with the project's own formats (`messages`, `sharegpt`):
the prompt is everything before its last assistant turn, and that turn is what the model should do: its calls
(one or several) or, when it is plain text, no call. The reply is generated with the chat template given the
tools and read with the template's own call layout (`data.tool_parsers`), so a model is judged in the layout it
was trained to write.

Per-example values (the task's metrics are their means):
- `exact`: the right calls with the right arguments, or, when none is expected, no call;
- `tool_selected`: the called function names equal the expected ones as a multiset (order ignored, counts not);
  with no call expected, 1 when none was made;
- `arguments_match` (examples expecting calls): the calls pair one-to-one with the expected ones, same name and
  equal arguments as JSON values (key order ignored, `1` equals `1.0`, `true` does not equal `1`);
- `no_call_correct` (examples expecting no call): the reply made no call;
- `malformed`: the reply opened a call that did not parse (it counts as a call made, and a wrong one).

Scoring is pure Python; generation imports torch when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm_finetuning.data.formats import RowError, to_record
from llm_finetuning.data.tool_parsers import ToolCallFormat, format_for_template
from llm_finetuning.errors import ConfigError
from llm_finetuning.evaluation import metrics
from llm_finetuning.evaluation.tasks import TASKS, Example

METRICS = TASKS["tool_calls"].metrics
"""Per-example values; `exact` is the headline (and what a golden `calls` item is scored by)."""
Named = dict[str, Any]
"""A call as compared and recorded: `{"name": str, "arguments": dict}`."""


# ----------------------------------------------------------------------------------------------- data
def conversation_format(row: dict[str, Any], columns: dict[str, str]) -> str:
    """`sharegpt` or `messages`, from the row's conversation column, for a task that does not set `format`."""
    if columns.get("conversations", "conversations") in row:
        return "sharegpt"
    if columns.get("messages", "messages") in row:
        return "messages"
    raise RowError(
        "no `messages` (OpenAI) or `conversations` (ShareGPT) column; set the task's `format` (messages or "
        "sharegpt) and, for other column names, `columns`"
    )


def named(call: dict[str, Any]) -> Named:
    """A canonical call (`{"id", "type", "function": {...}}`) as its name and arguments."""
    return {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}


def tool_example(row: dict[str, Any], where: str, fmt: str | None, columns: dict[str, str]) -> Example:
    """The prompt (the turns before the last assistant turn), the declared tools and that turn's calls."""
    record = to_record(row, fmt or conversation_format(row, columns), columns)
    messages = record["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")  # to_record ensures one exists
    prompt = messages[:last]
    if not any(m["role"] == "user" for m in prompt):
        raise RowError("no user turn before the last assistant turn: nothing to answer")
    expected = messages[last]
    gold = {"calls": [named(c) for c in expected.get("tool_calls") or ()], "content": expected["content"]}
    return Example(id=where, prompt=prompt, gold=gold, target=expected["content"], tools=record.get("tools", []))


def call_format(tokenizer: Any, where: str = "task `tool_calls`") -> ToolCallFormat:
    """The call layout of the tokenizer's chat template; a `ConfigError` when it has none (calls unreadable)."""
    from llm_finetuning.data.templates import template_name

    found = format_for_template(getattr(tokenizer, "chat_template", None))
    if found is None:
        raise ConfigError(
            f"{where}: {template_name(tokenizer)} has no tool-call layout, so the model's calls cannot be read. "
            "Train and evaluate with a tool template: data.chat_template: hermes|llama3.1|mistral"
        )
    return found


# ----------------------------------------------------------------------------------------------- scoring
def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: objects by keys, numbers by value (1 == 1.0), booleans only with booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _same_call(a: Named, b: Named) -> bool:
    return a["name"] == b["name"] and json_equal(a["arguments"], b["arguments"])


def same_calls(expected: list[Named], predicted: list[Named]) -> bool:
    """Whether the calls pair one-to-one, same name and equal arguments (order ignored: parallel calls)."""
    unused = list(predicted)
    for want in expected:
        match = next((i for i, got in enumerate(unused) if _same_call(got, want)), None)
        if match is None:
            return False
        unused.pop(match)
    return not unused


def score_reply(reply: str, expected: list[Named], layout: ToolCallFormat) -> dict[str, Any]:
    """The reply's calls and text, and the per-example values (`None` where a value does not apply)."""
    parsed = layout.parse(reply)
    predicted = [named(c) for c in parsed.calls]
    quiet = not predicted and not parsed.malformed  # no call made, not even a broken one
    if expected:
        selected = sorted(c["name"] for c in expected) == sorted(c["name"] for c in predicted)
        exact = arguments = selected and same_calls(expected, predicted)
        no_call = None
    else:
        exact = selected = no_call = quiet
        arguments = None
    values = {
        "exact": exact,
        "tool_selected": selected,
        "arguments_match": arguments,
        "no_call_correct": no_call,
        "malformed": parsed.malformed,
    }
    return {
        "expected_calls": expected,
        "predicted_calls": predicted,
        "content": parsed.content,
        **{name: None if value is None else float(value) for name, value in values.items()},
    }


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    """Each metric's mean and standard error over the examples it applies to (left out when none does)."""
    out: dict[str, float] = {}
    for name in METRICS:
        values = [r[name] for r in records if r[name] is not None]
        if values:
            out[name], out[f"{name}_stderr"] = metrics.mean_and_stderr(values)
    return out


# ----------------------------------------------------------------------------------------------- generation
def render_prompt(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
    """The text generation starts from: the chat template given the tools, assistant turn opened (the same
    rendering training uses); a template that rejects the conversation raises `RowError`."""
    from llm_finetuning.data.tokenize import render

    return render(tokenizer, messages, True, tools)


def renderable(tokenizer: Any, examples: list[Example]) -> tuple[list[Example], list[str]]:
    """The examples the template can render, and `id: reason` for the others (skipped, like unusable rows)."""
    kept, dropped = [], []
    for ex in examples:
        try:
            render_prompt(tokenizer, ex.prompt, ex.tools)
        except RowError as exc:
            dropped.append(f"{ex.id}: {exc}")
        else:
            kept.append(ex)
    return kept, dropped


def stop_ids(model: Any, tokenizer: Any) -> set[int]:
    """Tokens that end a reply: EOS (the tokenizer's and the generation config's) and padding."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set(configured) if isinstance(configured, list) else {configured}
    ids |= {tokenizer.eos_token_id, tokenizer.pad_token_id}
    ids.discard(None)
    return ids


def decode_reply(tokenizer: Any, ids: list[int], stops: set[int]) -> str:
    """The reply up to its first end token, keeping the other special tokens: a call marker may be one
    (Mistral's `[TOOL_CALLS]`), and skipping special tokens would erase it."""
    end = next((i for i, token in enumerate(ids) if token in stops), len(ids))
    return tokenizer.decode(ids[:end], skip_special_tokens=False)


def generate_replies(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    advance: Callable[[int], None] = lambda count: None,
) -> list[str]:
    """Replies to rendered prompts, `batch_size` at a time, left-padded, with the generation settings of
    `serve.generation` (greedy at temperature 0); `advance` is called after each batch."""
    import torch

    from llm_finetuning.serve.generation import generation_settings

    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    settings = generation_settings(tokenizer, max_new_tokens, temperature, 1.0)
    stops = stop_ids(model, tokenizer)
    replies: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        inputs = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            tokens = model.generate(**inputs, **settings)
        new = tokens[:, inputs["input_ids"].shape[1] :]
        replies.extend(decode_reply(tokenizer, row.tolist(), stops) for row in new)
        advance(len(batch))
    return replies


def run_task(
    model: Any, tokenizer: Any, examples: list[Example], max_new_tokens: int, temperature: float, batch_size: int,
    advance: Callable[[int], None],
) -> tuple[dict[str, float], list[dict[str, Any]]]:  # fmt: skip
    """Generate a reply to every example and score it: the task's metrics and one record per example."""
    layout = call_format(tokenizer)
    texts = [render_prompt(tokenizer, ex.prompt, ex.tools) for ex in examples]
    replies = generate_replies(model, tokenizer, texts, max_new_tokens, temperature, batch_size, advance)
    records = [
        {
            "id": ex.id,
            "prompt": ex.prompt,
            "tools": ex.tools,
            "output": reply,
            "expected_content": ex.gold["content"],
            **score_reply(reply, ex.gold["calls"], layout),
        }
        for ex, reply in zip(examples, replies, strict=True)
    ]
    return summarise(records), records
