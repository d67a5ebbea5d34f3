"""A truncated `.jsonl.gz` training file: `llmft train` names the file and says it is truncated (not click's bare
"Aborted" for gzip's EOFError), exits non-zero, and the manifest records the reason. A corrupt one likewise."""

from __future__ import annotations

import gzip
import json

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from llm_finetuning.data.reading import read_rows
from llm_finetuning.errors import DataError
from tests.conftest import tiny_config

pytestmark = pytest.mark.e2e


def truncated(tmp_path, qa_rows):
    path = tmp_path / "train.jsonl.gz"
    whole = gzip.compress("".join(json.dumps(r) + "\n" for r in qa_rows).encode())
    path.write_bytes(whole[: len(whole) // 2])  # a copy cut off half way
    return path


def test_train_on_a_truncated_gz_names_the_file_and_records_the_reason(tmp_path, qa_rows):
    data = truncated(tmp_path, qa_rows)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(data, tmp_path / "run")))
    result = CliRunner().invoke(app, ["train", str(config)])
    assert result.exit_code != 0
    assert "Aborted" not in result.output
    assert str(data) in result.output and "truncated" in result.output, result.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "truncated" in manifest["error"] and str(data) in manifest["error"]


def test_a_corrupt_gz_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00" + b"not deflate data at all" * 4)
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz: the (compressed file is truncated|file is not valid gzip)"):
        list(read_rows(path))


def test_an_eoferror_from_elsewhere_is_not_reported_as_aborted(monkeypatch, tmp_path, qa_rows):
    def boom(*args, **kwargs):
        raise EOFError("stream closed")

    monkeypatch.setattr("llm_finetuning.data.inspect.inspect_source", boom)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_rows))
    result = CliRunner().invoke(app, ["data", "inspect", str(path)])
    assert result.exit_code == 1 and "Aborted" not in result.output
    assert "unexpected end of input (EOFError: stream closed)" in result.output
