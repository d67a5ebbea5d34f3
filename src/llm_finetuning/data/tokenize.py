"""Render conversations with the chat template and build labels that cover exactly the completions.

The mask is computed on characters, then mapped to tokens through the tokenizer's offsets, so it works with
any chat template: for each assistant turn the template is rendered up to the turn (with the generation
prompt) and through it; the assistant's text and the end-of-sequence token that closes it are the span that
carries loss. A template that does not close assistant turns with EOS gets one inserted, so the model always
learns to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from llm_finetuning.data.formats import Message, RowError
from llm_finetuning.data.render_check import check_rendering, message_fragments
from llm_finetuning.data.templates import template_name

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenized example. `labels` is `IGNORE_INDEX` wherever no loss is computed."""

    input_ids: list[int]
    labels: list[int]
    text: str


TEMPLATE_KEYS = ("role", "content", "tool_calls", "tool_call_id", "name")


def template_messages(messages: list[Message]) -> list[Message]:
    """The messages as chat templates take them: without the keys only llmft reads (`weight`)."""
    return [{key: m[key] for key in TEMPLATE_KEYS if key in m} for m in messages]


def render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    generation_prompt: bool,
    tools: list[dict] | None = None,
) -> str:
    """The chat template's text for `messages` (and the declared `tools`); a template error is a `RowError`."""
    try:
        return tokenizer.apply_chat_template(
            template_messages(messages), tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as exc:  # jinja raises its own errors (e.g. "roles must alternate")
        raise RowError(f"the chat template rejects this conversation: {exc}") from None


def render_checked(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    generation_prompt: bool = False,
    tools: list[dict] | None = None,
) -> str:
    """`render`, refusing a text that lost or merged part of the conversation (data/render_check.py)."""
    text = render(tokenizer, messages, generation_prompt, tools)
    check_rendering(text, messages, tools, template_name(tokenizer))
    return text


def _call_end(through: str, message: Message, start: int) -> int:
    """Where the last call of an assistant turn ends: after the last of its names and argument values."""
    position = start
    for _, value in message_fragments(message):
        at = through.find(value, position) if isinstance(value, str) else -1
        if at >= 0:  # a non-string leaf or an escaped form is skipped: the check has proven it is there
            position = at + len(value)
    return position


def completion_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans (assistant content and calls + closing EOS) that carry loss."""
    eos = tokenizer.eos_token
    if not eos:
        raise RowError("the tokenizer has no EOS token; set one so the model can learn to stop")
    trained = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages]
    full = render_checked(tokenizer, messages, tools=tools)
    spans: list[tuple[int, int]] = []
    inserts: list[int] = []  # where a missing EOS goes, in `full` coordinates
    for turn, message in enumerate(messages):
        if not trained[turn]:  # user, system and tool turns, and assistant turns with weight 0
            continue
        before = render(tokenizer, messages[:turn], True, tools) if turn else ""
        last = turn == len(messages) - 1
        through = full if last else render(tokenizer, messages[: turn + 1], False, tools)
        if not through.startswith(before) or not full.startswith(through):
            raise RowError(
                "the chat template does not render conversations incrementally (a turn changes the text before "
                "it), so the completion cannot be located; use `data.chat_template` to pick another template"
            )
        if message.get("tool_calls"):
            found, end = _call_span(through, message, len(before), eos)
        else:
            found, end = _content_span(through, message["content"], len(before), eos)
        if end < 0:
            end = -end
            inserts.append(end)
        spans.append((found, end))
    for offset, point in enumerate(inserts):
        # Shift everything after the insertion point by the length of the EOS strings inserted so far.
        point += offset * len(eos)
        full = full[:point] + eos + full[point:]
        spans = [(s + len(eos) if s >= point else s, e + len(eos) if e >= point else e) for s, e in spans]
    return full, spans


def _content_span(through: str, content: str, start: int, eos: str) -> tuple[int, int]:
    """The assistant text from `start` on, with the EOS that closes it; a negative end: EOS is missing there."""
    found = through.find(content, start)
    if found < 0:
        content = content.strip()
        found = through.find(content, start)
    if found < 0:
        raise RowError("the chat template changes the assistant's text, so the completion cannot be located")
    end = found + len(content)
    closing = through.find(eos, end)
    if closing >= 0 and not through[end:closing].strip():
        return found, closing + len(eos)
    return found, -end


def _call_span(through: str, message: Message, start: int, eos: str) -> tuple[int, int]:
    """A calling turn: its text (if any) and all of its calls, markup included, through the closing EOS."""
    if message["content"].strip():
        found = through.find(message["content"].strip(), start)
    else:  # the call's own opening markup (`<tool_call>`, `[TOOL_CALLS]`) is part of what the model must say
        found = start + len(through[start:]) - len(through[start:].lstrip())
    end = _call_end(through, message, max(found, start))
    closing = through.find(eos, end)
    if closing >= 0:
        return found, closing + len(eos)
    return found, -len(through.rstrip())


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets, without special tokens (chat templates add BOS where it belongs)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "split_special_tokens", False):
        # The Rust tokenizer directly: the same ids as `tokenizer(...)`, without the per-call Python overhead
        # that costs a third of the time on short examples.
        encoding = backend.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoding["input_ids"], encoding["offset_mapping"]


def encode(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    train_on_prompt: bool = False,
    tools: list[dict] | None = None,
) -> Encoded:
    """Tokenize a conversation; labels are the token ids inside completion spans and `IGNORE_INDEX` elsewhere."""
    text, spans = completion_spans(tokenizer, messages, tools)
    ids, offsets = _tokenize(tokenizer, text)
    if train_on_prompt:
        return Encoded(ids, list(ids), text)
    labels = [IGNORE_INDEX] * len(ids)
    span_index = 0
    for position, (start, end) in enumerate(offsets):
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        if span_index == len(spans):
            break
        span_start, span_end = spans[span_index]
        if end > span_start and start < span_end:
            labels[position] = ids[position]
    return Encoded(ids, labels, text)
