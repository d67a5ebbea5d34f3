"""Tool calling on `/v1/chat/completions`: the tools go into the prompt through the run's chat template, and the
calls come back out of the reply in the layout that template writes (data/tool_parsers.py).

A request's tools are refused (400) rather than ignored where the served model cannot take them: its template
writes no call layout this server can read back, or does not render the tools or the tool turns given. A reply
that starts a call that does not parse is served as plain text, never as an error. Streamed replies send their
text as it comes until it may be the start of a call; from there the rest is held back and sent at the end, as
OpenAI tool call chunks if it parsed, else as text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from llm_finetuning.data.render_check import check_rendering
from llm_finetuning.data.templates import TOOL_TEMPLATES, template_name
from llm_finetuning.data.tool_calls import Call, arguments_json
from llm_finetuning.data.tool_parsers import ToolCallFormat, format_for_template
from llm_finetuning.errors import RowError
from llm_finetuning.serve.protocol import ApiError, ChatRequest, bad

logger = logging.getLogger(__name__)

_FIX = (
    f"serve a run trained with a tool template (data.chat_template: {', '.join(TOOL_TEMPLATES)}), "
    "or send the request without `tools`"
)


@dataclass(frozen=True)
class ToolPlan:
    """How one request's replies are read: `fmt` None means plain text (no tools, or `tool_choice: none`)."""

    fmt: ToolCallFormat | None = None
    prefill: str = ""
    """Text the reply is made to start with (`tool_choice` `required` or a named function); part of the prompt."""
    parallel: bool = True
    drop_ids: frozenset[int] | None = None
    """The special tokens decoding drops; the call opener's own are kept (see `Ticket.drop_ids`)."""


def no_tool_support(model: str, tokenizer: PreTrainedTokenizerBase, why: str) -> ApiError:
    return bad(f"`{model}` cannot take tools: {template_name(tokenizer)} has no tool support ({why}); {_FIX}", "tools")


def plan_tools(request: ChatRequest, tokenizer: PreTrainedTokenizerBase, model: str) -> ToolPlan:
    """The plan for `request` on `model`; 400 when it asks for calls the model's template cannot write."""
    choice = request.tool_choice
    if not request.tools or choice.mode == "none":
        return ToolPlan()
    fmt = format_for_template(tokenizer.chat_template)
    if fmt is None:
        raise no_tool_support(model, tokenizer, "it writes no tool call layout this server can read back")
    prefill = "" if choice.mode == "auto" else fmt.prefill(choice.name)
    return ToolPlan(fmt, prefill, request.parallel_tool_calls, _drop_ids(tokenizer, fmt))


def _drop_ids(tokenizer: PreTrainedTokenizerBase, fmt: ToolCallFormat) -> frozenset[int]:
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    special |= set(tokenizer.all_special_ids)
    kept = {index for index, token in tokenizer.added_tokens_decoder.items() if str(token) in fmt.opener}
    return frozenset(special - kept)


def check_prompt(text: str, request: ChatRequest, tokenizer: PreTrainedTokenizerBase, model: str) -> None:
    """400 unless the rendered prompt holds every declared tool, call and tool answer: a template without tool
    support drops them silently, and the model would answer a conversation the client never sent."""
    if not request.uses_tools:
        return
    try:
        check_rendering(text, request.messages, request.tools, template_name(tokenizer))
    except RowError as exc:
        raise no_tool_support(model, tokenizer, str(exc)) from None


def openai_call(call: Call, index: int | None = None) -> dict[str, Any]:
    """A canonical call in the OpenAI response shape: arguments as a JSON string (and `index` in a stream)."""
    function = {"name": call["function"]["name"], "arguments": arguments_json(call)}
    shaped = {"id": call["id"], "type": "function", "function": function}
    return shaped if index is None else {"index": index, **shaped}


def _calls(plan: ToolPlan, text: str) -> tuple[str, list[Call]]:
    """(content before the calls, calls) of a whole reply; no calls when it makes none or they do not parse."""
    if plan.fmt is None:
        return text, []
    parsed = plan.fmt.parse(text)
    if parsed.malformed:
        logger.info("a reply opened a %s tool call that does not parse; it is served as text", plan.fmt.name)
    if not parsed.calls:
        return text, []
    return parsed.content, parsed.calls if plan.parallel else parsed.calls[:1]


def reply_message(plan: ToolPlan, generated: str, finish: str | None) -> tuple[dict[str, Any], str | None]:
    """The chat `message` of a finished reply and its finish reason (`tool_calls` when it calls)."""
    content, calls = _calls(plan, plan.prefill + generated)
    if not calls:
        return {"role": "assistant", "content": content}, finish
    message = {"role": "assistant", "content": content or None, "tool_calls": [openai_call(c) for c in calls]}
    return message, "tool_calls"


@dataclass
class ReplyStream:
    """One streamed choice: the deltas to send for each piece of text, and at the end.

    Text goes out as it comes while it cannot be the start of a call; from the first call opener (or a tail that
    may grow into one, or whitespace that may precede one) it is held. At the end the whole reply is parsed: calls
    go out as `tool_calls` deltas, otherwise the held text goes out as content."""

    plan: ToolPlan
    text: str = field(init=False)
    """The reply so far, from the prefill on."""
    sent: int = field(init=False, default=0)
    """How much of `text` went out as content."""

    def __post_init__(self) -> None:
        self.text = self.plan.prefill

    def feed(self, piece: str) -> list[dict[str, Any]]:
        self.text += piece
        end = self._sendable()
        if end <= self.sent:
            return []
        content, self.sent = self.text[self.sent : end], end
        return [{"content": content}]

    def end(self, finish: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """The last deltas and the finish reason."""
        content, calls = _calls(self.plan, self.text)
        if not calls:
            rest = self.text[self.sent :]
            return ([{"content": rest}] if rest else []), finish
        deltas: list[dict[str, Any]] = []
        start = self.plan.fmt.find(self.text) if self.plan.fmt is not None else -1
        rest = self.text[self.sent : max(start, self.sent)]
        rest = rest.strip() if self.sent == 0 else rest.rstrip()  # as `content` is without a stream
        if rest:
            deltas.append({"content": rest})
        deltas += [{"tool_calls": [openai_call(call, index)]} for index, call in enumerate(calls)]
        return deltas, "tool_calls"

    def _sendable(self) -> int:
        """How much of the text may be sent as content now."""
        fmt, text = self.plan.fmt, self.text
        if fmt is None:
            return len(text)
        if self.plan.prefill:  # the reply is a call from its first character
            return 0
        start = fmt.find(text)
        end = start if start >= 0 else _open_tail(text, fmt.opener)
        return len(text[:end].rstrip())


def _open_tail(text: str, opener: str) -> int:
    """Where a tail of `text` starts that may still grow into `opener` (whitespace inside ignored, as a JSON
    opener may be spaced out), else len(text)."""
    window = max(0, len(text) - 4 * len(opener))
    at = text.find(opener[0], window)
    while at >= 0:
        compact = "".join(text[at:].split())
        if opener.startswith(compact):
            return at
        at = text.find(opener[0], at + 1)
    return len(text)
