"""Map a raw row of each supported format onto one of the canonical records (TRL's standard shapes).

Record kinds and their fields (messages are `{"role", "content"}` dicts; roles system/user/assistant/tool):
- `messages`:    {"messages": [...], "tools"?: [...]}: a conversation to learn the assistant turns of (SFT).
                 Formats: messages (OpenAI), alpaca, sharegpt, prompt_completion. Assistant turns may carry
                 `tool_calls` and tool turns `tool_call_id`; `tools` are the functions declared to the model
                 (data/tool_calls.py has the shapes).
- `preference`:  {"prompt": [...], "chosen": [...], "rejected": [...]}: chosen/rejected are the assistant
                 turn(s) after the shared prompt (DPO, ORPO, reward models).
- `unpaired`:    {"prompt": [...], "completion": [...], "label": bool}: one judged completion (KTO).
- `prompt_only`: {"prompt": [...], **extra columns}: prompts to generate from (GRPO, PPO); the extra columns
                 (e.g. a reference answer) are kept for the rewards.
- `text`:        {"text": str}: raw documents (continual pretraining).
- `retrieval`:   {"query": str, "positive": str, "negatives": [str]}: a query, a relevant text and any number of
                 hard negatives (embedding and reranker training). Format `retrieval` (pairs, triplets, n-tuples).
- `scored_pair`: {"text1": str, "text2": str, "score": float}: two texts and their similarity or relevance
                 (contrastive and CoSENT embedding losses; binary reranker labels).
- `labeled_text`: {"text": str, "text_pair": str | None, "label": str | [str] | float}: a text (or a pair) and
                 its class, classes (multi-label) or value (classification, regression heads).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from llm_finetuning.data.tool_calls import check_declared, link_tool_answers, normalize_calls, normalize_tools
from llm_finetuning.errors import RowError

Message = dict[str, Any]
Record = dict[str, Any]
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names -> roles. `function_call` is the assistant calling a tool (trained like any assistant
# turn), `observation` is the tool's answer (context, not trained).
SPEAKERS = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
    "function": "tool",
}
FORMAT_KIND = {
    "messages": "messages",
    "alpaca": "messages",
    "sharegpt": "messages",
    "prompt_completion": "messages",
    "preference": "preference",
    "unpaired": "unpaired",
    "prompt_only": "prompt_only",
    "text": "text",
    "retrieval": "retrieval",
    "scored_pair": "scored_pair",
    "labeled_text": "labeled_text",
}


def _column(columns: dict[str, str], name: str) -> str:
    return columns.get(name, name)


def _field(row: dict[str, Any], columns: dict[str, str], name: str, required: bool = True) -> Any:
    column = _column(columns, name)
    if column not in row or row[column] is None:
        if required:
            mapped = f" (mapped from `{name}`)" if column != name else ""
            present = ", ".join(sorted(map(str, row))[:12])
            raise RowError(
                f"field `{column}`{mapped} is missing (the row has: {present}); "
                f"set `columns: {{{name}: <your column>}}`"
            )
        return None
    return row[column]


def _text(row: dict[str, Any], columns: dict[str, str], name: str, required: bool = True) -> str | None:
    value = _field(row, columns, name, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RowError(f"field `{_column(columns, name)}` must be a string, got {type(value).__name__}")
    return value


def parse_message(value: Any, where: str, tools: bool = False) -> Message:
    """One message given as {role, content} (OpenAI) or {from, value} (ShareGPT).

    With `tools`, assistant calls (`tool_calls`, legacy `function_call`, ShareGPT `function_call` turns) become
    `tool_calls` and a tool's answer keeps `tool_call_id`/`name`; without, a call is refused (the record kind
    has no place for it)."""
    if not isinstance(value, dict):
        raise RowError(f"field `{where}` must be an object with `role` and `content` (or `from` and `value`)")
    speaker = None
    if "role" in value:
        role, content, origin = value["role"], value.get("content"), "role"
        role = {"function": "tool", "developer": "system"}.get(role, role)  # legacy OpenAI names
    elif "from" in value:
        origin, speaker = "from", str(value["from"]).lower()
        role = SPEAKERS.get(speaker)
        if role is None:
            raise RowError(f"field `{where}.from` is `{value['from']}`; expected one of {', '.join(SPEAKERS)}")
        content = value.get("value")
    else:
        raise RowError(f"field `{where}` must be an object with `role` and `content` (or `from` and `value`)")
    if role not in ROLES:
        raise RowError(f"field `{where}.{origin}` is `{role}`; expected one of {', '.join(ROLES)}")
    calls = _calls(value, where, speaker, content)
    if calls:
        if not tools:
            raise RowError(
                f"field `{where}` is a tool call; calls train with the conversation formats (messages, sharegpt) "
                "and `method: sft`. Drop such rows (data.on_error: skip) or give the call as message text"
            )
        if role != "assistant":
            raise RowError(f"field `{where}` carries tool calls but its role is `{role}`; only assistants call tools")
        content = "" if speaker == "function_call" or content is None else content
    if not isinstance(content, str):
        raise RowError(f"field `{where}` content must be a string, got {type(content).__name__}")
    message: Message = {"role": role, "content": content}
    if calls:
        message["tool_calls"] = calls
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(value.get(key), str) and value[key]:
                message[key] = value[key]
    if "weight" in value:  # OpenAI fine-tuning: weight 0 keeps an assistant turn out of the loss
        if value["weight"] not in (0, 1):
            raise RowError(f"field `{where}.weight` must be 0 or 1, got {value['weight']!r}")
        message["weight"] = int(value["weight"])
    return message


def _calls(value: dict[str, Any], where: str, speaker: str | None, content: Any) -> list[dict[str, Any]]:
    seed = (where, json.dumps(value, sort_keys=True, default=str))
    if speaker == "function_call":
        return normalize_calls(content, f"{where}.value", seed)
    if value.get("tool_calls"):
        return normalize_calls(value["tool_calls"], f"{where}.tool_calls", seed)
    if value.get("function_call"):
        return normalize_calls(value["function_call"], f"{where}.function_call", seed)
    return []


def as_messages(value: Any, where: str, default_role: str) -> list[Message]:
    """A string (one message of `default_role`), a message object, or a list of messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        return [parse_message(value, where)]
    if isinstance(value, list) and value:
        return [parse_message(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise RowError(f"field `{where}` must be text, a message, or a non-empty list of messages")


# ------------------------------------------------------------------------------------------ messages
def from_messages(row: dict[str, Any], columns: dict[str, str], tools: bool = True) -> Record:
    field = _column(columns, "messages")
    value = _field(row, columns, "messages")
    if not isinstance(value, list) or not value:
        raise RowError(f"field `{field}` must be a non-empty list of {{role, content}} objects")
    messages = [parse_message(m, f"{field}[{i}]", tools) for i, m in enumerate(value)]
    return _with_tools({"messages": messages}, row, columns) if tools else {"messages": messages}


def from_sharegpt(row: dict[str, Any], columns: dict[str, str]) -> Record:
    field = _column(columns, "conversations")
    value = _field(row, columns, "conversations")
    if not isinstance(value, list) or not value:
        raise RowError(f"field `{field}` must be a non-empty list of {{from, value}} objects")
    messages: list[Message] = []
    for index, item in enumerate(value):
        message = parse_message(item, f"{field}[{index}]", tools=True)
        previous = messages[-1] if messages else None
        if message.get("tool_calls") and previous and previous["role"] == "assistant" and "tool_calls" not in previous:
            previous["tool_calls"] = message["tool_calls"]  # `gpt` text then its `function_call`: one turn
            continue
        messages.append(message)
    system = _text(row, columns, "system", required=False)
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return _with_tools({"messages": messages}, row, columns)


def _with_tools(record: Record, row: dict[str, Any], columns: dict[str, str]) -> Record:
    """Add the row's declared tools (`tools`, or legacy `functions`) and link tool answers to their calls."""
    absent = _column(columns, "tools") not in row
    name = "functions" if absent and _column(columns, "functions") in row else "tools"
    value = _field(row, columns, name, required=False)
    tools = normalize_tools(value, _column(columns, name)) if value is not None else []
    link_tool_answers(record["messages"])
    check_declared(record["messages"], tools, _column(columns, name))
    if tools:
        record["tools"] = tools
    return record


def from_alpaca(row: dict[str, Any], columns: dict[str, str]) -> Record:
    instruction = _text(row, columns, "instruction")
    extra = _text(row, columns, "input", required=False)
    output = _text(row, columns, "output")
    system = _text(row, columns, "system", required=False)
    history = _field(row, columns, "history", required=False) or []
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    if not isinstance(history, list):
        raise RowError(f"field `{_column(columns, 'history')}` must be a list of [instruction, response] pairs")
    for index, pair in enumerate(history):
        if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise RowError(f"field `{_column(columns, 'history')}[{index}]` must be an [instruction, response] pair")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    return {"messages": [*messages, {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]}


def from_prompt_completion(row: dict[str, Any], columns: dict[str, str]) -> Record:
    prompt = as_messages(_field(row, columns, "prompt"), _column(columns, "prompt"), "user")
    completion = as_messages(_field(row, columns, "completion"), _column(columns, "completion"), "assistant")
    return {"messages": prompt + completion}


# ---------------------------------------------------------------------------------------- preference
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_transcript(text: str, where: str) -> list[Message]:
    """An HH-RLHF style transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") as messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowError(f"field `{where}` is not a `\\n\\nHuman: ... \\n\\nAssistant: ...` transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": body} for speaker, body in zip(parts[1::2], parts[2::2], strict=True)]


def _side(value: Any, where: str) -> list[Message]:
    if isinstance(value, str) and HH_TURN.match(value):
        return parse_transcript(value, where)
    return as_messages(value, where, "assistant")


def split_shared_prefix(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], ...]:
    """Implicit prompt: the longest common prefix of two conversations, before their last assistant turn."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def from_preference(row: dict[str, Any], columns: dict[str, str]) -> Record:
    chosen = _side(_field(row, columns, "chosen"), _column(columns, "chosen"))
    rejected = _side(_field(row, columns, "rejected"), _column(columns, "rejected"))
    raw_prompt = _field(row, columns, "prompt", required=False)
    if raw_prompt is None:
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
        if not prompt:
            raise RowError("chosen and rejected share no prompt; give a `prompt` column")
    else:
        prompt = as_messages(raw_prompt, _column(columns, "prompt"), "user")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side or side[-1]["role"] != "assistant":
            raise RowError(f"field `{_column(columns, name)}` must end with an assistant response")
        if not side[-1]["content"].strip():
            raise RowError(f"field `{_column(columns, name)}` has an empty response")
    if chosen == rejected:
        raise RowError("chosen and rejected are identical, so there is no preference to learn")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def as_label(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise RowError(f"field `{where}` must be a boolean (true/false), got {value!r}")


def from_unpaired(row: dict[str, Any], columns: dict[str, str]) -> Record:
    label = as_label(_field(row, columns, "label"), _column(columns, "label"))
    if _column(columns, "prompt") not in row and _column(columns, "messages") in row:
        messages = from_messages(row, columns, tools=False)["messages"]  # LLaMA-Factory: a conversation + a label
        prompt, completion = messages[:-1], messages[-1:]
    else:
        prompt = as_messages(_field(row, columns, "prompt"), _column(columns, "prompt"), "user")
        completion = as_messages(_field(row, columns, "completion"), _column(columns, "completion"), "assistant")
    if not prompt or completion[-1]["role"] != "assistant" or not completion[-1]["content"].strip():
        raise RowError("an unpaired example needs a prompt and a non-empty assistant completion")
    return {"prompt": prompt, "completion": completion, "label": label}


def from_prompt_only(row: dict[str, Any], columns: dict[str, str]) -> Record:
    column = _column(columns, "prompt")
    prompt = as_messages(_field(row, columns, "prompt"), column, "user")
    extra = {key: value for key, value in row.items() if key != column}
    return {**extra, "prompt": prompt}


def from_text(row: dict[str, Any], columns: dict[str, str]) -> Record:
    text = _text(row, columns, "text")
    if not text.strip():
        raise RowError(f"field `{_column(columns, 'text')}` is empty")
    return {"text": text}


def _nonempty(row: dict[str, Any], columns: dict[str, str], name: str, *aliases: str) -> str:
    """A required, non-blank text field; `aliases` are other common names for it (`anchor` for `query`)."""
    if name not in columns and name not in row:
        name = next((alias for alias in aliases if row.get(alias) is not None), name)
    value = _text(row, columns, name)
    if not value.strip():
        raise RowError(f"field `{_column(columns, name)}` is empty")
    return value


def _negatives(row: dict[str, Any], columns: dict[str, str]) -> list[str]:
    """Hard negatives as `negatives` (a list), `negative` (one text or a list) or `negative_1`, `negative_2`..."""
    for name in ("negatives", "negative"):
        value = _field(row, columns, name, required=False)
        if value is not None:
            values = [value] if isinstance(value, str) else value
            break
    else:
        numbered = sorted((k for k in row if re.fullmatch(r"negative_\d+", str(k))), key=lambda k: int(k[9:]))
        values = [row[k] for k in numbered if row[k] is not None]
    if not isinstance(values, list):
        raise RowError(f"field `{_column(columns, name)}` must be a text or a list of texts")
    for index, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise RowError(f"negative {index + 1} is {'empty' if isinstance(value, str) else type(value).__name__}")
    return values


def from_retrieval(row: dict[str, Any], columns: dict[str, str]) -> Record:
    query = _nonempty(row, columns, "query", "anchor", "question")
    positive = _nonempty(row, columns, "positive", "document", "passage")
    negatives = _negatives(row, columns)
    if positive in negatives:
        raise RowError("the positive is also listed as a negative")
    return {"query": query, "positive": positive, "negatives": negatives}


def from_scored_pair(row: dict[str, Any], columns: dict[str, str]) -> Record:
    text1 = _nonempty(row, columns, "text1", "sentence1", "query")
    text2 = _nonempty(row, columns, "text2", "sentence2", "document")
    if "score" not in columns and "score" not in row and "label" in row:
        columns = {**columns, "score": "label"}
    score = _field(row, columns, "score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise RowError(f"field `{_column(columns, 'score')}` must be a number, got {score!r}") from None
    return {"text1": text1, "text2": text2, "score": float(score)}


def from_labeled_text(row: dict[str, Any], columns: dict[str, str]) -> Record:
    text = _nonempty(row, columns, "text", "sentence", "question")
    pair = _field(row, columns, "text_pair", required=False)
    if pair is not None and (not isinstance(pair, str) or not pair.strip()):
        raise RowError(f"field `{_column(columns, 'text_pair')}` must be a non-empty text")
    label = _field(row, columns, "label")
    if isinstance(label, list):
        if not all(isinstance(item, str | int) and not isinstance(item, bool) for item in label):
            raise RowError(f"field `{_column(columns, 'label')}` must be a list of class names")
        label = [str(item) for item in label]
    elif isinstance(label, int | str) and not isinstance(label, bool):
        label = str(label)
        if not label.strip():
            raise RowError(f"field `{_column(columns, 'label')}` is empty")
    elif isinstance(label, float):
        pass  # a regression target
    else:
        raise RowError(f"field `{_column(columns, 'label')}` must be a class name, a list of them or a number")
    return {"text": text, "text_pair": pair, "label": label}


FORMATS: dict[str, Callable[[dict[str, Any], dict[str, str]], Record]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "alpaca": from_alpaca,
    "prompt_completion": from_prompt_completion,
    "preference": from_preference,
    "unpaired": from_unpaired,
    "prompt_only": from_prompt_only,
    "text": from_text,
    "retrieval": from_retrieval,
    "scored_pair": from_scored_pair,
    "labeled_text": from_labeled_text,
}


def to_record(row: dict[str, Any], fmt: str, columns: dict[str, str], system_prompt: str | None = None) -> Record:
    """The canonical record of a row; raises `RowError` naming the offending field."""
    record = FORMATS[fmt](row, columns)
    if FORMAT_KIND[fmt] == "messages":
        _check_conversation(record["messages"])
    return add_system_prompt(record, system_prompt)


def add_system_prompt(record: Record, system_prompt: str | None) -> Record:
    """Put `system_prompt` first in the record's conversation (`messages` or `prompt`) unless it has one."""
    conversation = record.get("messages") or record.get("prompt")
    if system_prompt and isinstance(conversation, list) and conversation[0]["role"] != "system":
        conversation.insert(0, {"role": "system", "content": system_prompt})
    return record


def _check_conversation(messages: list[Message]) -> None:
    trained = [m for m in messages if m["role"] == "assistant" and m.get("weight", 1)]
    if not trained:
        raise RowError("the conversation has no assistant message to learn from")
    if any(not m["content"].strip() and not m.get("tool_calls") for m in trained):
        raise RowError("an assistant message is empty")


def to_messages(
    row: dict[str, Any], fmt: str, columns: dict[str, str], system_prompt: str | None = None
) -> list[Message]:
    """The conversation of a row in a `messages`-kind format (SFT)."""
    if FORMAT_KIND[fmt] != "messages":
        raise RowError(f"format `{fmt}` gives {FORMAT_KIND[fmt]} records, not conversations")
    return to_record(row, fmt, columns, system_prompt)["messages"]


def text_field(row: dict[str, Any], columns: dict[str, str]) -> str:
    """The document of a `text` row."""
    return from_text(row, columns)["text"]
