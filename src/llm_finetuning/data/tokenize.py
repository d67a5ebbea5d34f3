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

IGNORE_INDEX = -100


@dataclass
class Encoded:
    """One tokenized example. `labels` is `IGNORE_INDEX` wherever no loss is computed."""

    input_ids: list[int]
    labels: list[int]
    text: str


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja raises its own errors (e.g. "roles must alternate")
        raise RowError(f"the chat template rejects this conversation: {exc}") from None


def completion_spans(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans (assistant content + closing EOS) that carry loss."""
    eos = tokenizer.eos_token
    if not eos:
        raise RowError("the tokenizer has no EOS token; set one so the model can learn to stop")
    trained = [m["role"] == "assistant" and m.get("weight", 1) == 1 for m in messages]
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]  # templates see plain messages
    full = _render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    inserts: list[int] = []  # where a missing EOS goes, in `full` coordinates
    for turn, message in enumerate(messages):
        if not trained[turn]:  # user, system and tool turns, and assistant turns with weight 0
            continue
        before = _render(tokenizer, messages[:turn], generation_prompt=True) if turn else ""
        last = turn == len(messages) - 1
        through = full if last else _render(tokenizer, messages[: turn + 1], generation_prompt=False)
        if not through.startswith(before) or not full.startswith(through):
            raise RowError(
                "the chat template does not render conversations incrementally (a turn changes the text before "
                "it), so the completion cannot be located; use `data.chat_template` to pick another template"
            )
        content = message["content"]
        found = through.find(content, len(before))
        if found < 0:
            content = content.strip()
            found = through.find(content, len(before))
        if found < 0:
            raise RowError("the chat template changes the assistant's text, so the completion cannot be located")
        end = found + len(content)
        closing = through.find(eos, end)
        if closing >= 0 and not through[end:closing].strip():
            end = closing + len(eos)
        else:
            inserts.append(end)
        spans.append((found, end))
    for offset, point in enumerate(inserts):
        # Shift everything after the insertion point by the length of the EOS strings inserted so far.
        point += offset * len(eos)
        full = full[:point] + eos + full[point:]
        spans = [(s + len(eos) if s >= point else s, e + len(eos) if e >= point else e) for s, e in spans]
    return full, spans


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


def encode(tokenizer: PreTrainedTokenizerBase, messages: list[Message], train_on_prompt: bool = False) -> Encoded:
    """Tokenize a conversation; labels are the token ids inside completion spans and `IGNORE_INDEX` elsewhere."""
    text, spans = completion_spans(tokenizer, messages)
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
