"""`llmft estimate` from the command line: tables, JSON, exit status, and its error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llm_finetuning.cli.main import app
from tests.unit.test_estimate_70b import LLAMA3_70B

pytestmark = pytest.mark.e2e

WIDE = {"COLUMNS": "250"}


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3_70B))
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(100)))
    qlora = {
        "model": {"name": "meta-llama/Meta-Llama-3-70B", "dtype": "bfloat16", "quantization": "nf4"},
        "adapter": {"method": "lora", "r": 16},
        "data": {"train": {"path": "train.jsonl", "format": "text"}, "max_length": 2048},
        "method": "pretrain",
        "training": {"per_device_batch_size": 1, "gradient_checkpointing": True},
    }
    (tmp_path / "qlora.yaml").write_text(yaml.safe_dump(qlora))
    full = {**qlora, "model": {"name": "meta-llama/Meta-Llama-3-70B", "dtype": "bfloat16"}, "adapter": "full"}
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(full))
    return {
        "dir": tmp_path,
        "config.json": tmp_path / "config.json",
        "qlora": tmp_path / "qlora.yaml",
        "full": tmp_path / "full.yaml",
    }


def run(*args: str):
    return CliRunner().invoke(app, ["estimate", *args], env=WIDE)


def test_a_config_that_fits_exits_0_with_the_breakdown(files):
    result = run(str(files["qlora"]), "--model-config", str(files["config.json"]), "--gpu", "H100")
    assert result.exit_code == 0, result.output
    for text in ("memory per device", "weights", "optimizer states", "peak allocated", "H100-80GB (79.6 GiB): fits"):
        assert text in result.stdout
    assert "100 steps per epoch" in result.stdout  # 100 examples counted in train.jsonl, batch 1


def test_a_config_that_does_not_fit_exits_1_with_suggestions(files):
    result = run(str(files["full"]), "--model-config", str(files["config.json"]), "--gpu", "A100-80GB")
    assert result.exit_code == 1
    assert "does not fit" in result.stdout and "to make it fit" in result.stdout
    assert "adapter.method=lora" in result.stdout and "--sharding zero3" in result.stdout


def test_json_output_and_overrides(files):
    result = run(
        str(files["qlora"]),
        "training.per_device_batch_size=2",
        "--model-config",
        str(files["config.json"]),
        "--gpu",
        "L4",
        "--json",
    )
    assert result.exit_code == 1  # 70B does not fit a 24 GB L4
    data = json.loads(result.stdout)
    assert data["settings"]["sequences_per_micro_batch"] == 2
    assert data["fits"] is False and data["gpu"]["name"] == "L4"
    assert data["memory"]["total"] > data["memory"]["peak_allocated"] > data["memory"]["components"]["weights"]
    assert data["suggestions"] and "H100-80GB" in data["fitting_gpus"]


def test_without_a_gpu_every_gpu_of_the_table_is_shown_and_it_exits_0(files):
    result = run(str(files["qlora"]), "--model-config", str(files["config.json"]))
    assert result.exit_code == 0
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "no" in rows["RTX-4090"] and "yes" in rows["H200"]


def test_own_gpu_table(files):
    table = files["dir"] / "gpus.yaml"
    row = {"name": "Big-1", "memory_gib": 1000, "tflops": 500, "bandwidth_tbs": 5, "usd_per_hour": 9}
    table.write_text(yaml.safe_dump({"gpus": [row]}))
    args = [str(files["full"]), "--model-config", str(files["config.json"]), "--gpu-table", str(table)]
    result = run(*args, "--gpu", "big-1")
    assert result.exit_code == 0 and "Big-1 (1000 GiB): fits" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "H10"], "unknown GPU `H10`. Did you mean H100-80GB or H100-PCIe?"),
        (["--gpus", "0"], "--gpus: must be at least 1"),
        (["--sharding", "zero9"], "--sharding: `zero9` is not one of"),
        (["--utilization", "0"], "--utilization: must be in (0, 1]"),
    ],
)
def test_bad_options_exit_2_with_a_message(files, args, message):
    result = run(str(files["qlora"]), "--model-config", str(files["config.json"]), *args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_missing_config_json_says_to_pass_model_config(files, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(files["dir"] / "no-cache"))
    result = run(str(files["qlora"]))
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "`meta-llama/Meta-Llama-3-70B` is neither a local directory nor in the local Hugging Face cache" in output
    assert "--model-config path/to/config.json" in output
