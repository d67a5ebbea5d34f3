"""Read rows from local files and hub datasets, keeping where each row came from for error messages.

A row that cannot be read (bad JSON, undecodable bytes, not an object) is yielded as a `DataError` naming its
file and line, so the caller can stop or skip-and-count; a file that cannot be read at all raises.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from llm_finetuning.config.schema import DataSource
from llm_finetuning.errors import DataError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Row:
    """One record and its position: `where` reads like `data.jsonl:12` (a line) or `data.json:row 12`."""

    data: dict[str, Any]
    where: str


def read_source(source: DataSource) -> Iterator[Row | DataError]:
    if source.hub is not None:
        yield from read_hub(source)
    else:
        yield from read_rows(source.path, source.max_samples)


def read_rows(path: str | Path, max_rows: int | None = None) -> Iterator[Row | DataError]:
    """Yield each row of a local `.jsonl`, `.json`, `.csv` or `.parquet` file (optionally `.gz`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Data file not found: {path}. Check `data.*.path` (relative to the YAML file).")
    kind = _kind(path)
    if kind == ".parquet":
        rows = _read_parquet(path)
    else:
        data = _read_bytes(path)
        if not data.strip():
            raise DataError(f"{path}: the file is empty")
        reader = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[kind]
        rows = reader(path, data)
    for count, row in enumerate(rows):
        if max_rows is not None and count >= max_rows:
            return
        yield row


def data_suffix(path: Path) -> str:
    """The data type of a file name, lowercase, a `.gz` ending set aside: `a.JSONL.gz` -> `.jsonl`."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def data_files(folder: Path) -> list[Path]:
    """The data files under `folder` (any depth, hidden ones left out), sorted: a folder of shards' row order."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not path.name.startswith(".") and data_suffix(path) in SUFFIXES
    )


def _kind(path: Path) -> str:
    kind = data_suffix(path)
    if kind not in SUFFIXES:
        raise DataError(f"{path}: unknown file type `{kind or path.name}`; use one of {', '.join(SUFFIXES)} (+ .gz)")
    return kind


def _open_bytes(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else path.open("rb")


def iter_rows(path: str | Path) -> Iterator[Row | DataError]:
    """`read_rows` a row at a time: JSONL (optionally .gz) line by line and Parquet a record batch at a time, so
    that a file of any size takes the memory of one row (JSON and CSV files are still read whole)."""
    path = Path(path)
    kind = _kind(path)
    if kind == ".parquet":
        yield from _iter_parquet(path)
    elif kind == ".jsonl":
        if not path.is_file():
            raise DataError(f"Data file not found: {path}")
        with _gzip_errors(path), _open_bytes(path) as raw:
            yield from _read_jsonl(path, raw)
    else:
        yield from read_rows(path)


@contextmanager
def _gzip_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except EOFError:
        raise DataError(
            f"{path}: the compressed file is truncated (it ends before gzip's end-of-stream marker); copy or "
            "download it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"{path}: the file is not valid gzip data ({exc}); it is corrupt or not gzip") from None


def _iter_parquet(path: Path) -> Iterator[Row | DataError]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    index = 0
    for batch in handle.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            index += 1
            yield Row(row, f"{path}:row {index}")


def _read_bytes(path: Path) -> bytes:
    """The whole (decompressed) file. A truncated or corrupt `.gz` is a `DataError` naming the file: left alone,
    gzip's EOFError reaches the command line, where click turns it into a bare "Aborted"."""
    with _gzip_errors(path), _open_bytes(path) as raw:
        return raw.read()


def _decode_lines(path: Path, data: bytes | Iterable[bytes]) -> Iterator[tuple[int, str | DataError]]:
    lines = data.split(b"\n") if isinstance(data, bytes) else data
    for line_no, raw in enumerate(lines, start=1):
        try:
            yield line_no, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, DataError(f"{path}:{line_no}: not valid UTF-8 (byte {exc.start + 1} of the line)")


def _read_jsonl(path: Path, data: bytes | Iterable[bytes]) -> Iterator[Row | DataError]:
    for line_no, line in _decode_lines(path, data):
        if isinstance(line, DataError):
            yield line
            continue
        if not line.strip():
            continue
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


def _read_json(path: Path, data: bytes) -> Iterator[Row | DataError]:
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name: read it as JSONL
            yield from _read_jsonl(path, data)
            return
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); expected a list of objects") from None
    if isinstance(value, dict):
        if value and all(isinstance(row, dict) for row in value.values()):
            # Some collections key records by id ({"12345": {...}}); keep the key as a field.
            value = [{"id": key, **row} for key, row in value.items()]
        else:
            value = [value]  # a single record
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of objects at the top level")
    for index, item in enumerate(value, start=1):
        where = f"{path}:row {index}"
        if not isinstance(item, dict):
            yield DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
            continue
        yield Row(item, where)


def _read_csv(path: Path, data: bytes) -> Iterator[Row | DataError]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise DataError(f"{path}: no header row")
    start = reader.line_num + 1
    for row in reader:
        where = f"{path}:{start}"
        start = reader.line_num + 1
        if None in row:  # more cells than header columns
            yield DataError(
                f"{where}: {len(row[None]) + len(reader.fieldnames)} cells for {len(reader.fieldnames)} columns"
            )
            continue
        yield Row(dict(row), where)


def _read_parquet(path: Path) -> Iterator[Row | DataError]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    for index, row in enumerate(table.to_pylist(), start=1):
        yield Row(row, f"{path}:row {index}")


def read_hub(source: DataSource) -> Iterator[Row | DataError]:
    """Rows of a hub dataset (or a local directory in hub layout) through `datasets.load_dataset`."""
    from datasets import load_dataset

    split = source.hub_split if source.max_samples is None else f"{source.hub_split}[:{source.max_samples}]"
    try:
        dataset = load_dataset(source.hub, source.subset, split=split, revision=source.revision)
    except Exception as exc:  # datasets raises many types (missing, offline, bad config)
        raise DataError(
            f"Could not load hub dataset `{source.label}` (data.*.hub/subset/split): {exc}\n"
            "Check the id, subset and split, or give a local directory in hub layout."
        ) from None
    for index, row in enumerate(dataset, start=1):
        yield Row(dict(row), f"{source.label}:row {index}")


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes, so a run records exactly which data it saw."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(source: DataSource) -> str:
    """The file's sha256, or for a hub dataset its datasets fingerprint (content + processing)."""
    if source.path is not None:
        return file_fingerprint(source.path)
    if source.dataset is not None:
        from llm_finetuning.data.datasets import registry

        named = registry()[source.dataset]
        split = named.splits.get(source.split or "train", source.split or "train")
        subset = source.subset or named.subset
        source = source.model_copy(update={"hub": named.hub_id, "subset": subset, "split": split})
    from datasets import load_dataset

    dataset = load_dataset(source.hub, source.subset, split=source.hub_split, revision=source.revision)
    return str(dataset._fingerprint)
