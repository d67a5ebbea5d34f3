"""Streamed safetensors files are ordinary safetensors files, read and written one tensor at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm_finetuning.errors import UserError
from llm_finetuning.export.safetensors_stream import (
    Planned,
    StreamingFile,
    read_header,
    read_tensor,
    shard_names,
    split_shards,
    write_index,
)

pytestmark = pytest.mark.unit

TENSORS = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).to(torch.bfloat16),
    "f16": torch.randn(2, 2, 2).to(torch.float16),
    "i64": torch.arange(6).reshape(2, 3),
    "flag": torch.tensor([True, False, True]),
    "scalar": torch.tensor(2.5),
    "empty": torch.zeros(0, 4),
}


def test_reads_what_the_library_writes(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_file(TENSORS, str(path))
    header = read_header(path)
    assert set(header) == set(TENSORS)
    for name, tensor in TENSORS.items():
        assert header[name].shape == tuple(tensor.shape) and header[name].dtype == tensor.dtype
        assert torch.equal(read_tensor(header[name]), tensor)


def test_the_library_reads_what_is_streamed(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    planned = [Planned(name, tuple(t.shape), t.dtype) for name, t in TENSORS.items()]
    file = StreamingFile(path, planned)
    assert not path.exists()  # only complete files appear under their name
    for name, tensor in TENSORS.items():
        file.write(name, tensor)
    file.close()
    loaded = load_file(path)
    assert loaded.keys() == TENSORS.keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in TENSORS.items())


def test_order_shape_and_completeness_are_checked(tmp_path: Path) -> None:
    planned = [Planned("a", (2,), torch.float32), Planned("b", (2,), torch.float32)]
    file = StreamingFile(tmp_path / "x.safetensors", planned)
    with pytest.raises(ValueError, match="out of the planned order"):
        file.write("b", torch.zeros(2))
    file.abort()
    file = StreamingFile(tmp_path / "x.safetensors", planned)
    with pytest.raises(ValueError, match="planned as"):
        file.write("a", torch.zeros(3))
    file.write("a", torch.zeros(2))
    with pytest.raises(ValueError, match="before every planned tensor"):
        file.close()
    file.abort()
    assert list(tmp_path.iterdir()) == []


def test_shards_and_index(tmp_path: Path) -> None:
    planned = [Planned(f"t{i}", (10,), torch.float32) for i in range(5)]  # 40 bytes each
    shards = split_shards(planned, 100)
    assert [len(s) for s in shards] == [2, 2, 1]
    assert split_shards([Planned("big", (100,), torch.float32)], 100) == [[Planned("big", (100,), torch.float32)]]
    names = shard_names(len(shards))
    assert names[0] == "model-00001-of-00003.safetensors" and shard_names(1) == ["model.safetensors"]
    write_index(tmp_path, shards, names)
    index = (tmp_path / "model.safetensors.index.json").read_text()
    assert '"total_size": 200' in index and '"t4": "model-00003-of-00003.safetensors"' in index


def test_a_file_that_is_not_safetensors_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match="not a safetensors file"):
        read_header(path)
