"""`data.streaming: true` for `method: pretrain`: blocks made from shards while training are the in-memory
blocks, read lazily; a run trains on them, resumes to the uninterrupted weights; misuse is refused."""

from __future__ import annotations

import gzip
import json
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from llm_finetuning.config import Config
from llm_finetuning.config.schema import DataSource
from llm_finetuning.data import reading, streaming
from llm_finetuning.data.pipeline import SplitStats
from llm_finetuning.data.text import to_blocks
from llm_finetuning.errors import ConfigError, DataError
from llm_finetuning.models.tiny import build_tokenizer
from llm_finetuning.train import train
from tests.conftest import shared, tiny_config

pytestmark = pytest.mark.e2e


def gsm8k_documents(count: int) -> list[str]:
    rows = [json.loads(line) for line in shared("gsm8k/train.jsonl").read_text().splitlines()[:count]]
    return [row["question"] + "\n" + row["answer"] for row in rows]


def write_shards(folder, texts) -> None:
    """Three shards of three types, plus a file that is not data (ignored)."""
    folder.mkdir(parents=True)
    third = len(texts) // 3
    parts = [texts[:third], texts[third : 2 * third], texts[2 * third :]]
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in parts[0]))
    with gzip.open(folder / "b.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps({"text": t}) + "\n" for t in parts[1])
    pq.write_table(pa.Table.from_pylist([{"text": t} for t in parts[2]]), folder / "c.parquet")
    (folder / "README.md").write_text("not data")


def streamed_config(folder, output_dir, **training):
    return Config.model_validate(
        tiny_config(
            folder, output_dir,
            method={"name": "pretrain"}, adapter={"method": "full"},
            data={"train": {"path": str(folder), "format": "text"}, "max_length": 64, "streaming": True},
            training={"max_steps": 6, "save_steps": 3, **training},
        )
    )  # fmt: skip


def test_streamed_blocks_are_the_in_memory_blocks_in_order(tmp_path):
    texts = gsm8k_documents(60)
    write_shards(tmp_path / "shards", texts)
    tokenizer = build_tokenizer()
    source = DataSource(path=str(tmp_path / "shards"), format="text")
    streamed = list(streaming.block_stream([source], tokenizer, 64, add_eos=True))
    expected = to_blocks([("x", t) for t in texts], tokenizer, 64, True, SplitStats())
    assert [b["input_ids"] for b in streamed] == expected["input_ids"]
    assert all(b["labels"] == b["input_ids"] for b in streamed)
    assert [p.name for p in streaming.shard_files(source)] == ["a.jsonl", "b.jsonl.gz", "c.parquet"]


def test_the_stream_reads_one_document_at_a_time(tmp_path, monkeypatch):
    texts = gsm8k_documents(60)
    write_shards(tmp_path / "shards", texts)
    opened = []
    real = reading.iter_rows
    monkeypatch.setattr(streaming, "iter_rows", lambda path: (opened.append(path.name), real(path))[1])
    source = DataSource(path=str(tmp_path / "shards"), format="text")
    stream = streaming.block_stream([source], build_tokenizer(), 64, add_eos=True)
    next(stream)
    assert opened == ["a.jsonl"]  # the first block needs the first shard only, not the corpus
    rest = list(stream)
    assert opened == ["a.jsonl", "b.jsonl.gz", "c.parquet"] and rest


def test_a_bad_row_in_a_shard_names_its_line(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    source = DataSource(path=str(folder), format="text")
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a string `text` field"):
        list(streaming.block_stream([source], build_tokenizer(), 8, add_eos=True))
    with gzip.open(folder / "b.jsonl.gz", "wb") as handle:
        handle.write(b"".join(json.dumps({"text": "x" * 50}).encode() + b"\n" for _ in range(200)))
    data = (folder / "b.jsonl.gz").read_bytes()
    (folder / "a.jsonl").unlink()
    (folder / "b.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        list(streaming.block_stream([source], build_tokenizer(), 8, add_eos=True))


def test_a_streamed_run_trains_and_resumes_to_the_uninterrupted_weights(tmp_path):
    write_shards(tmp_path / "shards", gsm8k_documents(60))
    config = streamed_config(tmp_path / "shards", tmp_path / "run")
    run = tmp_path / "run"
    assert train(config).status == "completed"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["fingerprints"][config.data.train[0].label].startswith("shards:")
    at_three = load_file(run / "checkpoints" / "checkpoint-3" / "model.safetensors")
    expected = load_file(run / "final" / "model.safetensors")
    assert any(not torch.equal(at_three[name], expected[name]) for name in expected)  # steps 4-6 trained
    # What a kill during the save of checkpoint-6 leaves; the resume continues from checkpoint-3, and the
    # trainer skips the stream's first 3 batches by reading them, so steps 4-6 see the same blocks again.
    (run / "checkpoints" / "checkpoint-6" / "trainer_state.json").unlink()
    shutil.rmtree(run / "final")
    assert train(config, resume=True).status == "completed"
    again = load_file(run / "final" / "model.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(again[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": {"name": "sft"}}, "streams raw documents for `method.name: pretrain`"),
        ({"training": {"max_steps": None}}, "needs `training.max_steps`"),
        ({"data": {"clean": {}}}, "`data.streaming` and `data.clean` cannot both be set"),
        ({"data": {"eval_split": 0.1}}, "`data.streaming` and `data.eval_split` cannot both be set"),
    ],
)
def test_streaming_misuse_is_refused_with_the_reason(tmp_path, change, message):
    config = tiny_config(
        tmp_path, tmp_path / "run",
        method={"name": "pretrain"},
        data={"train": {"path": str(tmp_path), "format": "text"}, "streaming": True},
    )  # fmt: skip
    for key, value in change.items():
        config[key] = {**config[key], **value}
    with pytest.raises(ValueError, match=re.escape(message)):
        Config.model_validate(config)


def test_check_samples_a_folder_of_shards(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from llm_finetuning.cli.main import app

    write_shards(tmp_path / "shards", gsm8k_documents(30))
    config = streamed_config(tmp_path / "shards", tmp_path / "run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    result = CliRunner().invoke(app, ["check", str(tmp_path / "c.yaml")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "30 rows sampled, 0 malformed" in result.output and "0 errors" in result.output
    assert "longer than the limit" not in result.output  # documents are cut into blocks, not truncated


def test_a_two_worker_tokenize_pipeline_gives_the_blocks_of_the_raw_shards(tmp_path):
    pytest.importorskip("datatrove")
    import yaml
    from typer.testing import CliRunner

    from llm_finetuning.cli.main import app
    from llm_finetuning.data.clean.config import ShardedRunConfig
    from llm_finetuning.data.tokenize_shards import MARKER, tokenize_shards

    texts = gsm8k_documents(60)
    write_shards(tmp_path / "shards", texts)
    config = streamed_config(tmp_path / "shards", tmp_path / "run")
    marker = tokenize_shards(config, tmp_path / "tokens", ShardedRunConfig(tasks=3, workers=2))
    assert marker["shards"] == ["a.parquet", "b.parquet", "c.parquet"] and (tmp_path / "tokens" / MARKER).is_file()
    tokenizer = build_tokenizer()
    raw = DataSource(path=str(tmp_path / "shards"), format="text")
    tokens = DataSource(path=str(tmp_path / "tokens"), format="text")
    from_tokens = list(streaming.block_stream([tokens], tokenizer, 64, add_eos=True))
    assert from_tokens == list(streaming.block_stream([raw], tokenizer, 64, add_eos=True))
    assert len(from_tokens) == sum(len(t.encode()) + 1 for t in texts) // 64  # byte-level: one token per byte

    with pytest.raises(ConfigError, match="not this run's tokenizer and method.add_eos"):
        list(streaming.block_stream([tokens], tokenizer, 64, add_eos=False))
    trained = streamed_config(tmp_path / "tokens", tmp_path / "on-tokens")
    assert train(trained).status == "completed"

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
    cli = ["data", "tokenize", str(tmp_path / "c.yaml"), str(tmp_path / "tokens2"), "--workers", "2"]
    result = CliRunner().invoke(app, cli)
    assert result.exit_code == 0 and "tokenized 3 shards" in result.output, result.output
    again = CliRunner().invoke(app, cli)
    assert again.exit_code == 2 and "not empty" in again.output
