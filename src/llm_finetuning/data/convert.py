"""Detect a file's format, and write canonical records back out in any format of the same kind."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

from llm_finetuning.data.formats import FORMAT_KIND, Message, Record, RowError
from llm_finetuning.data.tool_calls import arguments_json
from llm_finetuning.errors import DataError

# Keys that identify a format, most specific first.
SIGNATURES: list[tuple[str, set[str]]] = [
    ("preference", {"chosen", "rejected"}),
    ("unpaired", {"label"}),
    ("sharegpt", {"conversations"}),
    ("messages", {"messages"}),
    ("alpaca", {"instruction", "output"}),
    ("prompt_completion", {"prompt", "completion"}),
    ("prompt_only", {"prompt"}),
    ("text", {"text"}),
]


def detect_format(row: dict[str, Any]) -> str | None:
    """The format whose identifying keys the row has, or None."""
    keys = set(row)
    for name, needed in SIGNATURES:
        if needed <= keys:
            return name
    return None


def _openai_message(message: Message) -> dict[str, Any]:
    """A message in OpenAI's shape: call arguments as JSON strings, a calling turn without text has null content."""
    out = {k: v for k, v in message.items() if k in ("role", "content", "weight", "tool_call_id", "name")}
    if message.get("tool_calls"):
        out["content"] = message["content"] or None
        out["tool_calls"] = [
            {**call, "function": {**call["function"], "arguments": arguments_json(call)}}
            for call in message["tool_calls"]
        ]
    return out


def _sharegpt_turns(message: Message) -> list[dict[str, str]]:
    speakers = {"system": "system", "user": "human", "assistant": "gpt", "tool": "observation"}
    turns = (
        [{"from": speakers[message["role"]], "value": message["content"]}]
        if message["content"] or not message.get("tool_calls")
        else []
    )
    calls = [
        {"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or ()
    ]
    if calls:
        turns.append(
            {"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)}
        )
    return turns


def _plain_tools(tools: list[dict[str, Any]]) -> str:
    """ShareGPT function-calling files hold the bare function definitions as JSON text."""
    return json.dumps([tool["function"] for tool in tools], ensure_ascii=False)


def _refuse_tools(record: Record, target: str) -> None:
    if record.get("tools") or any(m.get("tool_calls") or m["role"] == "tool" for m in record["messages"]):
        raise RowError(f"format `{target}` has no place for tools or tool turns; convert to `messages` or `sharegpt`")


def _single_turn(messages: list[Message], target: str) -> tuple[str | None, str, str]:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    rest = messages[1:] if system is not None else messages
    if len(rest) != 2 or rest[0]["role"] != "user" or rest[1]["role"] != "assistant":
        raise RowError(f"format `{target}` holds one user turn and one answer; this conversation has {len(rest)} turns")
    return system, rest[0]["content"], rest[1]["content"]


def from_record(record: Record, target: str) -> dict[str, Any]:
    """A row of format `target` holding the record (of a kind `target` can represent)."""
    if "messages" in record:
        messages = record["messages"]
        tools = {"tools": record["tools"]} if record.get("tools") else {}
        if target == "messages":
            return {"messages": [_openai_message(m) for m in messages], **tools}
        if target == "sharegpt":
            row = {"conversations": [turn for m in messages for turn in _sharegpt_turns(m)]}
            return {**row, "tools": _plain_tools(tools["tools"])} if tools else row
        _refuse_tools(record, target)
        if target == "prompt_completion":
            system, prompt, answer = _single_turn(messages, target)
            prompt_messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
            return {"prompt": prompt if system is None else prompt_messages, "completion": answer}
        if target == "alpaca":
            system = messages[0]["content"] if messages[0]["role"] == "system" else None
            turns = messages[1:] if system is not None else messages
            pairs = [(turns[i], turns[i + 1]) for i in range(0, len(turns) - 1, 2)]
            if len(turns) % 2 or any(u["role"] != "user" or a["role"] != "assistant" for u, a in pairs):
                raise RowError("format `alpaca` needs alternating user/assistant turns")
            row: dict[str, Any] = {
                "instruction": pairs[-1][0]["content"],
                "input": "",
                "output": pairs[-1][1]["content"],
            }
            if len(pairs) > 1:
                row["history"] = [[u["content"], a["content"]] for u, a in pairs[:-1]]
            if system:
                row["system"] = system
            return row
    elif target in ("preference", "unpaired", "prompt_only", "text"):
        return {
            k: ([_openai_message(m) for m in v] if isinstance(v, list) and v and isinstance(v[0], dict) else v)
            for k, v in record.items()
        }
    raise RowError(f"a {_kind(record)} record cannot be written as format `{target}`")


def _kind(record: Record) -> str:
    for kind, keys in (
        ("messages", {"messages"}),
        ("preference", {"chosen"}),
        ("unpaired", {"label"}),
        ("text", {"text"}),
    ):
        if keys <= set(record):
            return kind
    return "prompt_only"


def check_convertible(source: str, target: str) -> None:
    if FORMAT_KIND[source] != FORMAT_KIND[target]:
        raise DataError(
            f"cannot convert `{source}` ({FORMAT_KIND[source]} records) to `{target}` ({FORMAT_KIND[target]} records); "
            "conversion keeps the kind of data"
        )


def write_rows(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows as `.jsonl`, `.json`, `.csv` or `.parquet` (by suffix; `.gz` compresses)."""
    suffixes = [s.lower() for s in path.suffixes]
    compressed = suffixes[-1:] == [".gz"]
    kind = suffixes[-2] if compressed and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return
    opener = (
        (lambda: gzip.open(path, "wt", encoding="utf-8"))
        if compressed
        else (lambda: path.open("w", encoding="utf-8", newline=""))
    )
    with opener() as handle:
        if kind == ".jsonl":
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        elif kind == ".json":
            json.dump(rows, handle, ensure_ascii=False, indent=1)
        elif kind == ".csv":
            if any(isinstance(v, list | dict) for row in rows for v in row.values()):
                raise DataError(f"{path}: csv cannot hold nested values (conversations); write .jsonl instead")
            fields = list(dict.fromkeys(k for row in rows for k in row))
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        else:
            raise DataError(f"{path}: unknown output type; use .jsonl, .json, .csv or .parquet (+ .gz)")
