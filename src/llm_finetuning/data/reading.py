"""Read rows from local JSONL/JSON files, keeping where each row came from for error messages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_finetuning.errors import DataError


@dataclass(frozen=True)
class Row:
    """One record and its position: `where` reads like `data.jsonl:12` (JSONL) or `data.json:row 12` (JSON)."""

    data: dict[str, Any]
    where: str


def read_rows(path: str | Path, max_rows: int | None = None) -> Iterator[Row | DataError]:
    """Yield each row of a `.jsonl` or `.json` file; a row that cannot be parsed is yielded as a `DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Check `data.*.path` (relative to the YAML file).")
    if path.suffix == ".jsonl" or _looks_like_jsonl(path):
        yield from _read_jsonl(path, max_rows)
    else:
        yield from _read_json(path, max_rows)


def _looks_like_jsonl(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(64).lstrip()
    return head.startswith(b"{")


def _read_jsonl(path: Path, max_rows: int | None) -> Iterator[Row | DataError]:
    count = 0
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if max_rows is not None and count >= max_rows:
                return
            count += 1
            where = f"{path}:{line_no}"
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                yield DataError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(value, dict):
                yield DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
                continue
            yield Row(value, where)


def _read_json(path: Path, max_rows: int | None) -> Iterator[Row | DataError]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); expected a list of objects") from None
    if isinstance(value, dict):
        # Some collections key records by id ({"12345": {...}}); keep the key as a field.
        value = [{"id": key, **row} if isinstance(row, dict) else row for key, row in value.items()]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of objects at the top level")
    for index, item in enumerate(value[:max_rows] if max_rows else value, start=1):
        where = f"{path}:row {index}"
        if not isinstance(item, dict):
            yield DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
            continue
        yield Row(item, where)


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, so a run records exactly which data it saw."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
