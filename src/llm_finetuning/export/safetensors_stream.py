"""Read and write safetensors files one tensor at a time, so a merge holds only the tensors it is working on.

The safetensors library maps whole files into memory (their pages then count towards the process's resident
memory and address space) and writes a file only from a dict of all its tensors. Here a tensor is read with a
plain file read of its byte range, and a file is written from its header, known before any tensor is computed,
followed by each tensor's bytes as it is produced. The files are ordinary safetensors files.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_finetuning.errors import UserError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
# A header larger than this is not a safetensors file (the format itself caps it at 100 MB).
MAX_HEADER = 100_000_000


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are in a safetensors file, and what they hold."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, in file order, without reading their data."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UserError(f"{path}: too short to be a safetensors file; re-save the model")
        (size,) = struct.unpack("<Q", prefix)
        if size > MAX_HEADER:
            raise UserError(f"{path}: not a safetensors file (header of {size} bytes); re-save the model")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: not a safetensors file (unreadable header); re-save the model") from None
    data_start = 8 + size
    tensors: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise UserError(f"{path}: tensor `{name}` has dtype {entry['dtype']}, which llmft cannot merge")
        start, end = entry["data_offsets"]
        tensors[name] = TensorInfo(path, dtype, tuple(entry["shape"]), data_start + start, data_start + end)
    return dict(sorted(tensors.items(), key=lambda item: item[1].start))


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Load one tensor into fresh memory with an ordinary read (no memory map)."""
    buffer = torch.empty(info.end - info.start, dtype=torch.uint8)
    view = memoryview(buffer.numpy())
    with info.file.open("rb", buffering=0) as handle:
        handle.seek(info.start)
        done = 0
        while done < len(view):
            count = handle.readinto(view[done:])
            if not count:
                raise UserError(f"{info.file} is truncated; re-download or re-save the model")
            done += count
    return buffer.view(info.dtype).reshape(info.shape)


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


@dataclass(frozen=True)
class Planned:
    """A tensor to be written: its name, shape and dtype, known before it is computed."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype


def split_shards(tensors: list[Planned], max_bytes: int) -> list[list[Planned]]:
    """Consecutive groups of at most `max_bytes` each (a larger tensor gets a file of its own)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for tensor in tensors:
        length = nbytes(tensor.shape, tensor.dtype)
        if shards[-1] and size + length > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += length
    return shards


def shard_names(count: int) -> list[str]:
    """transformers' file names: `model.safetensors`, or `model-00001-of-00003.safetensors` and so on."""
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


class StreamingFile:
    """A safetensors file whose tensors are written in the planned order, one call each."""

    def __init__(self, path: Path, tensors: list[Planned]) -> None:
        self.path = path
        self._planned = tensors
        self._written = 0
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor in tensors:
            length = nbytes(tensor.shape, tensor.dtype)
            header[tensor.name] = {
                "dtype": NAMES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + length],
            }
            offset += length
        encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
        encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as the library writes it
        self._partial = path.with_name(path.name + ".partial")
        self._handle = self._partial.open("wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self._planned[self._written] if self._written < len(self._planned) else None
        if expected is None or expected.name != name:
            raise ValueError(f"{self.path}: `{name}` written out of the planned order")
        if tuple(tensor.shape) != expected.shape or tensor.dtype != expected.dtype:
            raise ValueError(
                f"{self.path}: `{name}` is {tuple(tensor.shape)} {tensor.dtype}, planned as "
                f"{expected.shape} {expected.dtype}"
            )
        flat = tensor.detach().contiguous().reshape(-1)
        if flat.numel():
            self._handle.write(memoryview(flat.view(torch.uint8).numpy()))
        self._written += 1

    def close(self) -> None:
        """Finish the file; it appears under its name only once complete."""
        if self._written < len(self._planned):
            raise ValueError(f"{self.path}: closed before every planned tensor was written")
        self._handle.close()
        os.replace(self._partial, self.path)

    def abort(self) -> None:
        self._handle.close()
        self._partial.unlink(missing_ok=True)


def write_index(directory: Path, shards: list[list[Planned]], names: list[str]) -> None:
    """`model.safetensors.index.json` for a sharded model (nothing for a single file)."""
    if len(shards) == 1:
        return
    weight_map = {tensor.name: name for shard, name in zip(shards, names, strict=True) for tensor in shard}
    total = sum(nbytes(t.shape, t.dtype) for shard in shards for t in shard)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


__all__ = ["Planned", "StreamingFile", "TensorInfo", "read_header", "read_tensor", "split_shards", "write_index"]
